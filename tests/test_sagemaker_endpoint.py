"""`bincli deploy` / `teardown` on backend sagemaker, against a moto server (SageMaker + S3).

moto answers invoke_endpoint with a 500 for any JPEG body, so predicting through a SageMaker
endpoint is not tested here; the same client path is tested against bincli's local endpoint.
moto lacks UpdateEndpoint: `deploy --update` gets it from endpoint_standin.py (says what it fakes)."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from bincli.backends.sagemaker.endpoint import resource_name
from bincli.cli import app
from bincli.state import State
from endpoint_standin import UpdateEndpointStandIn
from serving_support import model_tar

runner = CliRunner()


def _sagemaker_args(workdir, bucket: str | None, role) -> list[str]:
    return ["-w", str(workdir), "--set", "backend=sagemaker", "--set", "sagemaker.region=us-east-1",
            "--set", f"sagemaker.role_arn={role}", "--set", "sagemaker.poll_seconds=0.01",
            "--set", "deploy.name=bincli-test", *(["--set", f"sagemaker.bucket={bucket}"] if bucket else [])]


def _exists(call, **kwargs) -> bool:
    from botocore.exceptions import ClientError

    try:
        call(**kwargs)
        return True
    except ClientError as exc:
        assert "Could not find" in exc.response["Error"]["Message"], exc
        return False


def test_deploy_creates_model_config_endpoint_and_teardown_deletes_only_those(sagemaker_env, tmp_path,
                                                                              tmp_path_factory, in_tmp):
    s3, sm, bucket, role = sagemaker_env
    workdir = tmp_path / "work"
    tar = model_tar(tmp_path_factory.getbasetemp())
    State(workdir).record("train", {"model": str(tar)})  # a model trained locally, deployed to SageMaker
    sm.create_model(ModelName="someone-elses-model", ExecutionRoleArn=role,
                    PrimaryContainer={"Image": "x", "ModelDataUrl": f"s3://{bucket}/x.tar.gz"})
    args = _sagemaker_args(workdir, bucket, role)

    result = runner.invoke(app, ["deploy", *args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["status"] == "InService" and out["name"] == "bincli-test"
    model_name, config_name = out["models"][0], out["endpoint_configs"][0]
    container = sm.describe_model(ModelName=model_name)["PrimaryContainer"]
    assert container["ModelDataUrl"] == out["model_s3"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert "pytorch-inference:2.6" in container["Image"]
    key = out["model_s3"].removeprefix(f"s3://{bucket}/")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == tar.read_bytes()  # the archive, as it is
    variant = sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"][0]
    assert (variant["ModelName"], variant["InstanceType"]) == (model_name, "ml.m5.large")
    assert sm.describe_endpoint(EndpointName="bincli-test")["EndpointConfigName"] == config_name
    assert State(workdir).outputs("deploy")["endpoint"] == "bincli-test"

    again = runner.invoke(app, ["deploy", *args])
    assert again.exit_code == 1 and "already deployed" in again.output
    mine = [m for m in sm.list_models()["Models"] if m["ModelName"].startswith(("bincli-test-", "someone-elses"))]
    assert len(mine) == 2  # nothing more was created (other modules' models may share the moto server)

    down = runner.invoke(app, ["teardown", *args])
    assert down.exit_code == 0, down.output
    assert not _exists(sm.describe_endpoint, EndpointName="bincli-test")
    assert not _exists(sm.describe_endpoint_config, EndpointConfigName=config_name)
    assert not _exists(sm.describe_model, ModelName=model_name)
    assert _exists(sm.describe_model, ModelName="someone-elses-model")  # not ours: left alone
    assert State(workdir).outputs("deploy") is None

    second = runner.invoke(app, ["teardown", *args])
    assert second.exit_code == 0 and "nothing to remove" in second.output


def test_teardown_tolerates_resources_already_deleted_by_hand(sagemaker_env, tmp_path, tmp_path_factory, in_tmp):
    _, sm, bucket, role = sagemaker_env
    workdir = tmp_path / "work"
    State(workdir).record("train", {"model": str(model_tar(tmp_path_factory.getbasetemp()))})
    args = _sagemaker_args(workdir, bucket, role)
    out = json.loads(runner.invoke(app, ["deploy", *args, "--json"]).stdout)
    sm.delete_endpoint(EndpointName="bincli-test")  # someone removed it in the console
    result = runner.invoke(app, ["teardown", *args])
    assert result.exit_code == 0, result.output
    assert not _exists(sm.describe_model, ModelName=out["models"][0])


def test_deploy_without_a_model_or_a_bucket_is_one_clear_error(sagemaker_env, tmp_path, tmp_path_factory, in_tmp):
    _, _, bucket, role = sagemaker_env
    workdir = tmp_path / "work"
    result = runner.invoke(app, ["deploy", *_sagemaker_args(workdir, bucket, role)])
    assert result.exit_code == 1 and "no model to deploy" in result.output
    State(workdir).record("train", {"model": str(model_tar(tmp_path_factory.getbasetemp()))})
    result = runner.invoke(app, ["deploy", *_sagemaker_args(workdir, None, role)])
    assert result.exit_code == 2 and "sagemaker.bucket: required" in result.output
    assert State(workdir).outputs("deploy") is None


# ---------------------------------------------------------------- deploy --update (UpdateEndpoint from a stand-in)
def _deploy_with_scaling(sm, bucket, role, workdir, name):
    # Models a SageMaker training job left in S3 (moto never runs them: their bytes play no part).
    State(workdir).record("train", {"model_s3": f"s3://{bucket}/v1/model.tar.gz"})
    args = [*_sagemaker_args(workdir, bucket, role), "--set", f"deploy.name={name}",
            "--set", "deploy.autoscaling.min_instances=1", "--set", "deploy.autoscaling.max_instances=3",
            "--set", "deploy.autoscaling.target_invocations_per_instance=300"]
    first = json.loads(runner.invoke(app, ["deploy", *args, "--json"]).stdout)
    State(workdir).record("train", {"model_s3": f"s3://{bucket}/v2/model.tar.gz"})  # the next model
    return args, first


def _scaling(name):
    import boto3

    aas = boto3.client("application-autoscaling")
    rid = f"endpoint/{name}/variant/AllTraffic"
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    found = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    policies = [p for p in found if p["ResourceId"] == rid]
    return [(t["MinCapacity"], t["MaxCapacity"]) for t in targets], [
        p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] for p in policies]


def test_update_moves_the_endpoint_to_a_new_model_then_deletes_the_old_one(sagemaker_env, tmp_path, in_tmp,
                                                                           monkeypatch):
    _, sm, bucket, role = sagemaker_env
    standin = UpdateEndpointStandIn().install(monkeypatch)
    name = f"bincli-upd-{uuid.uuid4().hex[:8]}"
    args, first = _deploy_with_scaling(sm, bucket, role, tmp_path / "work", name)

    without = runner.invoke(app, ["deploy", *args])
    assert without.exit_code == 1 and "--update" in without.output

    result = runner.invoke(app, ["deploy", *args, "--update", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["action"] == "updated" and out["replaced"] == first["model_s3"] != out["model_s3"]
    new_model, new_config = out["models"][0], out["endpoint_configs"][0]
    assert new_config != first["endpoint_configs"][0]
    assert standin.calls == [{"EndpointName": name, "EndpointConfigName": new_config}]
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == new_config
    assert sm.describe_model(ModelName=new_model)["PrimaryContainer"]["ModelDataUrl"] == out["model_s3"]
    assert not _exists(sm.describe_endpoint_config, EndpointConfigName=first["endpoint_configs"][0])
    assert not _exists(sm.describe_model, ModelName=first["models"][0])
    assert _scaling(name) == ([(1, 3)], [300.0])  # scaling survived the update
    assert State(workdir := tmp_path / "work").outputs("deploy")["models"] == [new_model]

    assert runner.invoke(app, ["teardown", *args]).exit_code == 0
    assert _scaling(name) == ([], [])
    assert not _exists(sm.describe_model, ModelName=new_model)
    assert State(workdir).outputs("deploy") is None


@pytest.mark.parametrize("how", ["rolled back", "refused"])
def test_a_failed_update_leaves_the_old_model_serving_and_deletes_the_new_one(
        sagemaker_env, tmp_path, in_tmp, monkeypatch, how):
    _, sm, bucket, role = sagemaker_env
    standin = UpdateEndpointStandIn().install(monkeypatch)
    if how == "rolled back":
        standin.fail_reason = "The primary container for variant AllTraffic did not pass the ping health check"
    else:
        standin.error = "Cannot update in-progress endpoint"
    name = f"bincli-upd-{uuid.uuid4().hex[:8]}"
    args, first = _deploy_with_scaling(sm, bucket, role, tmp_path / "work", name)

    result = runner.invoke(app, ["deploy", *args, "--update"])
    assert result.exit_code == 1
    assert f"update of endpoint '{name}' failed" in result.output
    assert (standin.fail_reason or standin.error) in result.output
    assert f"still serves the previous model {first['model_s3']}" in result.output
    [tried] = standin.calls
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == first["endpoint_configs"][0]
    assert not _exists(sm.describe_endpoint_config, EndpointConfigName=tried["EndpointConfigName"])
    assert not _exists(sm.describe_model, ModelName=tried["EndpointConfigName"])  # model and config share the name
    assert _exists(sm.describe_model, ModelName=first["models"][0])
    record = State(tmp_path / "work").outputs("deploy")
    assert (record["models"], record["model_s3"]) == (first["models"], first["model_s3"]) and "update" not in record
    assert _scaling(name) == ([(1, 3)], [300.0])  # put back on the old variant

    assert runner.invoke(app, ["teardown", *args]).exit_code == 0
    assert _scaling(name) == ([], [])


# ---------------------------------------------------------------- names and regions (issue 11)
@pytest.mark.parametrize("base", ["x" * 62, "a" * 46 + "-" + "b" * 16, "a" * 47 + "--b", "short"])
def test_model_and_config_names_fit_sagemakers_rule(base):
    import re

    stamp = "20261201-054412"
    name = resource_name(base, stamp)
    assert len(name) <= 63 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name), name
    assert name.endswith(stamp) and base.startswith(name[: -len(stamp) - 1])
    assert resource_name(base, stamp, taken={name}).endswith(f"{stamp}-2")
    assert len(resource_name(base, stamp, taken={name})) <= 63


def test_a_long_endpoint_name_deploys_and_teardown_uses_the_records_region(sagemaker_env, tmp_path,
                                                                           tmp_path_factory, in_tmp, monkeypatch):
    _, sm, bucket, role = sagemaker_env
    workdir = tmp_path / "work"
    State(workdir).record("train", {"model": str(model_tar(tmp_path_factory.getbasetemp()))})
    name = f"b{uuid.uuid4().hex[:8]}" + "-x" * 26 + "y"  # 62 characters: a plain cut at 63 would end in '-'
    args = [*_sagemaker_args(workdir, bucket, role), "--set", f"deploy.name={name}"]
    out = json.loads(runner.invoke(app, ["deploy", *args, "--json"]).stdout)
    assert len(out["models"][0]) <= 63 and not out["models"][0].endswith("-")
    assert _exists(sm.describe_endpoint, EndpointName=name)

    monkeypatch.delenv("AWS_DEFAULT_REGION")  # no region in the config or the environment now
    no_region = ["-w", str(workdir), "--set", "backend=sagemaker", "--set", f"deploy.name={name}"]
    result = runner.invoke(app, ["teardown", *no_region])
    assert result.exit_code == 0, result.output
    assert not _exists(sm.describe_endpoint, EndpointName=name)
    assert not _exists(sm.describe_model, ModelName=out["models"][0])


# ---------------------------------------------------------------- autoscaling through an update (issue 25)
def _watch_scaling_removal(monkeypatch):
    """Counts the calls that take autoscaling off (they still reach moto)."""
    from aws_standins import count, on_sessions

    removals = count()
    for op in ("DeleteScalingPolicy", "DeregisterScalableTarget"):
        on_sessions(monkeypatch, f"before-call.application-auto-scaling.{op}", removals)
    return removals


def test_an_update_on_the_same_instance_type_leaves_autoscaling_on(sagemaker_env, tmp_path, in_tmp, monkeypatch):
    _, sm, bucket, role = sagemaker_env
    standin = UpdateEndpointStandIn().install(monkeypatch)
    removals = _watch_scaling_removal(monkeypatch)
    name = f"bincli-upd-{uuid.uuid4().hex[:8]}"
    args, _ = _deploy_with_scaling(sm, bucket, role, tmp_path / "work", name)
    result = runner.invoke(app, ["deploy", *args, "--update"])
    assert result.exit_code == 0, result.output
    assert len(standin.calls) == 1 and removals.calls == 0  # never off, not even during the update
    assert _scaling(name) == ([(1, 3)], [300.0])
    assert runner.invoke(app, ["teardown", *args]).exit_code == 0


def test_a_failed_update_to_another_instance_type_puts_autoscaling_back_whatever_else_fails(
        sagemaker_env, tmp_path, in_tmp, monkeypatch):
    from aws_standins import on_sessions, refuse

    _, sm, bucket, role = sagemaker_env
    standin = UpdateEndpointStandIn().install(monkeypatch)
    standin.fail_reason = "The primary container for variant AllTraffic did not pass the ping health check"
    name = f"bincli-upd-{uuid.uuid4().hex[:8]}"
    args, first = _deploy_with_scaling(sm, bucket, role, tmp_path / "work", name)
    removals = _watch_scaling_removal(monkeypatch)
    # The caller may not delete endpoint configs (moto lets anyone): the clean-up fails too.
    denying = {"on": True}
    denied = refuse("AccessDeniedException", "not authorized to perform: sagemaker:DeleteEndpointConfig",
                    when=lambda params: denying["on"])
    on_sessions(monkeypatch, "before-call.sagemaker.DeleteEndpointConfig", denied)
    result = runner.invoke(app, ["deploy", *args, "--set", "sagemaker.deploy_instance_type=ml.c5.xlarge",
                                 "--update"])
    assert result.exit_code == 1 and f"update of endpoint '{name}' failed: {standin.fail_reason}" in result.output
    [tried] = standin.calls
    assert f"deleting {tried['EndpointConfigName']}" in result.output
    assert "('bincli teardown' deletes it)" in result.output
    assert removals.calls == 2 and denied.calls == 1  # taken off for the new instance type...
    assert _scaling(name) == ([(1, 3)], [300.0])  # ...and put back on the old variant
    record = State(tmp_path / "work").outputs("deploy")
    assert record["autoscaling"]["registered"] is True and record["instance_type"] == "ml.m5.large"
    assert record["endpoint_configs"] == [*first["endpoint_configs"], tried["EndpointConfigName"]]  # kept to delete
    assert record["models"] == first["models"] and "update" not in record
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == first["endpoint_configs"][0]
    denying["on"] = False
    assert runner.invoke(app, ["teardown", *args]).exit_code == 0
    assert not _exists(sm.describe_endpoint_config, EndpointConfigName=tried["EndpointConfigName"])


def test_an_update_that_stops_waiting_is_finished_by_the_next_deploy(sagemaker_env, tmp_path, in_tmp, monkeypatch):
    from aws_standins import on_sessions

    _, sm, bucket, role = sagemaker_env
    standin = UpdateEndpointStandIn().install(monkeypatch)
    name = f"bincli-upd-{uuid.uuid4().hex[:8]}"
    args, first = _deploy_with_scaling(sm, bucket, role, tmp_path / "work", name)
    interrupt = {"on": True}

    def ctrl_c_after_update(**_):  # the first DescribeEndpoint after UpdateEndpoint
        if standin.calls and interrupt["on"]:
            raise KeyboardInterrupt

    on_sessions(monkeypatch, "before-call.sagemaker.DescribeEndpoint", ctrl_c_after_update)
    bigger = [*args, "--set", "sagemaker.deploy_instance_type=ml.c5.xlarge"]
    result = runner.invoke(app, ["deploy", *bigger, "--update"])
    assert result.exit_code == 130 and "still being updated on SageMaker, and bills" in result.output
    assert "'bincli deploy' again waits for it and finishes" in result.output
    assert _scaling(name) == ([], [])  # off for the new instance type, until the update ends
    assert State(tmp_path / "work").outputs("deploy")["update"]["config"] == standin.calls[0]["EndpointConfigName"]

    interrupt["on"] = False
    again = runner.invoke(app, ["deploy", *bigger, "--json"])
    assert again.exit_code == 0, again.output
    out = json.loads(again.stdout)
    assert out["action"] == "updated" and out["replaced"] == first["model_s3"]
    assert out["endpoint_configs"] == [standin.calls[0]["EndpointConfigName"]] and len(standin.calls) == 1
    assert out["instance_type"] == "ml.c5.xlarge" and "update" not in out
    assert not _exists(sm.describe_model, ModelName=first["models"][0])  # the old model went once it was done
    assert _scaling(name) == ([(1, 3)], [300.0])  # registered again
    assert runner.invoke(app, ["teardown", *args]).exit_code == 0


# ---------------------------------------------------------------- ownership (issue 28, items 1 and 2)
def _theirs(sm, role, bucket, name: str) -> None:
    """Another user's endpoint of `name`: their own model, config and tags."""
    other = f"theirs-{uuid.uuid4().hex[:8]}"
    sm.create_model(ModelName=other, ExecutionRoleArn=role,
                    PrimaryContainer={"Image": "x", "ModelDataUrl": f"s3://{bucket}/x.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName=other, ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": other, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=other, Tags=[{"Key": "bincli:workspace", "Value": "x"}])


def _owned_args(tmp_path, tmp_path_factory, bucket, role, name):
    workdir = tmp_path / "work"
    State(workdir).record("train", {"model": str(model_tar(tmp_path_factory.getbasetemp()))})
    return [*_sagemaker_args(workdir, bucket, role), "--set", f"deploy.name={name}"]


def test_teardown_leaves_an_endpoint_of_the_recorded_name_that_another_user_made(sagemaker_env, tmp_path,
                                                                                  tmp_path_factory, in_tmp):
    _, sm, bucket, role = sagemaker_env
    name = f"bincli-own-{uuid.uuid4().hex[:8]}"
    args = _owned_args(tmp_path, tmp_path_factory, bucket, role, name)
    ours = json.loads(runner.invoke(app, ["deploy", *args, "--json"]).stdout)
    sm.delete_endpoint(EndpointName=name)  # ours went out of band, and someone took the name
    _theirs(sm, role, bucket, name)

    result = runner.invoke(app, ["teardown", *args, "--json"])
    assert result.exit_code == 0, result.output
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"  # theirs: still there
    out = json.loads(result.stdout)
    [left] = out["left"]
    assert left.startswith(f"endpoint {name}, because not ours") and "is not one this workspace's deploy made" in left
    assert f"warning: left endpoint {name}" in result.stderr
    assert f"endpoint {name}" not in out["removed"]
    assert not _exists(sm.describe_model, ModelName=ours["models"][0])  # ours (tagged, recorded): deleted
    assert not _exists(sm.describe_endpoint_config, EndpointConfigName=ours["endpoint_configs"][0])
    assert State(tmp_path / "work").outputs("deploy") is None
    sm.delete_endpoint(EndpointName=name)


def _already_exists(make_it: bool):
    """CreateEndpoint whose answer is lost: the first try made it (`make_it`), the retry hears this."""
    import boto3

    from aws_standins import refuse

    refusal = refuse("ValidationException", "Cannot create already existing endpoint")

    def handler(params, **kwargs):
        if make_it and not handler.made:
            body = json.loads(params["body"])
            boto3.client("sagemaker").create_endpoint(**body)  # an unhooked client: straight to moto
            handler.made = True
        return refusal(params, **kwargs)

    handler.made = False
    return handler


def test_a_lost_create_endpoint_answer_is_ours_when_its_tags_say_so_and_teardown_removes_it(
        sagemaker_env, tmp_path, tmp_path_factory, in_tmp, monkeypatch):
    from aws_standins import on_sessions

    _, sm, bucket, role = sagemaker_env
    name = f"bincli-lost-{uuid.uuid4().hex[:8]}"
    args = _owned_args(tmp_path, tmp_path_factory, bucket, role, name)
    on_sessions(monkeypatch, "before-call.sagemaker.CreateEndpoint", _already_exists(make_it=True))
    result = runner.invoke(app, ["deploy", *args, "--json"])
    assert result.exit_code == 0, result.output
    assert "its answer was lost" in result.stderr
    assert State(tmp_path / "work").outputs("deploy")["endpoint"] == name
    down = runner.invoke(app, ["teardown", *args])
    assert down.exit_code == 0, down.output
    assert not _exists(sm.describe_endpoint, EndpointName=name)


def test_create_endpoint_hearing_already_exists_for_another_users_endpoint_records_no_endpoint(
        sagemaker_env, tmp_path, tmp_path_factory, in_tmp, monkeypatch):
    from aws_standins import on_sessions

    _, sm, bucket, role = sagemaker_env
    name = f"bincli-taken-{uuid.uuid4().hex[:8]}"
    args = _owned_args(tmp_path, tmp_path_factory, bucket, role, name)
    _theirs(sm, role, bucket, name)
    theirs = sm.describe_endpoint(EndpointName=name)["EndpointConfigName"]
    on_sessions(monkeypatch, "before-call.sagemaker.CreateEndpoint", _already_exists(make_it=False))
    result = runner.invoke(app, ["deploy", *args])
    assert result.exit_code == 1
    assert f"endpoint name '{name}' is taken by an endpoint this workspace did not make" in result.output
    record = State(tmp_path / "work").outputs("deploy")
    assert "endpoint" not in record and len(record["models"]) == 1
    down = runner.invoke(app, ["teardown", *args])
    assert down.exit_code == 0, down.output
    assert sm.describe_endpoint(EndpointName=name)["EndpointConfigName"] == theirs  # untouched
    assert not _exists(sm.describe_model, ModelName=record["models"][0])
    sm.delete_endpoint(EndpointName=name)


def test_teardown_confirms_the_endpoint_is_gone_and_keeps_the_record_when_it_is_not(
        sagemaker_env, tmp_path, tmp_path_factory, in_tmp, monkeypatch):
    from botocore.awsrequest import AWSResponse

    from aws_standins import on_sessions

    _, sm, bucket, role = sagemaker_env
    name = f"bincli-stays-{uuid.uuid4().hex[:8]}"
    args = _owned_args(tmp_path, tmp_path_factory, bucket, role, name)
    assert runner.invoke(app, ["deploy", *args]).exit_code == 0
    ignored = {"on": True}

    def accepted_but_not_done(**_):  # DeleteEndpoint says yes; the endpoint stays InService
        if ignored["on"]:
            return AWSResponse("http://standin", 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}
        return None

    on_sessions(monkeypatch, "before-call.sagemaker.DeleteEndpoint", accepted_but_not_done)
    quick = [*args, "--set", "sagemaker.delete_timeout_minutes=0.002"]
    result = runner.invoke(app, ["teardown", *quick])
    assert result.exit_code == 1
    assert f"endpoint {name} is still InService" in result.output and "not confirmed" in result.output
    assert State(tmp_path / "work").outputs("deploy")["endpoint"] == name  # teardown can be run again
    ignored["on"] = False
    again = runner.invoke(app, ["teardown", *quick])
    assert again.exit_code == 0, again.output
    assert not _exists(sm.describe_endpoint, EndpointName=name)


def test_deploy_refuses_a_model_bucket_in_another_region_before_creating_anything(sagemaker_env, tmp_path,
                                                                                   tmp_path_factory, in_tmp):
    import boto3

    s3, sm, _, role = sagemaker_env
    far = f"bincli-far-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=far, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    name = f"bincli-far-{uuid.uuid4().hex[:8]}"
    for record in ({"model": str(model_tar(tmp_path_factory.getbasetemp()))},  # uploaded by deploy
                   {"model_s3": f"s3://{far}/train/model.tar.gz"}):  # train's, in S3
        workdir = tmp_path / "work"
        State(workdir).record("train", record)
        result = runner.invoke(app, ["deploy", *_sagemaker_args(workdir, far, role), "--set", f"deploy.name={name}"])
        assert result.exit_code == 2, result.output
        assert f"s3://{far} is in eu-west-1 but sagemaker.region is us-east-1" in result.output
        assert State(workdir).outputs("deploy") is None
        assert not [m for m in sm.list_models()["Models"] if m["ModelName"].startswith(name)]
    assert s3.list_objects_v2(Bucket=far).get("KeyCount", 0) == 0  # nothing uploaded there either
