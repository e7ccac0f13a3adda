"""`bincli deploy` / `teardown` on backend sagemaker, against a moto server (SageMaker + S3).

moto answers invoke_endpoint with a 500 for any JPEG body, so predicting through a SageMaker
endpoint is not tested here; the same client path is tested against bincli's local endpoint."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bincli.cli import app
from bincli.state import State
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
    assert len(sm.list_models()["Models"]) == 2  # nothing more was created

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
