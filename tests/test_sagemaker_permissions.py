"""The one list of AWS permissions (backends/sagemaker/permissions.py) against the code that makes the
calls, the SDK's own role check, the shipped policy files and each region's image registry; and AWS
errors named by their service with a hint of their own (issue 25: items 1, 2, 15, 17)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from bincli.backends.sagemaker.permissions import CALLER, ROLE, Scope, iam_action, policy, write_policies
from bincli.config import Config, SageMakerConfig
from iam_quota_standins import allowed

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "bincli"
# Attribute names that are an AWS operation's name but, in bincli, a call on something else.
NOT_CLIENT_CALLS = {"search": "re.Pattern.search"}
# boto3's S3 transfer methods: the operations they send, as far as IAM is concerned.
TRANSFERS = {"upload_file": "s3:PutObject", "upload_fileobj": "s3:PutObject", "download_file": "s3:GetObject",
             "download_fileobj": "s3:GetObject", "create_transfer_manager": "s3:PutObject"}


def _sources() -> list[tuple[Path, ast.AST]]:
    # core/ runs inside the containers and makes no AWS call.
    return [(f, ast.parse(f.read_text())) for f in sorted(SRC.rglob("*.py")) if "core" not in f.relative_to(SRC).parts]


def _operations(trees: list[tuple[Path, ast.AST]]) -> dict[str, list[tuple[str, str]]]:
    """snake_case operation name -> (service, Operation) for every service bincli makes a client of."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    known = set(session.get_available_services())
    services = {"s3"}  # data/s3.py's make_client
    for _, tree in trees:  # session.client("iam"), _client(session, "sts"), ...: a service named to a *client*
        for node in ast.walk(tree):
            func = getattr(node, "func", None)
            called = getattr(func, "attr", None) or getattr(func, "id", None) or ""
            if isinstance(node, ast.Call) and "client" in called:
                services.update(a.value for a in node.args if isinstance(a, ast.Constant) and a.value in known)
    ops: dict[str, list[tuple[str, str]]] = {}
    for service in sorted(services):
        for op in session.get_service_model(service).operation_names:
            ops.setdefault(xform_name(op), []).append((service, op))
    return ops


def test_every_aws_operation_in_the_code_is_in_the_caller_policy():
    """A static scan: every `<client>.<operation>` (called, or passed as a function) and every
    operation named in a string (get_paginator("..."), tables of calls) in src/bincli must map to an
    IAM action that permissions.CALLER lists. What the SDK sends on bincli's behalf is checked at run
    time (test_sagemaker_preflight: every call a train and a tune send)."""
    trees = _sources()
    ops = _operations(trees)
    listed = {p.action for p in CALLER}
    found: dict[str, set[str]] = {}
    for path, tree in trees:
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else (
                node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
            if name and (name in ops or name in TRANSFERS) and name not in NOT_CLIENT_CALLS:
                found.setdefault(name, set()).add(f"{path.relative_to(SRC)}:{node.lineno}")
    missing = []
    for name, where in sorted(found.items()):
        actions = [TRANSFERS[name]] if name in TRANSFERS else [iam_action(s, op) for s, op in ops[name]]
        if not any(action is None or action in listed for action in actions):
            missing.append(f"{name} ({' or '.join(map(str, actions))}) at {', '.join(sorted(where))}")
    assert not missing, "operations the caller policy does not cover:\n" + "\n".join(missing)
    # The scan sees what it must (an empty scan would pass): calls, functions passed, paginators.
    assert {"delete_endpoint", "simulate_principal_policy", "list_service_quotas", "get_bucket_location",
            "invoke_endpoint", "upload_file"} <= found.keys(), sorted(found)


def test_the_sdks_own_role_check_passes_on_the_shipped_role_policy():
    """ModelTrainer simulates these actions (without resources) before it creates a job; the shipped
    policy used to lack the EC2 network-interface ones, so train died for callers allowed to simulate."""
    from sagemaker.core.helper.iam_role_resolver import _get_smoke_test_actions

    shipped = json.loads((ROOT / "policies" / "execution-role-policy.json").read_text())
    for role_type in ("training", "serving"):
        refused = [a for a in _get_smoke_test_actions(role_type) if not allowed(shipped, a, "*", {})]
        assert not refused, (role_type, refused)
    trust = json.loads((ROOT / "policies" / "execution-role-trust-policy.json").read_text())
    assert trust["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}


def test_the_shipped_policy_files_are_made_from_the_list(tmp_path):
    """policies/ is regenerated by `python -m bincli.backends.sagemaker.permissions policies`: a list
    change that is not regenerated fails here."""
    for path in write_policies(tmp_path):
        assert path.read_text() == (ROOT / "policies" / path.name).read_text(), path.name
    caller = json.loads((ROOT / "policies" / "caller-policy.json").read_text())
    assert allowed(caller, "iam:PassRole", "arn:aws:iam::*:role/bincli-sagemaker",
                   {"iam:PassedToService": ["sagemaker.amazonaws.com"]})
    assert not allowed(caller, "iam:PassRole", "arn:aws:iam::*:role/bincli-sagemaker",
                       {"iam:PassedToService": ["ec2.amazonaws.com"]})


@pytest.mark.parametrize("region, partition", [("us-east-1", "aws"), ("ap-east-1", "aws"), ("me-south-1", "aws"),
                                               ("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")])
def test_image_pulls_name_the_regions_registry_account_and_partition(region, partition):
    from sagemaker.core import image_uris

    wanted = (("2.8", "ml.g4dn.xlarge", "training", {}), ("2.6", "ml.m5.large", "inference", {"py_version": "py312"}))
    images = tuple(image_uris.retrieve(framework="pytorch", region=region, version=version, instance_type=instance,
                                       image_scope=scope, **extra) for version, instance, scope, extra in wanted)
    registry = images[0].split(".")[0]
    scope = Scope(region=region, account="123456789012", role_arn=f"arn:{partition}:iam::123456789012:role/r",
                  caller_arn=f"arn:{partition}:iam::123456789012:user/u", locations=("b/p",), images=images)
    role = policy(ROLE, scope)
    pulls = next(s for s in role["Statement"] if "ecr:BatchGetImage" in s["Action"])
    assert pulls["Resource"] == [f"arn:{partition}:ecr:{region}:{registry}:repository/pytorch-{kind}"
                                 for kind in ("inference", "training")]
    for document in (role, policy(CALLER, scope)):
        arns = [r for s in document["Statement"] for r in s["Resource"] if r != "*"]
        assert arns and all(r.startswith(f"arn:{partition}:") for r in arns), arns
    if region != "us-east-1":
        assert registry != "763104351884"  # the us-east-1 account the old policy allowed, and only it


def test_artifacts_without_an_upload_are_inside_the_policy(tmp_path):
    """With sagemaker.bucket and no upload, models go to s3://bucket/sagemaker/...: outside a policy
    made for the upload's prefix; the policy for this config covers them, and a model train recorded
    elsewhere too."""
    from bincli.backends.sagemaker.preflight import s3_locations
    from bincli.state import State

    cfg = Config(workdir=tmp_path, backend="sagemaker", sagemaker=SageMakerConfig(bucket="art-bucket"))
    locations, rows = s3_locations(cfg, ["deploy"])
    assert locations == {"art-bucket/sagemaker"} and rows[0].status == "ok"
    model_key = "arn:aws:s3:::art-bucket/sagemaker/models/ep-20261201/model.tar.gz"
    assert allowed(policy(ROLE, Scope(locations=tuple(locations))), "s3:GetObject", model_key, {})
    assert not allowed(policy(ROLE, Scope(locations=("art-bucket/abid",))), "s3:GetObject", model_key, {})

    State(tmp_path).record("train", {"model_s3": "s3://old-bucket/x/sagemaker/models/j1/model.tar.gz"})
    assert s3_locations(cfg, ["deploy"])[0] == {"art-bucket/sagemaker", "old-bucket/x/sagemaker/models/j1"}
    # train and tune need the split in S3: without an upload that is a failed row, not a late error.
    locations, rows = s3_locations(cfg, ["train"])
    assert rows[0].status == "fail" and "upload.s3_uri" in rows[0].fix


# ---------------------------------------------------------------- AWS errors (item 17)
@pytest.mark.parametrize("service, method, params, code, message, hint", [
    ("sagemaker", "describe_training_job", {"TrainingJobName": "j"}, "ThrottlingException",
     "SageMaker is throttling DescribeTrainingJob (ThrottlingException)", "wait a minute"),
    ("iam", "get_role", {"RoleName": "r"}, "AccessDenied", "access denied by IAM to GetRole", "needs iam:GetRole"),
    ("application-autoscaling", "register_scalable_target",
     {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/e/variant/AllTraffic",
      "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}, "AccessDeniedException",
     "access denied by Application Auto Scaling to RegisterScalableTarget",
     "needs application-autoscaling:RegisterScalableTarget"),
    ("s3", "put_object", {"Bucket": "b", "Key": "k"}, "AccessDenied", "access denied by S3 to PutObject",
     "needs s3:PutObject"),
])
def test_aws_errors_name_the_service_and_the_missing_action(service, method, params, code, message, hint):
    import boto3
    from botocore.stub import Stubber

    from bincli.backends.sagemaker.session import aws_error

    client = boto3.client(service, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub, pytest.raises(ClientError) as raised:
        stub.add_client_error(method, service_error_code=code, service_message="refused")
        getattr(client, method)(**params)
    error = aws_error(raised.value, "doing it")
    assert error.message.startswith(f"doing it: {message}") and "S3 error" not in error.message, error.message
    assert hint in error.hint, error.hint


def test_a_resource_limit_says_which_quota_to_raise():
    from bincli.backends.sagemaker.session import aws_error
    from bincli.data.s3 import explain

    exc = ClientError({"Error": {"Code": "ResourceLimitExceeded", "Message": "The account-level service limit "
                                 "'ml.g4dn.xlarge for spot training job usage' is 0 Instances"}}, "CreateTrainingJob")
    error = aws_error(exc, "creating the training job")
    assert error.message == ("creating the training job: SageMaker limit reached: The account-level service limit "
                             "'ml.g4dn.xlarge for spot training job usage' is 0 Instances")
    assert "bincli doctor" in error.hint and "quota" in error.hint
    # explain (data/, no backend knowledge) names the service too; an operation no service has: "AWS".
    assert explain(exc, "x").message.startswith("x: SageMaker limit reached")
    other = ClientError({"Error": {"Code": "Boom", "Message": "m"}}, "NoSuchOperation")
    assert explain(other, "x").message == "x: AWS error Boom: m"


def test_the_sdks_role_refusal_is_one_line():
    from sagemaker.core.helper.iam_role_resolver import RoleValidationError, _build_validation_error_message

    from bincli.backends.sagemaker.session import aws_error

    role = "arn:aws:iam::123456789012:role/r"
    for kwargs, why in (({"missing_actions": ["ec2:CreateNetworkInterface", "ec2:DescribeVpcs"]},
                         "Missing permissions: ec2:CreateNetworkInterface, ec2:DescribeVpcs"),
                        ({"trust_failed": True}, "Its trust policy does not allow 'sagemaker.amazonaws.com'")):
        error = aws_error(RoleValidationError(_build_validation_error_message(role, "training", **kwargs)),
                          "creating the training job")
        assert "\n" not in error.message and why in error.message, error.message
        assert error.message.startswith(f"creating the training job: IAM role '{role}' cannot be used")
        assert "--write-policies" in error.hint


# ---------------------------------------------------------------- the IAM rows (iam_checks.py)
class FakeIam:
    """get_role and the simulator's paginator, answered from StandIns (as the moto tests do)."""

    def __init__(self, standins, roles: dict[str, dict] | None = None):
        self.standins, self.roles = standins, roles or {}

    def get_paginator(self, name: str):
        assert name == "simulate_principal_policy"
        return type("P", (), {"paginate": lambda _, **kw: [self.standins._simulate(kw)]})()

    def get_role(self, RoleName: str):
        if RoleName not in self.roles:
            raise ClientError({"Error": {"Code": "NoSuchEntity", "Message": "no"}}, "GetRole")
        return {"Role": self.roles[RoleName]}


def test_simulated_rights_fail_on_a_required_action_and_only_warn_on_an_optional_one():
    from bincli.backends.sagemaker.iam_checks import Probe, simulate_row
    from iam_quota_standins import StandIns

    role = "arn:aws:iam::123456789012:role/r"
    scope = Scope(region="us-east-1", account="123456789012", role_arn=role, caller_arn="arn:aws:iam::1:user/u",
                  locations=("b/p",))
    probe = Probe(scope, job_name="bincli", endpoint="ep")
    mine = [p for p in CALLER if p.steps & {"train"}]
    full = policy(CALLER, scope)
    standins = StandIns(policies={"u": full, "v": {"Statement": [dict(s, Action=[a for a in s["Action"]
                                                                                  if a != "logs:FilterLogEvents"])
                                                                   for s in full["Statement"]]}},
                        default={"Statement": []})
    rows = {who: simulate_row(FakeIam(standins), "your permissions", who, mine, probe, "fix it")
            for who in ("u", "v", "nobody")}
    assert (rows["u"].status, rows["u"].detail) == ("ok", f"u may do all {len({p.action for p in mine})} actions")
    assert rows["v"].status == "warn" and rows["v"].detail.endswith("logs:FilterLogEvents")
    assert rows["nobody"].status == "fail" and "iam:PassRole" in rows["nobody"].detail
    assert "logs:FilterLogEvents" not in rows["nobody"].detail  # optional: a failure names the required ones
    assert rows["nobody"].fix == "fix it"
    standins.simulate = False
    refused = simulate_row(FakeIam(standins), "your permissions", "u", mine, probe, "fix it")
    assert refused.status == "not checked" and "iam:SimulatePrincipalPolicy" in refused.fix
    root = simulate_row(FakeIam(standins), "your permissions", None, mine, probe, "fix it")
    assert root.status == "not checked"


def test_the_caller_to_simulate_and_the_roles_trust():
    from bincli.backends.sagemaker.iam_checks import caller_principal, role_row
    from iam_quota_standins import StandIns

    trust = "%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22Service%22%3A%22" \
            "sagemaker.amazonaws.com%22%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%7D%5D%7D"  # as IAM may send it
    iam = FakeIam(StandIns(), {"ci": {"Arn": "arn:aws:iam::1:role/service/ci", "AssumeRolePolicyDocument": trust}})
    assert caller_principal(iam, "arn:aws:sts::1:assumed-role/ci/run-7") == "arn:aws:iam::1:role/service/ci"
    assert caller_principal(iam, "arn:aws:sts::1:assumed-role/gone/s") == "arn:aws:iam::1:role/gone"
    assert caller_principal(iam, "arn:aws:iam::1:user/ann") == "arn:aws:iam::1:user/ann"
    assert caller_principal(iam, "arn:aws:iam::1:root") is None
    assert role_row(iam, "arn:aws:iam::1:role/ci", "1").status == "ok"
    other = role_row(iam, "arn:aws:iam::2:role/ci", "1")
    assert other.status == "fail" and "is in account 2, you are in 1" in other.detail and other.exit_code == 2
    missing = role_row(iam, "arn:aws:iam::1:role/nope", "1")
    assert missing.status == "fail" and missing.fix.startswith("aws iam create-role --role-name nope")
