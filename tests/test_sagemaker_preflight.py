"""The preflight of train, tune, deploy and pipeline on backend sagemaker, and `bincli doctor`, against
moto (STS, IAM roles, S3, SageMaker) and small stand-ins for what moto lacks: IAM's policy simulator
(it evaluates the policy documents a test gives it) and SageMaker's Service Quotas
(tests/iam_quota_standins.py). Nothing is created when a check fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bincli.backends.sagemaker.permissions import CALLER, iam_action
from bincli.backends.sagemaker.pricing import hourly_price
from bincli.cli import app
from bincli.config import SageMakerConfig
from iam_quota_standins import StandIns, install, quota_code

runner = CliRunner()
REGION = "us-east-1"
TRAIN_TYPE = "ml.m5.xlarge"
SPOT = f"{TRAIN_TYPE} for spot training job usage"
ENDPOINT = "ml.m5.large for endpoint usage"
DENY_ALL = {"Version": "2012-10-17", "Statement": []}
# The role policy configs/sagemaker.yaml used to document: S3, ECR, logs, metrics, but not the EC2
# network-interface actions the SDK's own role check simulates.
OLD_ROLE_POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": "arn:aws:s3:::*"},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": "arn:aws:s3:::*/*"},
    {"Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
    {"Effect": "Allow", "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                                   "ecr:BatchCheckLayerAvailability"],
     "Resource": "arn:aws:ecr:*:763104351884:repository/*"},
    {"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                                   "logs:DescribeLogStreams"],
     "Resource": "arn:aws:logs:*:*:log-group:/aws/sagemaker/*"},
    {"Effect": "Allow", "Action": "cloudwatch:PutMetricData", "Resource": "*"}]}


@pytest.fixture
def standins(monkeypatch) -> StandIns:
    return install(monkeypatch, StandIns(quotas={SPOT: 1, f"{TRAIN_TYPE} for training job usage": 1, ENDPOINT: 1}))


def _args(workdir: Path, role: str, *sets: str) -> list[str]:
    settings = ["backend=sagemaker", f"sagemaker.region={REGION}", f"sagemaker.role_arn={role}",
                f"sagemaker.train_instance_type={TRAIN_TYPE}", *sets]
    return ["-w", str(workdir), *(arg for s in settings for arg in ("--set", s))]


def _jobs(sm) -> set[str]:
    return {j["TrainingJobName"] for j in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]}


def _policies(workdir: Path, role: str, tmp_path: Path, *sets: str) -> tuple[dict, dict]:
    """(caller, role) policies as `bincli doctor --write-policies` writes them for this config."""
    folder = tmp_path / "policies"
    result = runner.invoke(app, ["doctor", *_args(workdir, role, *sets), "--write-policies", str(folder)])
    assert result.exit_code == 0, result.output
    return tuple(json.loads((folder / name).read_text()) for name in ("caller-policy.json",
                                                                      "execution-role-policy.json"))


def _rows_of(result) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(result.stdout)["checks"]}


def _caller() -> str:
    import boto3

    return boto3.client("sts").get_caller_identity()["Arn"]


def test_a_zero_quota_fails_train_before_anything_is_created(uploaded, standins, in_tmp):
    workdir, s3, sm, bucket, role = uploaded
    standins.quotas[SPOT] = 0  # a new account's GPU quota, and a CPU one someone lowered
    jobs, keys = _jobs(sm), s3.list_objects_v2(Bucket=bucket)["KeyCount"]
    result = runner.invoke(app, ["train", *_args(workdir, role), "--no-wait"])
    assert result.exit_code == 1, result.output
    assert (f"error: preflight: train quota: {SPOT} is 0 in {REGION}, train needs 1 (sagemaker.train_instance_count)"
            in result.output)
    assert (f"hint: aws service-quotas request-service-quota-increase --service-code sagemaker --quota-code "
            f"{quota_code(SPOT)} --desired-value 1 --region {REGION}") in result.output
    assert _jobs(sm) == jobs and s3.list_objects_v2(Bucket=bucket)["KeyCount"] == keys  # nothing created


def test_enough_quota_passes_with_the_sdks_role_check_on_and_every_call_is_in_the_caller_policy(
        uploaded, standins, in_tmp, tmp_path, monkeypatch):
    """The role and the caller may do only what `doctor --write-policies` wrote (the simulator denies
    everything else); ModelTrainer's own role check is on. train and tune start their jobs, and every
    call they made (bincli's, the SDK's) is an action of permissions.CALLER."""
    workdir, _s3, _sm, _bucket, role = uploaded
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "true")
    caller_policy, role_policy = _policies(workdir, role, tmp_path)
    standins.policies.update({role: role_policy, _caller(): caller_policy})
    standins.default = DENY_ALL
    standins.quotas[SPOT] = 2  # tune: max_parallel 2 x 1 instance
    standins.calls.clear()

    train = runner.invoke(app, ["train", *_args(workdir, role), "--no-wait"])
    assert train.exit_code == 0, train.output
    price = hourly_price(TRAIN_TYPE, REGION, SageMakerConfig())  # the dated table's (pricing.py)
    assert (f"cost: train: 1 x {TRAIN_TYPE} (spot) for up to 2 h at ${price:g}/h each: at most ${2 * price:.2f}"
            in train.output)
    tune = runner.invoke(app, ["tune", *_args(workdir, role), "--no-wait", "--max-jobs", "2", "--max-parallel", "2"])
    assert tune.exit_code == 0, tune.output
    sent = set(standins.calls)  # before this test's own calls below

    sdk_check = [s for s in standins.simulated if s["PolicySourceArn"] == role and "ResourceArns" not in s
                 and "ec2:CreateNetworkInterface" in s["ActionNames"]]
    assert sdk_check, "ModelTrainer did not run its own role check"
    listed = {p.action for p in CALLER}
    assert ("sagemaker", "CreateTrainingJob") in sent and ("sagemaker", "CreateHyperParameterTuningJob") in sent
    assert {(s, op) for s, op in sent if iam_action(s, op) not in listed | {None}} == set()


def test_a_role_without_what_the_sdk_checks_fails_in_one_line_with_or_without_the_preflight(
        uploaded, standins, in_tmp, monkeypatch):
    workdir, _s3, sm, _bucket, role = uploaded
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "true")
    standins.policies[role] = OLD_ROLE_POLICY
    jobs = _jobs(sm)

    checked = runner.invoke(app, ["train", *_args(workdir, role), "--no-wait"])
    assert checked.exit_code == 1, checked.output
    line = next(x for x in checked.output.splitlines() if x.startswith("error:"))
    assert line.startswith(f"error: preflight: role permissions: {role} may not ec2:CreateNetworkInterface, ")
    assert "execution-role-policy.json" in checked.output

    standins.calls.clear()
    skipped = runner.invoke(app, ["train", *_args(workdir, role), "--no-wait", "--skip-preflight"])
    assert skipped.exit_code == 1, skipped.output
    assert not any(s == "service-quotas" for s, _ in standins.calls)  # no preflight ran
    assert re.search(rf"^error: creating the training job: IAM role '{role}' cannot be used for 'training' "
                     r"workloads: Missing permissions: .*ec2:CreateNetworkInterface", skipped.output, re.M)
    assert "Traceback" not in skipped.output and isinstance(skipped.exception, SystemExit)
    assert _jobs(sm) == jobs


def test_deploy_checks_the_endpoint_quota_and_that_the_role_may_read_the_artifacts(
        sagemaker_env, standins, in_tmp, tmp_path):
    """With sagemaker.bucket and no upload the model goes to s3://bucket/sagemaker/: a role policy
    written for an upload prefix does not cover it (item 15); the one --write-policies writes does."""
    _s3, sm, bucket, role = sagemaker_env
    workdir = tmp_path / "work"
    sets = (f"sagemaker.bucket={bucket}", "deploy.autoscaling.max_instances=4")
    models = len(sm.list_models()["Models"])
    standins.quotas[ENDPOINT] = 2
    result = runner.invoke(app, ["deploy", *_args(workdir, role, *sets)])
    assert result.exit_code == 1, result.output
    assert (f"error: preflight: deploy quota: {ENDPOINT} is 2 in {REGION}, deploy needs 4 "
            "(deploy.autoscaling.max_instances)") in result.output

    standins.quotas[ENDPOINT] = 4
    role_policy = _policies(workdir, role, tmp_path, *sets)[1]
    # A policy made for an upload to s3://bucket/abid (and no sagemaker.bucket) covers only that prefix.
    standins.policies[role] = _policies(workdir, role, tmp_path / "upload", f"upload.s3_uri=s3://{bucket}/abid")[1]
    result = runner.invoke(app, ["deploy", *_args(workdir, role, *sets)])
    assert result.exit_code == 1, result.output
    assert f"error: preflight: role permissions: {role} may not s3:GetObject" in result.output
    assert "hint: 'bincli doctor --write-policies DIR' writes the policies for this config" in result.output

    standins.policies[role] = role_policy
    result = runner.invoke(app, ["deploy", *_args(workdir, role, *sets)])
    assert "preflight" not in result.output.split("error:")[-1]  # past the preflight: deploy's own error
    assert "no model to deploy" in result.output, result.output
    assert len(sm.list_models()["Models"]) == models


def test_pipeline_checks_its_billed_steps_before_its_first_step(uploaded, standins, in_tmp):
    workdir, _s3, sm, _bucket, role = uploaded
    standins.quotas[SPOT] = 0
    jobs = _jobs(sm)
    result = runner.invoke(app, ["pipeline", *_args(workdir, role, f"split.input={in_tmp}"), "--from", "train",
                                 "--to", "train"])
    assert result.exit_code == 1, result.output
    assert "error: preflight: train quota" in result.output and "== train" not in result.output
    assert _jobs(sm) == jobs


def test_doctor_rows_and_exit_code(uploaded, standins, in_tmp, tmp_path):
    import boto3

    workdir, _s3, _sm, bucket, role = uploaded
    result = runner.invoke(app, ["doctor", *_args(workdir, role), "--json"])
    assert result.exit_code == 0, result.output
    rows = _rows_of(result)
    assert {name: r["status"] for name, r in rows.items()} == {
        "credentials": "ok", "region": "ok", "s3 locations": "ok", "bucket": "ok", "training image": "ok",
        "inference image": "ok", "execution role": "ok", "role permissions": "ok", "your permissions": "ok",
        "tune quota": "ok", "train quota": "ok", "deploy quota": "ok",
        "tune cost": "ok", "train cost": "ok", "deploy cost": "ok"}
    assert rows["credentials"]["detail"] == f"account 123456789012 as {_caller()}"
    assert rows["s3 locations"]["detail"] == f"bincli reads and writes under s3://{bucket}/abid/"
    assert rows["tune quota"]["detail"] == f"{SPOT}: 1 >= 1 (tune.max_parallel x sagemaker.train_instance_count)"

    # Your rights cover every step, teardown too (what you deploy and may not delete bills on); an
    # optional one (the live log view) missing alone is no failure.
    caller_policy = _policies(workdir, role, tmp_path)[0]
    for statement in caller_policy["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a not in ("tag:GetResources", "logs:FilterLogEvents")]
    standins.policies[_caller()] = caller_policy
    result = runner.invoke(app, ["doctor", *_args(workdir, role), "--json"])
    assert result.exit_code == 1, result.output
    yours = _rows_of(result)["your permissions"]
    assert yours["status"] == "fail" and yours["detail"] == f"{_caller()} may not tag:GetResources"
    del standins.policies[_caller()]

    # No right to simulate: not checked, and no failure; a role SageMaker may not assume: a failure.
    standins.simulate = False
    other = boto3.client("iam").create_role(
        RoleName="bincli-ec2-role", AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
    result = runner.invoke(app, ["doctor", *_args(workdir, other["Role"]["Arn"])])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert any(re.match(r"fail +execution role +\S+ does not trust sagemaker.amazonaws.com", x) for x in lines), lines
    assert any(re.match(r"not checked +role permissions .*not allowed to simulate", x) for x in lines), lines
    assert "update-assume-role-policy --role-name bincli-ec2-role" in result.stdout
    assert lines[-1] == "backend sagemaker: 1 check(s) failed"


def test_a_bucket_with_a_customer_key_puts_its_key_in_the_policies(uploaded, standins, in_tmp, tmp_path):
    workdir, s3, _sm, bucket, role = uploaded
    key = "1234abcd-12ab-34cd-56ef-1234567890ab"
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}}]})
    key_arn = f"arn:aws:kms:{REGION}:123456789012:key/{key}"
    caller_policy, role_policy = _policies(workdir, role, tmp_path)
    for document, actions in ((role_policy, ["kms:Decrypt", "kms:GenerateDataKey"]),
                              (caller_policy, ["kms:Decrypt", "kms:GenerateDataKey"])):
        kms = [s for s in document["Statement"] if s["Resource"] == [key_arn]]
        assert kms and kms[0]["Action"] == actions, document
    result = runner.invoke(app, ["doctor", *_args(workdir, role), "--json"])
    assert _rows_of(result)["bucket"]["detail"] == (f"s3://{bucket} in {REGION}, encrypted with KMS key {key} "
                                                   "(the policies grant its use)")
    # A role policy without the key: the role may not read the split SageMaker would decrypt for it.
    standins.policies[role] = {"Version": "2012-10-17", "Statement": [
        s for s in role_policy["Statement"] if s["Resource"] != [key_arn]]}
    row = _rows_of(runner.invoke(app, ["doctor", *_args(workdir, role), "--json"]))["role permissions"]
    assert row["status"] == "fail" and row["detail"].endswith("may not kms:Decrypt, kms:GenerateDataKey")
