"""Stand-ins for the AWS APIs the preflight asks and moto lacks (IAM's policy simulator, SageMaker's
Service Quotas), and a record of every call bincli and the SDK send.

One patch of botocore's BaseClient._make_api_call reaches every client, whatever session made it
(bincli makes a session per client, the SDK its own): each call is recorded as (service,
operation) after botocore's own parameter validation; the stand-in operations are answered here,
everything else goes on to the moto server as before.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from typing import Any

ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}


def quota_code(name: str) -> str:
    return "L-" + hashlib.sha256(name.encode()).hexdigest()[:8].upper()


@dataclass
class StandIns:
    """policies: principal ARN -> the policy document the simulator evaluates (others: `default`).
    quotas: quota name -> value. simulate=False: the simulator answers AccessDenied."""

    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    default: dict[str, Any] = field(default_factory=lambda: ALLOW_ALL)
    quotas: dict[str, float] = field(default_factory=dict)
    simulate: bool = True
    calls: list[tuple[str, str]] = field(default_factory=list)
    simulated: list[dict[str, Any]] = field(default_factory=list)

    def answer(self, service: str, operation: str, params: dict[str, Any]) -> dict[str, Any] | None:
        if (service, operation) == ("iam", "SimulatePrincipalPolicy"):
            return self._simulate(params)
        if service == "service-quotas" and operation in ("ListServiceQuotas", "ListAWSDefaultServiceQuotas"):
            assert params["ServiceCode"] == "sagemaker", params
            return {"Quotas": [{"ServiceCode": "sagemaker", "QuotaName": name, "Value": value,
                                "QuotaCode": quota_code(name)} for name, value in self.quotas.items()]}
        return None

    def _simulate(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self.simulate:
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized to perform: "
                                         "iam:SimulatePrincipalPolicy"}}, "SimulatePrincipalPolicy")
        self.simulated.append(params)
        document = self.policies.get(params["PolicySourceArn"], self.default)
        context = {c["ContextKeyName"]: c["ContextKeyValues"] for c in params.get("ContextEntries", [])}
        results = []
        for action in params["ActionNames"]:
            ok = all(allowed(document, action, r, context) for r in params.get("ResourceArns", ["*"]))
            results.append({"EvalActionName": action, "EvalResourceName": "*",
                            "EvalDecision": "allowed" if ok else "implicitDeny"})
        return {"EvaluationResults": results, "IsTruncated": False}


def allowed(document: dict[str, Any], action: str, resource: str, context: dict[str, list[str]]) -> bool:
    """IAM's Allow rule for one action on one resource: an Allow statement whose Action, Resource
    (wildcards) and StringEquals conditions all match. (No Deny statements: bincli's policies have none.)"""
    for st in document.get("Statement", []):
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        conditions = st.get("Condition", {}).get("StringEquals", {})
        if st["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions) \
                and any(fnmatch.fnmatchcase(resource, r) for r in resources) \
                and all(v in context.get(k, []) for k, v in conditions.items()):
            return True
    return False


def install(monkeypatch, standins: StandIns) -> StandIns:
    import botocore.client
    from botocore.validate import validate_parameters

    real = botocore.client.BaseClient._make_api_call

    def call(client, operation: str, params: dict[str, Any]):
        model = client.meta.service_model
        standins.calls.append((model.service_name, operation))
        answer = None
        if (model.service_name, operation) in STANDING_IN:
            validate_parameters(params, model.operation_model(operation).input_shape)
            answer = standins.answer(model.service_name, operation, params)
        return answer if answer is not None else real(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", call)
    return standins


STANDING_IN = {("iam", "SimulatePrincipalPolicy"), ("service-quotas", "ListServiceQuotas"),
               ("service-quotas", "ListAWSDefaultServiceQuotas")}
