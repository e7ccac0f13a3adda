"""`bincli deploy --update` on backend sagemaker: a new model and endpoint config, then UpdateEndpoint.

The old config and model are deleted only once the endpoint is InService on the new one; a failed
update leaves the endpoint serving the old model, deletes the new ones and says so. Autoscaling
stays on through the update, except when the instance type changes (AWS refuses to change the
instance type of a variant that is a scalable target): then it is taken off first and put back
however the update ends.

The record's `update` entry, written before anything is changed, holds what the update started
from; `deploy` run again after Ctrl-C or the wait's timeout finishes the update from it.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from bincli.backends.sagemaker import scaling
from bincli.backends.sagemaker.endpoint import (
    capacity,
    clients,
    describe,
    inference_image,
    instance_count,
    model_and_config,
    model_in_s3,
    model_sha256,
    register_scaling,
    settle,
)
from bincli.backends.sagemaker.session import aws_error, is_not_found, role_arn
from bincli.config import Config
from bincli.console import err
from bincli.errors import BincliError, StateError
from bincli.state import State

# What an update replaces in the record, and puts back when it fails.
_REPLACED = ("models", "endpoint_configs", "model_s3", "model_sha256", "image", "serverless", "instance_type",
             "instance_count", "model_server_workers")


def update(cfg: Config, state: State, record: dict[str, Any], model: Path | None) -> dict[str, Any]:
    sm_cfg, d = cfg.sagemaker, cfg.deploy
    name, region = record["endpoint"], record["region"]
    sm, aas = clients(cfg, region)
    role = role_arn(sm_cfg)
    image = inference_image(cfg, region)
    model_s3 = model_in_s3(cfg, state, model, region)
    sha256 = model_sha256(cfg, state, model)
    desc = describe(sm, name)
    if desc["EndpointStatus"] != "InService":
        raise BincliError(f"endpoint '{name}' is {desc['EndpointStatus']}; an update needs it InService",
                          hint="'bincli status' shows it; try again once it is InService")
    running = (desc.get("ProductionVariants") or [{}])[0].get("CurrentInstanceCount")
    # Scaling survives: the config's settings, else the record's (not on a serverless endpoint).
    new_plan = (scaling.plan(name, d.autoscaling) if d.autoscaling
                else None if d.serverless else record.get("autoscaling"))
    old_plan = record.get("autoscaling")
    new_type = None if d.serverless else sm_cfg.deploy_instance_type
    scaling_off = bool(old_plan and old_plan.get("registered") and new_type != record.get("instance_type"))
    record["update"] = {"from_config": desc["EndpointConfigName"],
                        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "previous": copy.deepcopy({k: record.get(k) for k in _REPLACED}),
                        "plan": new_plan and {**new_plan, "registered": False}, "scaling_off": scaling_off}
    record["model_sha256"] = sha256
    try:
        new_model, new_config = model_and_config(cfg, sm, state, record, role, image, model_s3,
                                                 instance_count(cfg, running))
    except Exception as exc:
        _roll_back(cfg, state, record, sm, aas, _message(exc, "creating the new model and endpoint config"))
    record["update"].update(model=new_model, config=new_config)
    _save(cfg, state, record)
    if scaling_off:
        try:
            scaling.deregister(aas, old_plan["resource_id"], [old_plan["policy"]])
        except Exception as exc:
            _roll_back(cfg, state, record, sm, aas, _message(exc, "taking autoscaling off for the new instance type"))
        old_plan["registered"] = False
        _save(cfg, state, record)
    err.print(f"updating endpoint '{name}' to {model_s3} ({capacity(record)}); this takes a few minutes",
              markup=False, soft_wrap=True)
    try:
        sm.update_endpoint(EndpointName=name, EndpointConfigName=new_config)
    except Exception as exc:
        _roll_back(cfg, state, record, sm, aas, _message(exc, "UpdateEndpoint"))
    return _conclude(cfg, state, record, sm, aas)


def finish_update(cfg: Config, state: State, record: dict[str, Any]) -> dict[str, Any]:
    """An update that stopped waiting (or stopped before UpdateEndpoint): wait for the endpoint, then
    finish it as `update` would have, or roll it back."""
    sm, aas = clients(cfg, record["region"])
    pending = record["update"]
    if "previous" not in pending:
        raise StateError(f"endpoint '{record['name']}': an update interrupted by an older bincli cannot be finished",
                         hint="'bincli teardown' removes the endpoint and every model and config recorded, then "
                              "'bincli deploy'")
    err.print(f"endpoint '{record['endpoint']}': finishing the update an earlier deploy started", markup=False,
              soft_wrap=True)
    if "config" not in pending:
        _roll_back(cfg, state, record, sm, aas, "it stopped before UpdateEndpoint")
    return _conclude(cfg, state, record, sm, aas)


def _conclude(cfg: Config, state: State, record: dict[str, Any], sm: Any, aas: Any) -> dict[str, Any]:
    """Wait for the endpoint; on the new config: delete the old model and config and register scaling."""
    name, pending = record["endpoint"], record["update"]
    desc = settle(cfg, sm, name, "updated")
    if desc["EndpointStatus"] != "InService":
        raise BincliError(f"endpoint '{name}' {desc['EndpointStatus']} while updating: "
                          f"{desc.get('FailureReason', 'no reason given')}",
                          hint="see its CloudWatch logs; 'bincli teardown' removes it and both models")
    if desc["EndpointConfigName"] != pending["config"]:
        _roll_back(cfg, state, record, sm, aas,
                   desc.get("FailureReason") or "the endpoint went back to its previous config")
    previous = pending["previous"]
    _delete(sm, previous["endpoint_configs"], previous["models"])
    record["models"], record["endpoint_configs"] = [pending["model"]], [pending["config"]]
    record["autoscaling"] = pending["plan"]
    record["updated_at"] = record.pop("update")["started_at"]
    record["status"] = "InService"
    _save(cfg, state, record)
    register_scaling(aas, state, record, cfg)
    return {**record, "action": "updated", "replaced": previous["model_s3"]}


def _roll_back(cfg: Config, state: State, record: dict[str, Any], sm: Any, aas: Any, failure: str) -> NoReturn:
    """The endpoint serves the previous model: delete the new model and config, put the record and
    (if it was taken off) autoscaling back, and raise the one error that says so."""
    pending = record.pop("update")
    previous = pending["previous"]
    problems = []
    kept: dict[str, list[str]] = {"endpoint_configs": [], "models": []}
    for key in ("endpoint_configs", "models"):  # configs first: a model in a config cannot go before it
        for n in [n for n in record[key] if n not in previous[key]]:
            try:
                _delete(sm, *(([n], []) if key == "endpoint_configs" else ([], [n])))
            except BincliError as exc:
                kept[key].append(n)  # stays recorded: teardown deletes it
                problems.append(f"{exc.message} ('bincli teardown' deletes it)")
    deleted = "" if problems else "; the new model and endpoint config were deleted"
    record.update(previous)
    for key, names in kept.items():
        record[key] = [*record[key], *names]
    _save(cfg, state, record)
    if pending.get("scaling_off") and record.get("autoscaling"):
        try:
            register_scaling(aas, state, record, cfg)
        except BincliError as exc:
            problems.append(f"autoscaling is still off: {exc.message}; 'bincli deploy' again puts it back")
    more = "".join(f". {p}" for p in problems)
    raise BincliError(f"update of endpoint '{record['name']}' failed: {failure}. It still serves the previous model "
                      f"{previous['model_s3']}{deleted}{more}")


def _save(cfg: Config, state: State, record: dict[str, Any]) -> None:
    state.record("deploy", record, cfg.deploy.model_dump(mode="json"))


def _message(exc: BaseException, doing: str) -> str:
    return exc.message if isinstance(exc, BincliError) else aws_error(exc, doing).message


def _delete(sm: Any, configs: list[str], models: list[str]) -> None:
    """Delete endpoint configs, then models; a name already gone is skipped."""
    for call, key, names in ((sm.delete_endpoint_config, "EndpointConfigName", configs),
                             (sm.delete_model, "ModelName", models)):
        for n in names:
            try:
                call(**{key: n})
            except Exception as exc:
                if not is_not_found(exc):
                    raise aws_error(exc, f"deleting {n}") from None
