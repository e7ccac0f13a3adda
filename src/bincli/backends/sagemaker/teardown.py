"""`bincli teardown` on backend sagemaker: what deploy recorded, or (--all) whatever carries this
workspace's tag.

Order: autoscaling policy and scalable target (DeleteEndpoint leaves them behind), endpoint,
endpoint configs, models. A name that is already gone is not an error, so a second teardown
finds nothing to remove. The record's region is used, whatever the config or environment says now.

Deleting what bills comes first: autoscaling that cannot be removed (no Application Auto Scaling
rights) is left with a warning and the endpoint is still deleted; a resource whose tags cannot be
read is skipped and reported. A SageMaker resource that cannot be deleted fails the command, after
everything else was tried, and the record stays so that teardown can be run again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bincli.backends.records import nothing_to_remove, recorded_endpoint
from bincli.backends.sagemaker import scaling
from bincli.backends.sagemaker.endpoint import clients, tagging_client
from bincli.backends.sagemaker.session import (
    WORKSPACE_TAG,
    aws_error,
    is_not_found,
    legacy_workspace_tag,
    workspace_tag,
)
from bincli.backends.sagemaker.transform import stop_transform
from bincli.config import Config
from bincli.console import err
from bincli.errors import BincliError
from bincli.state import State

log = logging.getLogger("bincli.teardown")


def teardown_sagemaker(cfg: Config, name: str | None = None) -> dict[str, Any]:
    """Delete what deploy recorded (scaling, endpoint, configs, models) and can be shown to be ours
    still (a name may have been taken by someone else since ours went); nothing else."""
    state = State(cfg.workdir)
    record = recorded_endpoint(state, name, backend="sagemaker")
    if record is None:
        return nothing_to_remove(cfg.workdir, name)
    sm, aas = clients(cfg, record.get("region"))
    values = _workspace_values(cfg, record)
    removed: list[str] = []
    left: list[str] = []
    configs = record.get("endpoint_configs", [])
    endpoint = record.get("endpoint")
    ours = _endpoint_ours(sm, endpoint, configs, values, left) if endpoint else None
    plan = record.get("autoscaling")
    if plan and ours is not False:  # another's endpoint of that name has its own scalable target
        removed += _deregister(aas, plan["resource_id"], [plan["policy"]], left)
    configs = [n for n in configs if _ours(sm, "endpoint config", n, values, left)]
    models = [n for n in record.get("models", []) if _ours(sm, "model", n, values, left)]
    removed += _delete_all(sm, [endpoint] if ours else [], configs, models, _wait(cfg))
    state.forget("deploy")
    removed.append("state record 'deploy'")
    return _result(record["name"], removed, left, f"removed endpoint '{record['name']}'" if ours else
                   f"removed what deploy '{record['name']}' recorded")


def _wait(cfg: Config) -> tuple[float, float]:
    """(poll, timeout) seconds for confirming an endpoint's deletion."""
    return cfg.sagemaker.poll_seconds, cfg.sagemaker.delete_timeout_minutes * 60


def _endpoint_ours(sm: Any, name: str, configs: list[str], values: list[str], left: list[str]) -> bool | None:
    """Whether the endpoint named `name` now is the one deploy made: its config is one the record
    names and its tags (where readable) carry this workspace. None when there is none of that name."""
    try:
        desc = sm.describe_endpoint(EndpointName=name)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise aws_error(exc, f"SageMaker DescribeEndpoint of '{name}'") from None
    why = []
    if desc["EndpointConfigName"] not in configs:
        why.append(f"its endpoint config {desc['EndpointConfigName']} is not one this workspace's deploy made")
    tags = _tags(sm, desc["EndpointArn"])
    if tags is not None and not _tagged(tags, values):
        why.append(f"it does not carry {WORKSPACE_TAG}={values[0]}")
    if why:
        left.append(_leave(f"endpoint {name}", "not ours: " + " and ".join(why)))
    return not why


_DESCRIBE = {"endpoint config": ("describe_endpoint_config", "EndpointConfigName", "EndpointConfigArn"),
             "model": ("describe_model", "ModelName", "ModelArn")}


def _ours(sm: Any, kind: str, name: str, values: list[str], left: list[str]) -> bool:
    """A recorded model or endpoint config is deleted only while its tags (where readable) carry this
    workspace: one that is gone is skipped, one of that name made since by someone else is left."""
    call, key, arn_key = _DESCRIBE[kind]
    try:
        arn = getattr(sm, call)(**{key: name})[arn_key]
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise aws_error(exc, f"SageMaker {call} of '{name}'") from None
    tags = _tags(sm, arn)
    if tags is None or _tagged(tags, values):  # unreadable tags: its recorded name is the evidence
        return True
    left.append(_leave(f"{kind} {name}", f"not ours: it does not carry {WORKSPACE_TAG}={values[0]}"))
    return False


def _tags(sm: Any, arn: str) -> list[dict[str, str]] | None:
    try:
        return sm.list_tags(ResourceArn=arn).get("Tags", [])
    except Exception as exc:
        log.debug("tags of %s not readable (%s)", arn, exc)
        return None


def _tagged(tags: list[dict[str, str]], values: list[str]) -> bool:
    return any(t.get("Key") == WORKSPACE_TAG and t.get("Value") in values for t in tags)


def teardown_tagged(cfg: Config) -> dict[str, Any]:
    """teardown, then every endpoint, endpoint config and model in the region tagged with this
    workspace (leftovers of deploys whose record was lost), each endpoint's autoscaling first; and
    the recorded batch transform job, stopped if it still runs."""
    state = State(cfg.workdir)
    record = recorded_endpoint(state, backend="sagemaker")
    first = teardown_sagemaker(cfg) if record is not None else {"removed": [], "left": []}
    region = record.get("region") if record else None
    sm, aas = clients(cfg, region)
    values = _workspace_values(cfg, record)
    done = {*(record or {}).get("models", []), *(record or {}).get("endpoint_configs", []),
            (record or {}).get("endpoint")}  # deleted just now (an endpoint is listed while Deleting)
    left = list(first["left"])
    found, how = find_tagged(sm, tagging_client(cfg, region), values, left)
    found = {kind: [n for n in names if n not in done] for kind, names in found.items()}
    removed = list(first["removed"])
    for endpoint in found["endpoint"]:
        removed += _deregister(aas, scaling.resource_id(endpoint), None, left)
    removed += _delete_all(sm, found["endpoint"], found["endpoint config"], found["model"], _wait(cfg))
    removed += stop_transform(cfg)  # a batch job (predict s3://) still running bills too
    region = sm.meta.region_name
    what = f"{len(removed)} resource(s)" if removed else "nothing"
    tags = " or ".join(f"{WORKSPACE_TAG}={v}" for v in values)
    result = _result(record["name"] if record else None, removed, left, f"removed {what} tagged {tags} in {region}")
    return {**result, "region": region, "workspace": values[0], "found_by": how}


def _workspace_values(cfg: Config, record: dict[str, Any] | None) -> list[str]:
    """This workspace's tag value, and the one its deploy record's resources carry when that differs
    (a record made before workspace ids carries none: its resources have the path-based value)."""
    values = [workspace_tag(cfg.workdir)]
    if record is not None:
        old = record.get("workspace") or legacy_workspace_tag(cfg.workdir)
        values += [old] if old not in values else []
    return values


# kind -> (list call, list key, name key, ARN key, Resource Groups Tagging API resource type)
_LISTS = {
    "endpoint": ("list_endpoints", "Endpoints", "EndpointName", "EndpointArn", "sagemaker:endpoint"),
    "endpoint config": ("list_endpoint_configs", "EndpointConfigs", "EndpointConfigName", "EndpointConfigArn",
                        "sagemaker:endpoint-config"),
    "model": ("list_models", "Models", "ModelName", "ModelArn", "sagemaker:model"),
}


def find_tagged(sm: Any, tagging: Any, values: list[str], left: list[str]) -> tuple[dict[str, list[str]], str]:
    """Names of the endpoints, endpoint configs and models whose bincli:workspace tag is one of
    `values`, and how they were found. The Resource Groups Tagging API matches the tag server-side;
    where it does not answer (no rights, no such endpoint), ListTags is asked per resource. The list
    calls give the exact names (an ARN has the name in lower case). What cannot be listed or read is
    added to `left` and skipped."""
    arns = _tagged_arns(tagging, values)
    found: dict[str, list[str]] = {}
    for kind, (call, key, name_key, arn_key, _) in _LISTS.items():
        found[kind] = []
        try:
            items = [item for page in sm.get_paginator(call).paginate() for item in page[key]]
        except Exception as exc:
            left.append(_warn(f"every {kind} (not checked)", exc, f"SageMaker {call}"))
            continue
        for item in items:
            if arns is not None:
                ours = item[arn_key].lower() in arns
            else:
                ours = _carries(sm, item[arn_key], values, left, f"{kind} {item[name_key]}")
            if ours:
                found[kind].append(item[name_key])
    return found, "ListTags" if arns is None else "Resource Groups Tagging API"


def _tagged_arns(tagging: Any, values: list[str]) -> set[str] | None:
    """Lower-cased ARNs the Tagging API finds with the tag, or None when it does not answer."""
    try:
        pages = tagging.get_paginator("get_resources").paginate(
            TagFilters=[{"Key": WORKSPACE_TAG, "Values": values}],
            ResourceTypeFilters=[spec[4] for spec in _LISTS.values()])
        return {m["ResourceARN"].lower() for page in pages for m in page.get("ResourceTagMappingList", [])}
    except Exception as exc:
        log.debug("Resource Groups Tagging API unavailable (%s); asking ListTags per resource", exc)
        return None


def _carries(sm: Any, arn: str, values: list[str], left: list[str], what: str) -> bool:
    try:
        tags = sm.list_tags(ResourceArn=arn).get("Tags", [])
    except Exception as exc:
        if not is_not_found(exc):  # deleted since it was listed: not ours to report
            left.append(_warn(f"{what} (tags not readable, not checked)", exc, "SageMaker ListTags"))
        return False
    return _tagged(tags, values)


def _delete_all(sm: Any, endpoints: list[str], configs: list[str], models: list[str],
                wait: tuple[float, float]) -> list[str]:
    """Delete each (endpoints first: they bill), then confirm each endpoint is gone (DeleteEndpoint
    only starts it); go on past a failure, then raise one error naming what is left."""
    steps = [("endpoint", sm.delete_endpoint, "EndpointName", n) for n in endpoints]
    steps += [("endpoint config", sm.delete_endpoint_config, "EndpointConfigName", n) for n in configs]
    steps += [("model", sm.delete_model, "ModelName", n) for n in models]
    removed, failed = [], []
    deleting = []
    for kind, delete, key, n in steps:
        try:
            delete(**{key: n})
            (deleting if kind == "endpoint" else removed).append(f"{kind} {n}")
        except Exception as exc:
            if not is_not_found(exc):
                failed.append(aws_error(exc, f"deleting {kind} {n}").message)
    for entry in deleting:
        still = _still_there(sm, entry.removeprefix("endpoint "), *wait)
        if still:
            failed.append(f"endpoint {entry.removeprefix('endpoint ')} is still {still} "
                          f"{wait[1]:.0f} s after DeleteEndpoint: its deletion is not confirmed, and it may bill")
        else:
            removed.insert(0, entry)
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        done = f"; removed {', '.join(removed)}" if removed else ""
        raise BincliError(f"{failed[0]}{more}{done}",
                          hint="fix the cause, then run 'bincli teardown' again: it removes only what is left")
    return removed


def _still_there(sm: Any, name: str, poll: float, timeout: float) -> str | None:
    """Describe the endpoint until it is gone (None) or `timeout` passes (its last status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
        except Exception as exc:
            if is_not_found(exc):
                return None
            status = f"unconfirmed ({aws_error(exc, 'SageMaker DescribeEndpoint').message})"
        if time.monotonic() >= deadline:
            return status
        time.sleep(min(poll, max(deadline - time.monotonic(), 0)))  # polling a remote API


def _deregister(aas: Any, rid: str, policies: list[str] | None, left: list[str]) -> list[str]:
    """scaling.deregister, or a warning in `left` when Application Auto Scaling refuses: autoscaling
    of a deleted endpoint bills nothing, the endpoint does, so its deletion goes on."""
    try:
        return scaling.deregister(aas, rid, policies)
    except Exception as exc:
        left.append(_warn(f"autoscaling of {rid}", exc, "Application Auto Scaling",
                          hint=f"aws application-autoscaling deregister-scalable-target --service-namespace "
                               f"{scaling.NAMESPACE} --resource-id {rid} --scalable-dimension {scaling.DIMENSION}"))
        return []


def _warn(what: str, exc: BaseException, service: str, hint: str | None = None) -> str:
    """One warning line on stderr; returns the 'left' entry: what, and why."""
    entry = f"{what}, because {aws_error(exc, service).message}"
    err.print(f"warning: left {entry}" + (f" (remove it with: {hint})" if hint else ""), markup=False,
              soft_wrap=True)
    return entry


def _leave(what: str, why: str) -> str:
    """One warning line on stderr for a resource left alone; returns the 'left' entry."""
    entry = f"{what}, because {why}"
    err.print(f"warning: left {entry}", markup=False, soft_wrap=True)
    return entry


def _result(name: str | None, removed: list[str], left: list[str], message: str) -> dict[str, Any]:
    if left:
        message += f"; left {len(left)}: " + "; ".join(left)
    return {"name": name, "removed": removed, "left": left, "message": message}
