"""`bincli teardown` on backend sagemaker: what deploy recorded, or (--all) whatever carries this
workspace's tag.

Order: autoscaling policy and scalable target (DeleteEndpoint leaves them behind), endpoint,
endpoint configs, models. A name that is already gone is not an error, so a second teardown
finds nothing to remove. The record's region is used, whatever the config or environment says now.
"""

from __future__ import annotations

from typing import Any

from bincli.backends.records import nothing_to_remove, recorded_endpoint
from bincli.backends.sagemaker import scaling
from bincli.backends.sagemaker.endpoint import clients
from bincli.backends.sagemaker.session import aws_error, is_not_found, resource_tags
from bincli.config import Config
from bincli.state import State

WORKSPACE_TAG = "bincli:workspace"


def teardown_sagemaker(cfg: Config, name: str | None = None) -> dict[str, Any]:
    """Delete what deploy recorded (scaling, endpoint, configs, models); nothing else."""
    state = State(cfg.workdir)
    record = recorded_endpoint(state, name, backend="sagemaker")
    if record is None:
        return nothing_to_remove(cfg.workdir, name)
    sm, aas = clients(cfg, record.get("region"))
    removed = []
    plan = record.get("autoscaling")
    if plan:  # registered or not: a deploy killed mid-way may have registered it without saying so
        removed += _guarded(lambda: scaling.deregister(aas, plan["resource_id"], [plan["policy"]]),
                            f"autoscaling of {plan['resource_id']}")
    removed += _delete_all(sm, [record["endpoint"]] if record.get("endpoint") else [],
                           record.get("endpoint_configs", []), record.get("models", []))
    state.forget("deploy")
    removed.append("state record 'deploy'")
    return {"name": record["name"], "removed": removed, "message": f"removed endpoint '{record['name']}'"}


def teardown_tagged(cfg: Config) -> dict[str, Any]:
    """teardown, then every endpoint, endpoint config and model in the region tagged with this
    workspace (leftovers of deploys whose record was lost), each endpoint's autoscaling first."""
    state = State(cfg.workdir)
    record = recorded_endpoint(state, backend="sagemaker")
    first = teardown_sagemaker(cfg) if record is not None else {"removed": []}
    sm, aas = clients(cfg, record.get("region") if record else None)
    workspace = dict((t["Key"], t["Value"]) for t in resource_tags(cfg.workdir, "deploy"))[WORKSPACE_TAG]
    done = {*(record or {}).get("models", []), *(record or {}).get("endpoint_configs", []),
            (record or {}).get("endpoint")}  # deleted just now (an endpoint is listed while Deleting)
    found = {kind: [n for n in _tagged(sm, kind, workspace) if n not in done] for kind in _LISTS}
    removed = list(first["removed"])
    for endpoint in found["endpoint"]:
        rid = scaling.resource_id(endpoint)
        removed += _guarded(lambda r=rid: scaling.deregister(aas, r), f"autoscaling of {rid}")
    removed += _delete_all(sm, found["endpoint"], found["endpoint config"], found["model"])
    region = sm.meta.region_name
    what = f"{len(removed)} resource(s)" if removed else "nothing"
    return {"name": record["name"] if record else None, "removed": removed, "region": region, "workspace": workspace,
            "message": f"removed {what} tagged {WORKSPACE_TAG}={workspace} in {region}"}


# kind -> (list call, list key, name key, ARN key)
_LISTS = {
    "endpoint": ("list_endpoints", "Endpoints", "EndpointName", "EndpointArn"),
    "endpoint config": ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", "EndpointConfigArn"),
    "model": ("list_models", "Models", "ModelName", "ModelArn"),
}


def _tagged(sm: Any, kind: str, workspace: str) -> list[str]:
    """Names of the `kind` resources whose bincli:workspace tag is `workspace` (ListTags on each:
    moto has no Resource Groups Tagging API for SageMaker, and this works the same on AWS)."""
    call, key, name_key, arn_key = _LISTS[kind]
    names = []
    try:
        for page in sm.get_paginator(call).paginate():
            for item in page[key]:
                tags = sm.list_tags(ResourceArn=item[arn_key]).get("Tags", [])
                if any(t["Key"] == WORKSPACE_TAG and t["Value"] == workspace for t in tags):
                    names.append(item[name_key])
    except Exception as exc:
        raise aws_error(exc, f"listing {kind}s") from None
    return names


def _delete_all(sm: Any, endpoints: list[str], configs: list[str], models: list[str]) -> list[str]:
    steps = [("endpoint", sm.delete_endpoint, "EndpointName", n) for n in endpoints]
    steps += [("endpoint config", sm.delete_endpoint_config, "EndpointConfigName", n) for n in configs]
    steps += [("model", sm.delete_model, "ModelName", n) for n in models]
    removed = []
    for kind, delete, key, n in steps:
        try:
            delete(**{key: n})
            removed.append(f"{kind} {n}")
        except Exception as exc:
            if not is_not_found(exc):
                raise aws_error(exc, f"deleting {kind} {n}") from None
    return removed


def _guarded(call: Any, what: str) -> list[str]:
    try:
        return call()
    except Exception as exc:
        raise aws_error(exc, f"removing {what}") from None
