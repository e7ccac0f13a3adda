"""Endpoints that scale (Application Auto Scaling) or are serverless, `status` and `teardown --all`,
on backend sagemaker against a moto server. Every request is read back from moto."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from typer.testing import CliRunner

from aws_standins import count, fix_moto_tagging_arns, moto_endpoint, on_sessions, refuse
from bincli.backends.sagemaker.session import legacy_workspace_tag, resource_tags
from bincli.cli import app
from bincli.state import State

runner = CliRunner()


def _args(workdir, bucket, role, name, *sets: str) -> list[str]:
    out = ["-w", str(workdir), "--set", "backend=sagemaker", "--set", "sagemaker.region=us-east-1",
           "--set", f"sagemaker.role_arn={role}", "--set", "sagemaker.poll_seconds=0.01",
           "--set", f"sagemaker.bucket={bucket}", "--set", f"deploy.name={name}"]
    for s in sets:
        out += ["--set", s]
    return out


def _workspace(tmp_path, bucket: str, sub: str = "work"):
    """A workspace whose model a SageMaker training job left in S3 (the model's bytes play no part
    here: moto never runs it, and deploy uploads nothing when train recorded model_s3)."""
    workdir = tmp_path / sub
    State(workdir).record("train", {"model_s3": f"s3://{bucket}/{sub}/output/model.tar.gz"})
    return workdir


def _name() -> str:
    return f"bincli-{uuid.uuid4().hex[:10]}"


def _targets(aas, rid):
    return aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]


def _policies(aas, rid):
    found = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    return [p for p in found if p["ResourceId"] == rid]


def _names(sm, prefix: str) -> dict[str, list[str]]:
    """Endpoints, endpoint configs and models whose name starts with `prefix`."""
    return {
        "endpoints": [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]
                      if e["EndpointName"].startswith(prefix)],
        "configs": [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]
                    if c["EndpointConfigName"].startswith(prefix)],
        "models": [m["ModelName"] for m in sm.list_models()["Models"] if m["ModelName"].startswith(prefix)],
    }


AUTOSCALING = ("deploy.autoscaling.min_instances=2", "deploy.autoscaling.max_instances=5",
               "deploy.autoscaling.target_invocations_per_instance=250", "deploy.autoscaling.scale_in_cooldown_s=120",
               "deploy.autoscaling.scale_out_cooldown_s=30")


def test_autoscaling_is_registered_read_back_shown_by_status_and_removed_by_teardown(
        sagemaker_env, tmp_path, in_tmp):
    _, sm, bucket, role = sagemaker_env
    aas = boto3.client("application-autoscaling")
    name = _name()
    rid = f"endpoint/{name}/variant/AllTraffic"
    workdir = _workspace(tmp_path, bucket)
    args = _args(workdir, bucket, role, name, *AUTOSCALING)

    result = runner.invoke(app, ["deploy", *args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    [target] = _targets(aas, rid)
    assert (target["ScalableDimension"], target["MinCapacity"], target["MaxCapacity"]) == (
        "sagemaker:variant:DesiredInstanceCount", 2, 5)
    [policy] = _policies(aas, rid)
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 250.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert (tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (120, 30)
    assert out["autoscaling"]["registered"] is True and out["autoscaling"]["resource_id"] == rid
    # The configured count (1) is below min_instances: the endpoint starts at the minimum.
    variant = sm.describe_endpoint_config(EndpointConfigName=out["endpoint_configs"][0])["ProductionVariants"][0]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 2)
    # CPU instance: one model-server worker (two fought over two cores: ~700 ms against 75 ms).
    env = sm.describe_model(ModelName=out["models"][0])["PrimaryContainer"]["Environment"]
    assert env["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"
    # Every resource carries the workspace tag.
    for arn in (sm.describe_model(ModelName=out["models"][0])["ModelArn"],
                sm.describe_endpoint_config(EndpointConfigName=out["endpoint_configs"][0])["EndpointConfigArn"],
                sm.describe_endpoint(EndpointName=name)["EndpointArn"]):
        assert sm.list_tags(ResourceArn=arn)["Tags"] == resource_tags(workdir, "deploy")

    status = runner.invoke(app, ["status", *args, "--json"])
    assert status.exit_code == 0, status.output
    row = next(r for r in json.loads(status.stdout)["steps"] if r["step"] == "deploy")
    assert row["endpoint"]["status"] == "InService"
    assert (row["endpoint"]["instances"], row["endpoint"]["desired_instances"]) == (2, 2)
    cost = row["endpoint"]["cost_so_far"]  # what it has run so far, while it bills
    assert cost["instance_type"] == "ml.m5.large" and cost["usd_per_hour"] == 0.115 and cost["instance_hours"] >= 0
    shown = runner.invoke(app, ["status", *args])
    assert "instances=2 (desired 2)" in shown.output and "instance-hours of ml.m5.large" in shown.output

    down = runner.invoke(app, ["teardown", *args])
    assert down.exit_code == 0, down.output
    assert f"scalable target {rid}" in down.output
    assert _targets(aas, rid) == [] and _policies(aas, rid) == []
    assert _names(sm, name) == {"endpoints": [], "configs": [], "models": []}


def test_the_scaling_plan_is_recorded_before_the_wait_and_a_failed_endpoint_is_torn_down(
        sagemaker_env, tmp_path, in_tmp, monkeypatch):
    _, sm, bucket, role = sagemaker_env
    aas = boto3.client("application-autoscaling")
    name = _name()
    workdir = _workspace(tmp_path, bucket)
    args = _args(workdir, bucket, role, name, *AUTOSCALING)
    _endpoint_fails_to_start(monkeypatch, name)

    result = runner.invoke(app, ["deploy", *args])
    assert result.exit_code == 1 and "Failed: image pull failed" in result.output
    record = State(workdir).outputs("deploy")
    assert record["endpoint"] == name and record["autoscaling"]["registered"] is False
    assert _targets(aas, record["autoscaling"]["resource_id"]) == []  # nothing registered on a failed endpoint

    down = runner.invoke(app, ["teardown", *args])
    assert down.exit_code == 0, down.output
    assert _names(sm, name) == {"endpoints": [], "configs": [], "models": []}


def _endpoint_fails_to_start(monkeypatch, name: str) -> None:
    """moto's endpoints are InService at once: set this one Failed (in moto's in-process backend)
    before the deploy's first DescribeEndpoint, as AWS does when the container cannot start."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    from bincli.backends.sagemaker import endpoint

    real = endpoint.boto_session

    def fail(params, context, **_):
        ep = sagemaker_backends[DEFAULT_ACCOUNT_ID][context["client_region"]].endpoints.get(name)
        if ep is not None:
            ep.endpoint_status, ep.failure_reason = "Failed", "image pull failed"

    def session(*a, **kw):
        s = real(*a, **kw)
        s.events.register("before-call.sagemaker.DescribeEndpoint", fail)
        return s

    monkeypatch.setattr(endpoint, "boto_session", session)


def test_serverless_endpoint_config_limits_and_status(sagemaker_env, tmp_path, in_tmp):
    _, sm, bucket, role = sagemaker_env
    name = _name()
    workdir = _workspace(tmp_path, bucket)
    args = _args(workdir, bucket, role, name, "deploy.serverless.memory_mb=3072",
                 "deploy.serverless.max_concurrency=7", "deploy.serverless.provisioned_concurrency=2",
                 "sagemaker.deploy_instance_type=ml.g4dn.xlarge", "predict.timeout=120")

    result = runner.invoke(app, ["deploy", *args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    variant = sm.describe_endpoint_config(EndpointConfigName=out["endpoint_configs"][0])["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 7, "ProvisionedConcurrency": 2}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    container = sm.describe_model(ModelName=out["models"][0])["PrimaryContainer"]
    assert "-cpu-" in container["Image"]  # CPU only, whatever the instance type says
    assert container["Environment"]["SAGEMAKER_MODEL_SERVER_WORKERS"] == "1"

    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + b"\0" * (4 * 1024 * 1024))  # just over 4 MB
    predicted = runner.invoke(app, ["predict", str(big), *args, "--json"])
    assert predicted.exit_code == 1
    [answer] = [json.loads(line) for line in predicted.stdout.splitlines()]  # one JSON object per image
    assert answer["status"] == 413 and "over the 4 MB per request of a serverless SageMaker endpoint; not sent" \
        in answer["error"]

    status = runner.invoke(app, ["status", *args, "--json"])
    row = next(r for r in json.loads(status.stdout)["steps"] if r["step"] == "deploy")
    assert row["endpoint"]["serverless"]["MemorySizeInMB"] == 3072
    assert "cost_so_far" not in row["endpoint"]  # billed per request, not per instance-hour

    assert runner.invoke(app, ["teardown", *args]).exit_code == 0
    assert _names(sm, name) == {"endpoints": [], "configs": [], "models": []}


def test_a_serverless_client_waits_at_most_60_s(tmp_path):
    from bincli.backends import get_backend
    from bincli.config import Config

    state = State(tmp_path)
    state.record("deploy", {"backend": "sagemaker", "name": "ep", "region": "eu-west-1",
                            "serverless": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}})
    cfg = Config(backend="sagemaker", workdir=tmp_path)
    cfg.predict.timeout = 120
    client = get_backend(cfg).runtime_client(None, None)
    assert client.client.meta.config.read_timeout == 60 and client.max_payload == 4 * 1024 * 1024
    assert client.client.meta.region_name == "eu-west-1"  # the record's region
    state.record("deploy", {"backend": "sagemaker", "name": "ep", "region": "eu-west-1"})
    client = get_backend(cfg).runtime_client(None, None)
    assert client.client.meta.config.read_timeout == 120 and client.max_payload == 6 * 1024 * 1024


def test_serverless_with_a_gpu_image_is_refused_before_anything_is_created(sagemaker_env, tmp_path, in_tmp):
    _, sm, bucket, role = sagemaker_env
    name = _name()
    workdir = _workspace(tmp_path, bucket)
    gpu = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-gpu-py312"
    result = runner.invoke(app, ["deploy", *_args(workdir, bucket, role, name, "deploy.serverless.memory_mb=1024",
                                                  f"sagemaker.inference_image={gpu}")])
    assert result.exit_code == 2 and "serverless endpoint runs on CPU only" in result.output
    assert State(workdir).outputs("deploy") is None and _names(sm, name)["models"] == []


@pytest.mark.parametrize(("sets", "expected"), [
    (["deploy.serverless.memory_mb=1500"], "deploy.serverless.memory_mb: must be 1024, 2048, 3072, 4096, 5120 or 6144"),
    (["deploy.serverless.memory_mb=1024", "deploy.autoscaling.max_instances=3"],
     "serverless and autoscaling exclude each other"),
    (["deploy.autoscaling.min_instances=4", "deploy.autoscaling.max_instances=2"],
     "max_instances (2) must be >= min_instances (4)"),
    (["deploy.serverless.max_concurrency=2", "deploy.serverless.provisioned_concurrency=3"],
     "provisioned_concurrency (3) must be <= max_concurrency (2)"),
])
def test_bad_scaling_config_is_one_clear_error(tmp_path, sets, expected):
    args = ["config", "show", "-w", str(tmp_path)] + [x for s in sets for x in ("--set", s)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and expected in result.output, result.output


@pytest.mark.parametrize("key", ["serverless", "autoscaling"])
def test_the_local_backend_refuses_serverless_and_autoscaling(tmp_path, in_tmp, key):
    workdir = tmp_path / "work"  # refused before anything is read: no model needed
    setting = "deploy.serverless.memory_mb=2048" if key == "serverless" else "deploy.autoscaling.max_instances=2"
    result = runner.invoke(app, ["deploy", "-w", str(workdir), "--set", setting, "--port", "0"])
    assert result.exit_code == 2, result.output
    assert f"deploy.{key}: not available on backend local (available on: sagemaker)" in result.output
    assert State(workdir).outputs("deploy") is None
    all_local = runner.invoke(app, ["teardown", "--all", "-w", str(workdir)])
    assert all_local.exit_code == 2 and "teardown --all: not available on backend local" in all_local.output


def test_teardown_all_finds_this_workspaces_leftovers_by_tag(sagemaker_env, tmp_path, in_tmp, monkeypatch):
    _, sm, bucket, role = sagemaker_env
    aas = boto3.client("application-autoscaling")
    fix_moto_tagging_arns(monkeypatch)
    list_tags = count()
    on_sessions(monkeypatch, "before-call.sagemaker.ListTags", list_tags)
    mine, lost, theirs = _name(), _name(), _name()
    workdir, other = _workspace(tmp_path, bucket), _workspace(tmp_path, bucket, "other")
    # A deploy whose record was lost (state deleted by hand), then a recorded one, in this workspace...
    assert runner.invoke(app, ["deploy", *_args(workdir, bucket, role, lost, *AUTOSCALING)]).exit_code == 0
    State(workdir).forget("deploy")
    assert runner.invoke(app, ["deploy", *_args(workdir, bucket, role, mine)]).exit_code == 0
    # ...and another workspace's endpoint, with the same deploy settings.
    assert runner.invoke(app, ["deploy", *_args(other, bucket, role, theirs)]).exit_code == 0

    result = runner.invoke(app, ["teardown", "--all", *_args(workdir, bucket, role, mine), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    removed = out["removed"]
    # Found by the tag server-side: no ListTags per resource in the region, only for the recorded
    # endpoint, config and model, each checked to be ours before it is deleted.
    assert out["found_by"] == "Resource Groups Tagging API" and list_tags.calls == 3 and out["left"] == []
    assert f"endpoint {lost}" in removed and f"endpoint {mine}" in removed
    assert f"scalable target endpoint/{lost}/variant/AllTraffic" in removed
    assert _targets(aas, f"endpoint/{lost}/variant/AllTraffic") == []
    for name in (mine, lost):
        assert _names(sm, name) == {"endpoints": [], "configs": [], "models": []}
    assert State(workdir).outputs("deploy") is None
    assert len(_names(sm, theirs)["endpoints"]) == 1 and len(_names(sm, theirs)["models"]) == 1  # not ours

    again = runner.invoke(app, ["teardown", "--all", *_args(workdir, bucket, role, mine)])
    assert again.exit_code == 0 and "removed nothing" in again.output
    assert runner.invoke(app, ["teardown", *_args(other, bucket, role, theirs)]).exit_code == 0


def test_status_asks_the_backend_and_never_fails_on_the_endpoint(tmp_path, in_tmp):
    state = State(tmp_path)
    state.record("deploy", {"backend": "local", "name": "ep", "pid": 2**22 + 7, "url": "http://127.0.0.1:1"})
    result = runner.invoke(app, ["status", "-w", str(tmp_path), "--json"])
    row = next(r for r in json.loads(result.stdout)["steps"] if r["step"] == "deploy")
    assert row["endpoint"] == {"name": "ep", "status": "not running", "serving": False, "alive": False,
                               "url": "http://127.0.0.1:1", "instances": 0, "desired_instances": 1}
    state.record("deploy", {"backend": "sagemaker", "name": "ep", "region": "eu-west-1", "endpoint": "ep"})
    result = runner.invoke(app, ["status", "-w", str(tmp_path), "--json"])  # config: backend local
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.stdout)["steps"] if r["step"] == "deploy")
    assert "deployed by backend sagemaker" in row["endpoint"]["error"]


def test_the_autoscaling_target_can_come_from_the_endpoints_last_loadtest(sagemaker_env, tmp_path, in_tmp):
    _, _, bucket, role = sagemaker_env
    aas = boto3.client("application-autoscaling")
    name = _name()
    workdir = _workspace(tmp_path, bucket)
    args = _args(workdir, bucket, role, name, *AUTOSCALING)

    refused = runner.invoke(app, ["deploy", *args, "--autoscaling-target-from-loadtest"])
    assert refused.exit_code == 2 and "bincli loadtest" in refused.output

    State(workdir).record("loadtest", {"endpoints": {name: {"instances": 1, "max_rps": 12.5,
                                                            "recommended_target": 375}}})
    result = runner.invoke(app, ["deploy", *args, "--autoscaling-target-from-loadtest", "--json"])
    assert result.exit_code == 0, result.output
    [policy] = _policies(aas, f"endpoint/{name}/variant/AllTraffic")
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 375.0
    assert runner.invoke(app, ["teardown", *args]).exit_code == 0


# ---------------------------------------------------------------- teardown on a real account's refusals (issue 25)
AAS_EVENT = "before-call.application-auto-scaling"
DENIED = "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: application-autoscaling:{}"


@pytest.mark.parametrize("command", [["teardown"], ["teardown", "--all"]])
def test_an_endpoint_is_deleted_even_where_its_autoscaling_may_not_be_removed(
        sagemaker_env, tmp_path, in_tmp, monkeypatch, command):
    _, sm, bucket, role = sagemaker_env
    aas = boto3.client("application-autoscaling")
    name = _name()
    rid = f"endpoint/{name}/variant/AllTraffic"
    workdir = _workspace(tmp_path, bucket)
    args = _args(workdir, bucket, role, name, *AUTOSCALING)
    assert runner.invoke(app, ["deploy", *args]).exit_code == 0
    if "--all" in command:
        State(workdir).forget("deploy")  # the record was lost: found by its tag
        fix_moto_tagging_arns(monkeypatch)
    # moto grants every Application Auto Scaling call: a hook refuses them all, as IAM does for a
    # caller without application-autoscaling:* rights.
    denied = refuse("AccessDeniedException", DENIED.format("DescribeScalingPolicies"))
    on_sessions(monkeypatch, f"{AAS_EVENT}.*", denied)

    result = runner.invoke(app, [*command, *args, "--json"])
    assert result.exit_code == 0, result.output
    assert denied.calls >= 1
    assert _names(sm, name) == {"endpoints": [], "configs": [], "models": []}  # nothing left billing
    out = json.loads(result.stdout)
    assert f"endpoint {name}" in out["removed"]
    [left] = out["left"]
    assert left.startswith(f"autoscaling of {rid}, because") and "AccessDeniedException" in left
    assert f"warning: left autoscaling of {rid}" in result.stderr
    assert f"deregister-scalable-target --service-namespace sagemaker --resource-id {rid}" in result.stderr
    assert State(workdir).outputs("deploy") is None
    assert len(_targets(aas, rid)) == 1  # really left (it bills nothing without its endpoint)


def test_teardown_all_without_the_tagging_api_asks_list_tags_and_skips_what_it_cannot_read(
        sagemaker_env, tmp_path, in_tmp, monkeypatch):
    _, sm, bucket, role = sagemaker_env
    lost, theirs = _name(), _name()
    workdir, other = _workspace(tmp_path, bucket), _workspace(tmp_path, bucket, "other")
    assert runner.invoke(app, ["deploy", *_args(workdir, bucket, role, lost)]).exit_code == 0
    State(workdir).forget("deploy")
    assert runner.invoke(app, ["deploy", *_args(other, bucket, role, theirs)]).exit_code == 0
    # No tagging:GetResources right; and ListTags refused on one resource (another team's model).
    tagging = refuse("AccessDeniedException", "not authorized to perform: tag:GetResources")
    on_sessions(monkeypatch, "before-call.resource-groups-tagging-api.GetResources", tagging)
    unreadable = refuse("AccessDeniedException", "not authorized to perform: sagemaker:ListTags",
                        when=lambda params: f"model/{theirs}".encode() in params["body"])
    on_sessions(monkeypatch, "before-call.sagemaker.ListTags", unreadable)

    result = runner.invoke(app, ["teardown", "--all", *_args(workdir, bucket, role, lost), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert tagging.calls == 1 and out["found_by"] == "ListTags" and unreadable.calls == 1
    assert f"endpoint {lost}" in out["removed"]
    assert _names(sm, lost) == {"endpoints": [], "configs": [], "models": []}
    [left] = out["left"]
    assert left.startswith(f"model {theirs}") and "not checked" in left and "AccessDeniedException" in left
    assert f"warning: left model {theirs}" in result.stderr
    assert len(_names(sm, theirs)["models"]) == 1 and len(_names(sm, theirs)["endpoints"]) == 1
    assert runner.invoke(app, ["teardown", *_args(other, bucket, role, theirs)]).exit_code == 0


def test_teardown_all_reads_the_old_path_based_tag_only_where_a_deploy_record_carries_it(
        sagemaker_env, tmp_path, in_tmp, monkeypatch):
    """Resources made before workspace ids carry a tag computed from the workdir's path, the same on
    every machine with that path: they are ours only where this workspace's deploy record predates ids."""
    _, sm, bucket, role = sagemaker_env
    fix_moto_tagging_arns(monkeypatch)
    name, leftover = _name(), _name()
    workdir = _workspace(tmp_path, bucket)
    args = _args(workdir, bucket, role, name)
    old_tag = [{"Key": "bincli:workspace", "Value": legacy_workspace_tag(workdir)}]

    def old_model(model: str) -> None:  # what an earlier bincli left, tagged the old way
        sm.create_model(ModelName=model, ExecutionRoleArn=role, Tags=old_tag,
                        PrimaryContainer={"Image": "x", "ModelDataUrl": f"s3://{bucket}/x.tar.gz"})

    # A fresh workspace at a path someone else used before: their old-tagged model is not ours.
    old_model(leftover)
    result = runner.invoke(app, ["teardown", "--all", *args, "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["removed"] == []
    assert _names(sm, leftover)["models"] == [leftover]

    # A deploy record made before workspace ids (no "workspace" in it): its old tag is read too.
    assert runner.invoke(app, ["deploy", *args]).exit_code == 0
    record = State(workdir).outputs("deploy")
    assert record["workspace"] == resource_tags(workdir, "deploy")[0]["Value"] != old_tag[0]["Value"]
    del record["workspace"]
    State(workdir).record("deploy", record)
    result = runner.invoke(app, ["teardown", "--all", *args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert f"model {leftover}" in out["removed"] and f"endpoint {name}" in out["removed"]
    assert _names(sm, leftover)["models"] == [] and _names(sm, name)["endpoints"] == []


# ---------------------------------------------------------------- deploy stopped while waiting (issue 25)
@pytest.mark.parametrize("how", ["ctrl-c", "timeout"])
def test_a_deploy_that_stops_waiting_says_the_endpoint_bills_and_a_rerun_finishes_it(
        sagemaker_env, tmp_path, in_tmp, monkeypatch, how):
    from bincli.backends.sagemaker import endpoint

    _, _, bucket, role = sagemaker_env
    aas = boto3.client("application-autoscaling")
    name = _name()
    rid = f"endpoint/{name}/variant/AllTraffic"
    workdir = _workspace(tmp_path, bucket)
    args = _args(workdir, bucket, role, name, *AUTOSCALING)
    creating = {"on": True}

    def still_creating(**_):  # moto's endpoints are InService at once; AWS takes minutes
        if creating["on"]:
            moto_endpoint(name).endpoint_status = "Creating"
            if how == "ctrl-c":
                raise KeyboardInterrupt

    on_sessions(monkeypatch, "before-call.sagemaker.DescribeEndpoint", still_creating)
    if how == "timeout":  # the clock jumps an hour per reading: the 30 minutes are up at the first check
        clock = iter(range(0, 10**6, 3600))
        monkeypatch.setattr(endpoint, "time", type("Clock", (), {"monotonic": lambda: next(clock),
                                                                 "sleep": lambda s: None}))

    result = runner.invoke(app, ["deploy", *args])
    assert result.exit_code == (130 if how == "ctrl-c" else 1), result.output
    assert f"endpoint '{name}'" in result.output and "still being created on SageMaker, and bills" in result.output
    assert "'bincli deploy' again waits for it and finishes the deploy (autoscaling included)" in result.output
    assert "'bincli teardown' removes it" in result.output
    record = State(workdir).outputs("deploy")  # recorded before the wait
    assert record["endpoint"] == name and record["autoscaling"]["registered"] is False
    assert _targets(aas, rid) == []

    creating["on"] = False
    moto_endpoint(name).endpoint_status = "InService"  # it got there meanwhile
    again = runner.invoke(app, ["deploy", *args, "--json"])
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout)
    assert out["action"] == "finished" and out["status"] == "InService" and out["autoscaling"]["registered"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in _targets(aas, rid)] == [(2, 5)]
    assert len(_policies(aas, rid)) == 1
    assert State(workdir).outputs("deploy")["status"] == "InService"
    third = runner.invoke(app, ["deploy", *args])
    assert third.exit_code == 1 and "already deployed" in third.output  # finished: nothing more to do
    assert runner.invoke(app, ["teardown", *args]).exit_code == 0


def test_a_rerun_registers_autoscaling_that_was_refused_the_first_time(sagemaker_env, tmp_path, in_tmp, monkeypatch):
    _, _, bucket, role = sagemaker_env
    aas = boto3.client("application-autoscaling")
    name = _name()
    rid = f"endpoint/{name}/variant/AllTraffic"
    workdir = _workspace(tmp_path, bucket)
    args = _args(workdir, bucket, role, name, *AUTOSCALING)
    allowed = {"yet": False}
    denied = refuse("AccessDeniedException", DENIED.format("RegisterScalableTarget"),
                    when=lambda params: not allowed["yet"])
    on_sessions(monkeypatch, f"{AAS_EVENT}.RegisterScalableTarget", denied)

    result = runner.invoke(app, ["deploy", *args])
    assert result.exit_code == 1 and "registering autoscaling" in result.output
    assert "'bincli deploy' again registers it" in result.output
    assert _targets(aas, rid) == [] and State(workdir).outputs("deploy")["status"] == "InService"

    allowed["yet"] = True  # the rights were granted
    again = runner.invoke(app, ["deploy", *args, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["autoscaling"]["registered"] is True and len(_targets(aas, rid)) == 1
    assert runner.invoke(app, ["teardown", *args]).exit_code == 0
