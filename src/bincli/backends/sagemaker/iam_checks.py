"""The execution role and the caller, checked the way IAM itself decides: GetRole for the role and
its trust policy, SimulatePrincipalPolicy for the actions of permissions.py on the resources this
config uses. Where IAM will not answer (no iam:GetRole or iam:SimulatePrincipalPolicy), the row
says "not checked" and never blocks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from bincli.backends.checks import FAIL, NOT_CHECKED, OK, WARN, Check
from bincli.backends.sagemaker.permissions import SERVICE, Permission, Scope

_DENIED = ("AccessDenied", "AccessDeniedException")


@dataclass(frozen=True)
class Probe:
    """Concrete resources to simulate on: names like the ones bincli will create (a policy scoped to
    `bincli*` must pass), and a key in each S3 location."""

    scope: Scope
    job_name: str
    endpoint: str

    def resources(self, kind: str) -> list[str] | None:
        """ARNs for `kind`; None: simulate without resources (the action's own '*')."""
        s = self.scope
        sm = f"arn:{s.partition}:sagemaker:{s.region}:{s.account}"
        names = {"training-job": [f"{sm}:training-job/{self.job_name}-preflight"],
                 "tuning-job": [f"{sm}:hyper-parameter-tuning-job/{self.job_name}-preflight"],
                 "model": [f"{sm}:model/{self.endpoint}-preflight"],
                 "endpoint-config": [f"{sm}:endpoint-config/{self.endpoint}-preflight"],
                 "endpoint": [f"{sm}:endpoint/{self.endpoint}"],
                 "objects": [f"arn:{s.partition}:s3:::{loc.rstrip('/')}/bincli-preflight" for loc in s.locations],
                 "log-groups": [f"arn:{s.partition}:logs:{s.region}:{s.account}:log-group:/aws/sagemaker/"
                                "TrainingJobs:log-stream:preflight"]}
        names["sagemaker"] = [*names["training-job"], *names["model"], *names["endpoint"]]
        return None if kind == "any" else names.get(kind) or s.resources(kind)


def role_row(iam: Any, role_arn: str, account: str | None) -> Check:
    """The role exists, is in the caller's account and trusts sagemaker.amazonaws.com."""
    name = role_arn.rsplit("/", 1)[-1]
    trust_fix = (f"aws iam update-assume-role-policy --role-name {name} "
                 "--policy-document file://policies/execution-role-trust-policy.json")
    role_account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    if account and role_account and role_account != account:
        return Check("execution role", FAIL, f"{role_arn} is in account {role_account}, you are in {account}: "
                     "SageMaker runs only as a role of the account that creates the job",
                     "make the role in your account (policies/) and set sagemaker.role_arn to it", exit_code=2)
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except Exception as exc:
        code = _code(exc)
        if code in _DENIED:
            return Check("execution role", NOT_CHECKED, f"{role_arn}: not allowed to read it (iam:GetRole)",
                         "allow iam:GetRole on the role (policies/caller-policy.json) to have it checked")
        if code in ("NoSuchEntity", "NoSuchEntityException"):
            return Check("execution role", FAIL, f"{role_arn} does not exist",
                         f"aws iam create-role --role-name {name} --assume-role-policy-document "
                         "file://policies/execution-role-trust-policy.json, or fix sagemaker.role_arn", exit_code=2)
        return Check("execution role", NOT_CHECKED, f"{role_arn}: {reason(exc)}")
    document = role.get("AssumeRolePolicyDocument") or {}
    if isinstance(document, str):  # IAM may return it URL-encoded
        document = json.loads(unquote(document))
    if SERVICE not in trusted_services(document):
        return Check("execution role", FAIL, f"{role_arn} does not trust {SERVICE} (SageMaker cannot assume it)",
                     trust_fix)
    return Check("execution role", OK, f"{role['Arn']} trusts {SERVICE}")


def trusted_services(document: dict[str, Any]) -> set[str]:
    """The service principals an Allow statement lets sts:AssumeRole."""
    found: set[str] = set()
    for st in document.get("Statement", []) if isinstance(document, dict) else []:
        actions = st.get("Action", [])
        actions = [actions] if isinstance(actions, str) else actions
        if st.get("Effect") == "Allow" and set(actions) & {"sts:AssumeRole", "sts:*", "*"}:
            service = (st.get("Principal") or {}).get("Service", []) if isinstance(st.get("Principal"), dict) else []
            found.update([service] if isinstance(service, str) else service)
    return found


def caller_principal(iam: Any, caller_arn: str) -> str | None:
    """The IAM principal to simulate for the caller: the user, or the role behind an assumed-role
    session (GetRole gives its path); None for root and federated users, which cannot be simulated."""
    parts = caller_arn.split(":")
    if len(parts) < 6 or parts[5] == "root" or parts[5].startswith("federated-user/"):
        return None
    if parts[2] == "sts" and parts[5].startswith("assumed-role/"):
        name = parts[5].split("/")[1]
        try:
            return iam.get_role(RoleName=name)["Role"]["Arn"]
        except Exception:
            return f"arn:{parts[1]}:iam::{parts[4]}:role/{name}"
    return caller_arn


def simulate_row(iam: Any, name: str, principal: str | None, permissions: Iterable[Permission], probe: Probe,
                 fix: str) -> Check:
    """One row: the actions `principal` is denied on the probe's resources (optional ones only warn)."""
    permissions = list(permissions)
    if principal is None:
        return Check(name, NOT_CHECKED, "root or a federated user: IAM cannot simulate it",
                     "run bincli as an IAM user or role")
    try:
        denied, unsure = _simulate(iam, principal, permissions, probe)
    except Exception as exc:
        allow = "allow iam:SimulatePrincipalPolicy on it (policies/caller-policy.json) to have it checked"
        if _code(exc) in _DENIED:
            return Check(name, NOT_CHECKED, f"{principal}: not allowed to simulate its policies", allow)
        return Check(name, NOT_CHECKED, f"{principal}: the policy simulator did not answer ({reason(exc)})", allow)
    optional = {p.action for p in permissions if p.optional}
    required = sorted(set(denied) - optional)
    if required:
        return Check(name, FAIL, f"{principal} may not {', '.join(required)}", fix)
    if denied or unsure:
        gaps = sorted(set(denied) | set(unsure))
        return Check(name, WARN, f"{principal} may not (or IAM cannot tell, SCPs and boundaries aside) "
                     f"{', '.join(gaps)}", fix)
    return Check(name, OK, f"{principal} may do all {len({p.action for p in permissions})} actions")


def _simulate(iam: Any, principal: str, permissions: list[Permission], probe: Probe) -> tuple[list[str], list[str]]:
    """(denied, unverifiable) actions: one simulation per resource kind and condition."""
    groups: dict[tuple[str, tuple], set[str]] = {}
    for p in permissions:
        groups.setdefault((p.on, tuple(sorted(p.context.items()))), set()).add(p.action)
    denied: set[str] = set()
    unsure: set[str] = set()
    for (kind, context), actions in groups.items():
        resources = probe.resources(kind)
        if resources == []:  # nothing of that kind here (no KMS key)
            continue
        kwargs: dict[str, Any] = {"PolicySourceArn": principal, "ActionNames": sorted(actions)}
        if resources:
            kwargs["ResourceArns"] = resources
        if context:
            kwargs["ContextEntries"] = [{"ContextKeyName": k, "ContextKeyValues": [v], "ContextKeyType": "string"}
                                        for k, v in context]
        for page in iam.get_paginator("simulate_principal_policy").paginate(**kwargs):
            for result in page.get("EvaluationResults", []):
                decisions = [result.get("EvalDecision")] + [r.get("EvalResourceDecision")
                                                            for r in result.get("ResourceSpecificResults") or []]
                if all(d == "allowed" for d in decisions if d):
                    continue
                boundary = (result.get("PermissionsBoundaryDecisionDetail") or {}).get("AllowedByPermissionsBoundary")
                orgs = (result.get("OrganizationsDecisionDetail") or {}).get("AllowedByOrganizations")
                explicit = result.get("EvalDecision") == "explicitDeny"
                (unsure if not explicit and False in (boundary, orgs) else denied).add(result["EvalActionName"])
    return sorted(denied), sorted(unsure)


def _code(exc: BaseException) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


def reason(exc: BaseException) -> str:
    """Why a call got no usable answer, short enough for a row: the error code and the start of its message."""
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    text = " ".join(str(error.get("Message") or "").split()) if error else type(exc).__name__
    code = str(error.get("Code") or "")
    return f"{code}: {text[:100]}".strip(": ") if not text.startswith("<") else f"{code or 'error'}: no answer"
