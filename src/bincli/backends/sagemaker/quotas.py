"""Instance types and Service Quotas: what a billed step asks for at once, against what the account may use.

New accounts start at a quota of 0 for most GPU instances, and a tuning job asks for max_parallel x
instance_count instances at once: the commonest SageMaker failure (ResourceLimitExceeded) is found
here, before anything is created. A type with no quota in the region is not offered there.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any

from bincli.backends.checks import FAIL, NOT_CHECKED, OK, Check
from bincli.config import Config

SERVICE_CODE = "sagemaker"
# The instance-type enums of SageMaker's API model (botocore): a typo is caught without a call.
_TYPE_SHAPES = {"training": "TrainingInstanceType", "endpoint": "ProductionVariantInstanceType"}


@dataclass(frozen=True)
class Need:
    step: str
    instance_type: str
    usage: str    # "training job", "spot training job", "endpoint"
    count: int
    why: str      # which settings make the count

    @property
    def quota_name(self) -> str:
        return f"{self.instance_type} for {self.usage} usage"


def needs(cfg: Config, steps: list[str]) -> list[Need]:
    """The instances each billed step in `steps` asks for at once."""
    sm = cfg.sagemaker
    usage = "spot training job" if sm.spot else "training job"
    out = []
    if "tune" in steps:
        out.append(Need("tune", sm.train_instance_type, usage, cfg.tune.max_parallel * sm.train_instance_count,
                        "tune.max_parallel x sagemaker.train_instance_count"))
    if "train" in steps:
        out.append(Need("train", sm.train_instance_type, usage, sm.train_instance_count,
                        "sagemaker.train_instance_count"))
    if "deploy" in steps and cfg.deploy.serverless is None:
        scaling = cfg.deploy.autoscaling
        count = max(sm.deploy_instance_count, scaling.max_instances if scaling else 0)
        out.append(Need("deploy", sm.deploy_instance_type, "endpoint", count,
                        "deploy.autoscaling.max_instances" if scaling and scaling.max_instances >= count
                        else "sagemaker.deploy_instance_count"))
    return out


@functools.cache  # SageMaker's API model is megabytes of JSON: read it once
def instance_types(kind: str) -> tuple[str, ...]:
    import botocore.session

    return tuple(botocore.session.get_session().get_service_model("sagemaker").shape_for(_TYPE_SHAPES[kind]).enum)


def known_type(need: Need) -> Check | None:
    """A failed row when the type is not one SageMaker's API knows for this use (offline), else None."""
    kind = "endpoint" if need.usage == "endpoint" else "training"
    valid = instance_types(kind)
    if need.instance_type in valid:
        return None
    close = difflib.get_close_matches(need.instance_type, valid, n=1)
    key = "deploy_instance_type" if kind == "endpoint" else "train_instance_type"
    return Check(f"{need.step} instance type", FAIL, f"{need.instance_type} is not a SageMaker {kind} instance type",
                 f"--set sagemaker.{key}={close[0] if close else 'ml.m5.xlarge'}", exit_code=2)


def quota_rows(session: Any, need_list: list[Need]) -> list[Check]:
    """One row per need: the type is offered in the region and its quota covers the count."""
    rows = [bad for n in need_list if (bad := known_type(n))]
    wanted = [n for n in need_list if not any(r.name == f"{n.step} instance type" for r in rows)]
    if not wanted:
        return rows
    region = session.region_name
    try:
        quotas = _quotas(session, {n.quota_name for n in wanted})
    except Exception as exc:
        from bincli.backends.sagemaker.iam_checks import reason

        why = reason(exc)
        return rows + [Check(f"{n.step} quota", NOT_CHECKED, f"{n.quota_name}: Service Quotas did not answer ({why})",
                             "allow servicequotas:ListServiceQuotas (policies/caller-policy.json) to have it checked")
                       for n in wanted]
    for n in wanted:
        found = quotas.get(n.quota_name)
        if found is None:
            rows.append(Check(f"{n.step} quota", FAIL, f"{n.instance_type} is not offered for {n.usage}s in {region} "
                              f"(no '{n.quota_name}' quota there)",
                              f"choose an instance type offered in {region}, or another sagemaker.region"))
            continue
        value, code = found
        if value >= n.count:
            rows.append(Check(f"{n.step} quota", OK, f"{n.quota_name}: {value:g} >= {n.count} ({n.why})"))
        else:
            rows.append(Check(f"{n.step} quota", FAIL,
                              f"{n.quota_name} is {value:g} in {region}, {n.step} needs {n.count} ({n.why})",
                              f"aws service-quotas request-service-quota-increase --service-code {SERVICE_CODE} "
                              f"--quota-code {code} --desired-value {n.count} --region {region}, or lower {n.why}"))
    return rows


def _quotas(session: Any, names: set[str]) -> dict[str, tuple[float, str]]:
    """quota name -> (value, code): the account's applied values, else AWS's defaults for the rest."""
    from botocore.config import Config as BotoConfig

    client = session.client("service-quotas", config=BotoConfig(retries={"mode": "standard", "total_max_attempts": 2}))
    found: dict[str, tuple[float, str]] = {}
    for operation in ("list_service_quotas", "list_aws_default_service_quotas"):
        if names <= found.keys():
            break
        for page in client.get_paginator(operation).paginate(ServiceCode=SERVICE_CODE):
            for q in page.get("Quotas", []):
                if q.get("QuotaName") in names and q["QuotaName"] not in found:
                    found[q["QuotaName"]] = (float(q.get("Value", 0)), q.get("QuotaCode", "?"))
    return found
