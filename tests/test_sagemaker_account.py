"""What a real AWS account would trip on in `bincli train` on backend sagemaker, checked on moto:
--weights-file as its own channel, where checkpoints and code land in S3, the job's tags, the
bucket's region, the execution role's hint, and a failed job's FailureReason in the error."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import Config, SageMakerConfig, TrainConfig
from bincli.errors import BincliError, ConfigError
from sagemaker_container import run_training_job

runner = CliRunner()
REGION = "us-east-1"


def _config(workdir: Path, role: str, epochs: int = 2, **train) -> Config:
    return Config(workdir=workdir, backend="sagemaker",
                  train=TrainConfig(epochs=epochs, batch_size=8, image_size=32, workers=0, **train),
                  sagemaker=SageMakerConfig(role_arn=role, region=REGION, train_instance_type="ml.m5.xlarge",
                                            poll_seconds=0.01))


def _start(cfg: Config, out: io.StringIO | None = None, **kwargs) -> dict:
    from bincli.steps.train import run_train

    return run_train(cfg, wait=False, console=Console(file=out or io.StringIO(), width=300), **kwargs)


def _checkpoints(sm, job_name: str) -> str:
    return sm.describe_training_job(TrainingJobName=job_name)["CheckpointConfig"]["S3Uri"]


def _end_job(job_name: str, status: str, reason: str) -> None:
    """What SageMaker does to a job that fails: moto never does it, so set it in moto's own state
    (the server runs in this process); describe_training_job then answers it as AWS would."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    job = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION].training_jobs[job_name]
    job.training_job_status = job.secondary_status = status
    job.failure_reason = reason


def _keys(s3, bucket: str) -> list[str]:
    return [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]


def test_a_job_is_tagged_and_puts_everything_under_the_prefix(uploaded):
    workdir, s3, sm, bucket, role = uploaded
    job_name = _start(_config(workdir, role))["job_name"]
    job = sm.describe_training_job(TrainingJobName=job_name)

    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]}
    from bincli.backends.sagemaker.session import resource_tags

    assert tags == {t["Key"]: t["Value"] for t in resource_tags(workdir, "train")}
    assert tags["bincli:step"] == "train" and tags["bincli:workspace"].startswith("work-")

    # The SDK's uploads (source dir, drivers) and every channel are under the configured prefix.
    keys = _keys(s3, bucket)
    assert keys and all(k.startswith("abid/") for k in keys), [k for k in keys if not k.startswith("abid/")]
    code = {k.split("/input/")[1].split("/")[0] for k in keys if k.startswith(f"abid/sagemaker/code/{job_name}/")}
    assert code == {"code", "sm_drivers"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert all(uri.startswith(f"s3://{bucket}/abid/") for uri in channels.values()), channels
    assert job["CheckpointConfig"]["S3Uri"].endswith("/")


@pytest.mark.slow
def test_fresh_then_a_plain_rerun_resumes_the_fresh_checkpoints(uploaded):
    workdir, _, sm, bucket, role = uploaded
    cfg = _config(workdir, role)
    first = _start(cfg)["job_name"]
    _end_job(first, "InProgress", None)  # still running: --fresh leaves it so, and says how to stop it
    out = io.StringIO()
    fresh = _start(cfg, out, fresh=True)["job_name"]
    assert f"training job {first} (started here before) is still running" in out.getvalue()
    assert f"stop-training-job --training-job-name {first}" in out.getvalue()
    old, new = _checkpoints(sm, first), _checkpoints(sm, fresh)
    assert old.startswith(f"s3://{bucket}/abid/sagemaker/checkpoints/") and old.endswith("/") and new.endswith("/")
    assert not new.startswith(old) and not old.startswith(new)  # neither job's prefix holds the other's

    # The fresh job fails (a spot interruption past max_wait): a plain rerun starts a new job, which
    # must resume the fresh job's checkpoints, not those from before --fresh.
    _end_job(fresh, "Failed", "capacity")
    rerun = _start(cfg)["job_name"]
    assert rerun not in (first, fresh) and _checkpoints(sm, rerun) == new

    # Other settings: their own location; back to these settings: this one again.
    other = _start(_config(workdir, role, epochs=3))["job_name"]
    assert _checkpoints(sm, other) not in (old, new)
    _end_job(rerun, "Stopped", "stopped by the user")
    again = _start(cfg)["job_name"]
    assert _checkpoints(sm, again) == new
    record = json.loads((workdir / "runs" / "train" / "sagemaker-job.json").read_text())
    assert record["job_name"] == again and record["checkpoints"] == new


def test_a_failed_jobs_reason_is_the_error(uploaded):
    from bincli.backends.sagemaker.training_job import job_failed

    workdir, _, sm, _, role = uploaded
    job_name = _start(_config(workdir, role))["job_name"]
    _end_job(job_name, "Failed", "AlgorithmError: ExecuteUserScriptError:\nExitCode 1\nerror: CUDA out of memory")
    error = job_failed(sm.describe_training_job(TrainingJobName=job_name))
    assert isinstance(error, BincliError)
    assert error.message == (f"training job {job_name} failed: AlgorithmError: ExecuteUserScriptError: ExitCode 1 "
                          "error: CUDA out of memory")


def test_a_bucket_in_another_region_stops_train_before_anything_is_created(uploaded, in_tmp):
    workdir, s3, sm, bucket, role = uploaded
    import boto3

    elsewhere = f"bincli-eu-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name="eu-west-1").create_bucket(
        Bucket=elsewhere, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    before = {j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]}
    keys = _keys(s3, bucket)
    result = runner.invoke(app, ["train", "-w", str(workdir), "--set", "backend=sagemaker",
                                 "--set", f"sagemaker.region={REGION}", "--set", f"sagemaker.role_arn={role}",
                                 "--set", f"sagemaker.bucket={elsewhere}"])
    assert result.exit_code == 2, result.output
    assert f"s3://{elsewhere} is in eu-west-1 but sagemaker.region is {REGION}" in result.output
    assert "--set sagemaker.region=eu-west-1" in result.output
    assert {j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]} == before
    assert _keys(s3, bucket) == keys and _keys(s3, elsewhere) == []


def test_no_role_says_how_to_make_one(in_tmp):
    from bincli.backends.sagemaker.session import role_arn

    with pytest.raises(ConfigError) as raised:
        role_arn(SageMakerConfig())
    assert "sagemaker.amazonaws.com" in raised.value.hint and "configs/sagemaker.yaml" in raised.value.hint
    # ... and the config it points at has the trust policy and the permissions.
    text = (Path(__file__).resolve().parents[1] / "configs" / "sagemaker.yaml").read_text()
    assert '"Service": "sagemaker.amazonaws.com"' in text and "iam:PassRole" in text and "s3:GetObject" in text


def test_the_entry_point_reads_the_weights_channel(tmp_path, monkeypatch):
    from bincli.core.train import InputDataError, get_args_parser, weights_file

    channel = tmp_path / "weights"
    channel.mkdir()
    (channel / "resnet18.pth").write_bytes(b"x")
    monkeypatch.setenv("SM_CHANNEL_WEIGHTS", str(channel))
    args = get_args_parser().parse_args([])
    assert weights_file(args.weights_file) == channel / "resnet18.pth"
    assert weights_file(get_args_parser().parse_args(["--weights-file", "/x/w.pth"]).weights_file) == Path("/x/w.pth")
    (channel / "other.pth").write_bytes(b"y")
    with pytest.raises(InputDataError, match="expected one weights file"):
        weights_file(args.weights_file)


@pytest.mark.slow
def test_weights_file_goes_as_its_own_channel_and_the_entry_point_loads_it(uploaded, tmp_path):
    import torch
    from torchvision.models import resnet18

    workdir, s3, sm, bucket, role = uploaded
    weights = tmp_path / "imagenet-resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    cfg = _config(workdir, role, epochs=1, pretrained=True, weights_file=weights)
    job_name = _start(cfg)["job_name"]

    job = sm.describe_training_job(TrainingJobName=job_name)
    assert "weights-file" not in job["HyperParameters"] and job["HyperParameters"]["pretrained"] == "true"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    uri = channels["weights"]
    assert uri.startswith(f"s3://{bucket}/abid/sagemaker/weights/") and uri.endswith("/")
    key = uri.removeprefix(f"s3://{bucket}/") + weights.name
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == weights.stat().st_size

    # The same weights again: the same channel, no second upload (the job attaches, too).
    assert _start(cfg)["job_name"] == job_name

    base = tmp_path / "opt_ml"
    result = run_training_job(sm, s3, job_name, base)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    # pretrained without internet: only the channel's file can have given the ImageNet weights.
    assert f"loaded ImageNet weights from {base}/input/data/weights/{weights.name}" in log, log[-4000:]
