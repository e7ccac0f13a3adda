"""Application Auto Scaling for a SageMaker endpoint: the variant as a scalable target and one
target-tracking policy on invocations per instance.

The plan (resource id, dimension, policy name, limits) goes into the deploy record before
anything waits; `register` applies it once the endpoint is InService, `deregister` removes the
policy and then the target. DeleteEndpoint leaves both behind, so teardown calls `deregister`
first. Missing ones are not an error: a second teardown is a no-op.
"""

from __future__ import annotations

from typing import Any

from bincli.config import AutoscalingConfig

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
VARIANT = "AllTraffic"


def resource_id(endpoint: str, variant: str = VARIANT) -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def plan(endpoint: str, cfg: AutoscalingConfig) -> dict[str, Any]:
    """What the deploy record keeps: enough to register again after an update, or to deregister."""
    return {"resource_id": resource_id(endpoint), "dimension": DIMENSION, "policy": f"{endpoint}-invocations",
            "min_instances": cfg.min_instances, "max_instances": cfg.max_instances,
            "target_invocations_per_instance": cfg.target_invocations_per_instance,
            "scale_in_cooldown_s": cfg.scale_in_cooldown_s, "scale_out_cooldown_s": cfg.scale_out_cooldown_s,
            "registered": False}


def register(aas: Any, p: dict[str, Any]) -> None:
    """Scalable target + target-tracking policy (both calls replace what is there: safe to repeat)."""
    aas.register_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=p["resource_id"],
                                 ScalableDimension=p["dimension"], MinCapacity=p["min_instances"],
                                 MaxCapacity=p["max_instances"])
    aas.put_scaling_policy(
        PolicyName=p["policy"], ServiceNamespace=NAMESPACE, ResourceId=p["resource_id"],
        ScalableDimension=p["dimension"], PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(p["target_invocations_per_instance"]),
            "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
            "ScaleInCooldown": p["scale_in_cooldown_s"], "ScaleOutCooldown": p["scale_out_cooldown_s"]})


def deregister(aas: Any, rid: str, policies: list[str] | None = None) -> list[str]:
    """Delete the policies on `rid` (the named ones, else every one found), then the scalable target.
    Returns what was removed; what is already gone is skipped."""
    if policies is None:
        found = aas.describe_scaling_policies(ServiceNamespace=NAMESPACE, ResourceId=rid,
                                              ScalableDimension=DIMENSION)["ScalingPolicies"]
        policies = [p["PolicyName"] for p in found if p["ResourceId"] == rid]
    removed = []
    for name in policies:
        if _gone_or_done(lambda n=name: aas.delete_scaling_policy(
                PolicyName=n, ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION)):
            removed.append(f"scaling policy {name}")
    if _gone_or_done(lambda: aas.deregister_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=rid,
                                                            ScalableDimension=DIMENSION)):
        removed.append(f"scalable target {rid}")
    return removed


def _gone_or_done(call: Any) -> bool:
    """True if the call succeeded, False if there was nothing to delete; any other error is raised."""
    from botocore.exceptions import ClientError

    try:
        call()
        return True
    except ClientError as exc:
        error = exc.response.get("Error", {})
        # AWS: ObjectNotFoundException; moto: a ValidationException "No scalable target/policy found".
        if error.get("Code") == "ObjectNotFoundException" or error.get("Message", "").startswith("No scal"):
            return False
        raise
