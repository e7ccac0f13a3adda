"""`bincli train` on backend sagemaker, against moto. moto records the job bincli creates but runs
nothing, so the test runs it the way its container would (tests/sagemaker_container.py: the SDK's
own drivers, our entry point, outputs uploaded where SageMaker puts them); then `bincli train`
attaches to the job, fetches its artifacts, and reports and packages as the local backend does."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import Config, SageMakerConfig, TrainConfig, UploadConfig
from bincli.data.upload import run_upload
from bincli.errors import ConfigError, StateError
from bincli.state import State
from sagemaker_container import run_training_job
from train_blobs import make_split, record_split

runner = CliRunner()


def _config(workdir: Path, role: str | None, epochs: int = 2) -> Config:
    return Config(workdir=workdir, backend="sagemaker",
                  train=TrainConfig(epochs=epochs, batch_size=8, image_size=32, workers=0),
                  sagemaker=SageMakerConfig(role_arn=role, region="us-east-1", train_instance_type="ml.m5.xlarge",
                                            poll_seconds=0.01))


def _jobs(sm) -> list[str]:
    return sorted(j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"])


@pytest.mark.slow
def test_train_runs_as_a_training_job_then_attaches_packages_and_deploys(uploaded, tmp_path, in_tmp, monkeypatch):
    from bincli.steps.train import run_train

    _Billed(monkeypatch, billable=900, trained=900)
    workdir, s3, sm, bucket, role = uploaded
    before = _jobs(sm)
    cfg = _config(workdir, role)
    started = run_train(cfg, wait=False, console=Console(file=io.StringIO()))
    job_name = started["job_name"]
    assert _jobs(sm) == sorted([*before, job_name]) and started["waiting"] is False

    # The request SageMaker got: bincli's hyperparameters as strings, channels from the upload,
    # spot with S3 checkpoints and a wait limit.
    job = sm.describe_training_job(TrainingJobName=job_name)
    hps = job["HyperParameters"]
    assert (hps["classes"], hps["epochs"], hps["pretrained"], hps["batch-size"]) == ("0-5", "2", "false", "8")
    assert "weights-file" not in hps
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    upload = State(workdir).outputs("upload")
    assert {name: channels[name] for name in ("train", "valid", "test")} == {
        name: upload["channels"][name] + "/" for name in ("train", "valid", "test")}
    assert job["EnableManagedSpotTraining"] is True
    assert job["CheckpointConfig"]["S3Uri"].startswith(f"s3://{bucket}/abid/sagemaker/checkpoints/")
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 120 * 60, "MaxWaitTimeInSeconds": 240 * 60}
    # (moto answers a fixed MetricDefinitions list whatever was sent, so the regexes are tested in
    # test_core_train.py against real entry-point output instead.)
    assert job["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"

    result = run_training_job(sm, s3, job_name, tmp_path / "opt_ml")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    out = io.StringIO()
    done = run_train(cfg, console=Console(file=out, width=200))
    shown = out.getvalue()
    assert f"attaching to training job {job_name}" in shown
    # The job's epoch lines, followed in its CloudWatch logs, shown as a local run shows them;
    # the SDK driver's environment dump is not.
    assert "epoch 1/2  |  train loss" in shown and "epoch 2/2  |  train loss" in shown, shown
    assert "SM_HPS" not in shown
    assert _jobs(sm) == sorted([*before, job_name])  # attached: no second job
    assert done["job_name"] == job_name and done["backend"] == "sagemaker"
    with tarfile.open(done["model"]) as tar:  # packaged for SageMaker serving: weights, info and code/
        names = set(tar.getnames())
    assert {"model.pth", "model_info.json", "code/inference.py"} <= names
    model_key = done["model_s3"].removeprefix(f"s3://{bucket}/")
    assert s3.head_object(Bucket=bucket, Key=model_key)["ContentLength"] == Path(done["model"]).stat().st_size
    metrics = json.loads((workdir / "report" / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and len(metrics["confusion_matrix"]) == 6
    assert State(workdir).outputs("train")["job_name"] == job_name
    # What it cost, in the result (--json) and the record: 900 s of one ml.m5.xlarge at $0.23/h.
    assert done["cost"] == State(workdir).outputs("train")["cost"] == {
        "billable_seconds": 900, "training_seconds": 900, "instance_type": "ml.m5.xlarge", "instance_count": 1,
        "usd_per_hour": 0.23, "usd": 0.0575, "price_from": "on-demand list price, us-east-1, 2025; sagemaker.prices "
        "overrides"}
    assert f"training job {job_name}: billed 900 s on 1 x ml.m5.xlarge: $0.058 at $0.23/h" in shown

    # deploy serves the model train put in S3 (no second upload); teardown removes it.
    args = ["-w", str(workdir), "--set", "backend=sagemaker", "--set", "sagemaker.region=us-east-1",
            "--set", f"sagemaker.role_arn={role}", "--set", "sagemaker.poll_seconds=0.01"]
    deployed = runner.invoke(app, ["deploy", *args, "--json"])
    assert deployed.exit_code == 0, deployed.output
    model_name = json.loads(deployed.stdout)["models"][0]
    assert sm.describe_model(ModelName=model_name)["PrimaryContainer"]["ModelDataUrl"] == done["model_s3"]
    assert runner.invoke(app, ["teardown", *args]).exit_code == 0
    assert model_name not in {m["ModelName"] for m in sm.list_models()["Models"]}

    # Other settings: a new job, not the old one.
    again = run_train(_config(workdir, role, epochs=3), wait=False,
                      console=Console(file=io.StringIO()))
    assert again["job_name"] != job_name and len(_jobs(sm)) == len(before) + 2


def test_sagemaker_train_needs_the_split_in_s3(sagemaker_env, tmp_path):
    from bincli.steps.train import run_train

    workdir = tmp_path / "work"
    record_split(workdir, make_split(tmp_path / "split", {"train": 2, "valid": 1, "test": 1}, "0-5", size=32))
    run_upload(UploadConfig(), workdir)  # backend local: nothing goes to S3
    with pytest.raises(StateError, match=r"upload --s3-uri"):
        run_train(_config(workdir, sagemaker_env[3]))


def test_sagemaker_train_needs_a_role(uploaded, in_tmp):
    workdir, *_ = uploaded
    result = runner.invoke(app, ["train", "-w", str(workdir), "--set", "backend=sagemaker",
                                 "--set", "sagemaker.region=us-east-1"])
    assert result.exit_code == 2, result.output
    assert "sagemaker.role_arn: required" in result.output
    with pytest.raises(ConfigError):
        from bincli.backends.sagemaker.session import role_arn

        role_arn(SageMakerConfig())


def test_no_wait_is_for_the_sagemaker_backend_only(in_tmp):
    result = runner.invoke(app, ["train", "--no-wait"])
    assert result.exit_code == 2
    assert "--no-wait: not available on backend local (available on: sagemaker)" in result.output


class _Billed:
    """SageMaker's billed and trained seconds, added to moto's DescribeTrainingJob replies for ended
    jobs (moto runs nothing and reports neither): botocore's after-call event, on every session."""

    def __init__(self, monkeypatch, billable: int = 1800, trained: int = 3600):
        import botocore.handlers

        self.seconds = {"BillableTimeInSeconds": billable, "TrainingTimeInSeconds": trained}
        monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", [
            *botocore.handlers.BUILTIN_HANDLERS, ("after-call.sagemaker.DescribeTrainingJob", self._describe)])

    def _describe(self, parsed, **_):
        if parsed.get("TrainingJobStatus") in ("Completed", "Failed", "Stopped"):
            parsed.update(self.seconds)


def test_a_job_that_left_no_model_is_one_clear_error_and_nothing_recorded(uploaded, in_tmp, monkeypatch):
    """moto marks the job Completed without running it: no model.tar.gz was ever uploaded."""
    _Billed(monkeypatch, billable=1800, trained=3600)
    workdir, _, _, bucket, role = uploaded
    args = ["train", "-w", str(workdir), "--set", "backend=sagemaker", "--set", "sagemaker.region=us-east-1",
            "--set", f"sagemaker.role_arn={role}", "--set", "sagemaker.poll_seconds=0.01", "--epochs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert f"downloading s3://{bucket}/abid/sagemaker/jobs/" in result.output and "model.tar.gz" in result.output
    assert "sagemaker.config" not in result.output  # the SDK's INFO chatter is not shown
    # What it billed is said all the same (ml.g4dn.xlarge, the default: $0.736/h in bincli's table).
    assert re.search(r"training job \S+: billed 1800 s on 1 x ml.g4dn.xlarge \(of 3600 s trained: spot\): "
                     r"\$0.368 at \$0.736/h \(on-demand list price, us-east-1, ", " ".join(result.output.split()))
    assert State(workdir).outputs("train") is None
    assert not (workdir / "model" / "model.tar.gz").exists()


class _Gone:
    """Answers DescribeTrainingJob for `name` as SageMaker answers it for a deleted job (moto has
    no way to delete one): botocore's before-call event, on every session bincli makes."""

    def __init__(self, monkeypatch, name: str, code: str):
        import botocore.handlers

        self.name, self.code, self.asked = name, code, 0
        monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", [
            *botocore.handlers.BUILTIN_HANDLERS, ("before-call.sagemaker.DescribeTrainingJob", self._describe)])

    def _describe(self, params, **_):
        from types import SimpleNamespace

        if json.loads(params["body"])["TrainingJobName"] != self.name:
            return None
        self.asked += 1
        return SimpleNamespace(status_code=400, headers={}), {
            "Error": {"Code": self.code, "Message": "Requested resource not found."}}


def test_a_deleted_job_is_gone_and_train_starts_a_new_one(uploaded, monkeypatch):
    from bincli.steps.train import run_train

    workdir, _, sm, _, role = uploaded
    cfg = _config(workdir, role)
    first = run_train(cfg, wait=False, console=Console(file=io.StringIO()))["job_name"]
    # The recorded job was deleted since: SageMaker's real reply (code ResourceNotFound was understood already).
    gone = _Gone(monkeypatch, first, "ValidationException")
    second = run_train(cfg, wait=False, console=Console(file=io.StringIO()))["job_name"]
    assert gone.asked and second != first and second in _jobs(sm)


def test_more_processes_than_gpus_is_refused_before_a_job_exists(uploaded):
    from bincli.steps.train import run_train

    workdir, _, sm, _, role = uploaded
    before = _jobs(sm)
    cfg = _config(workdir, role)
    cfg.train.nproc_per_node = 2
    cfg.sagemaker.train_instance_type = "ml.g4dn.xlarge"  # one T4
    with pytest.raises(ConfigError) as caught:
        run_train(cfg, wait=False, console=Console(file=io.StringIO()))
    assert caught.value.message == ("train.nproc_per_node: 2 processes per node, but ml.g4dn.xlarge has 1 GPU "
                                    "(NCCL takes one process per GPU); expected at most 1")
    assert _jobs(sm) == before
    # Within the GPUs, and on a CPU instance (gloo), the job is created with that many processes.
    for instance_type, nproc in (("ml.g4dn.12xlarge", 4), ("ml.m5.xlarge", 2)):
        cfg.sagemaker.train_instance_type, cfg.train.nproc_per_node = instance_type, nproc
        name = run_train(cfg, wait=False, console=Console(file=io.StringIO()))["job_name"]
        assert sm.describe_training_job(TrainingJobName=name)["ResourceConfig"]["InstanceType"] == instance_type


@pytest.mark.parametrize(("instance_type", "gpus"), [
    ("ml.g4dn.xlarge", 1), ("ml.p4d.24xlarge", 8), ("ml.g6.12xlarge", 4), ("ml.m5.xlarge", 0), ("ml.c5.2xlarge", 0),
    ("ml.trn1.2xlarge", None),  # neither the SDK's table nor bincli's: not checked
])
def test_gpu_counts(instance_type, gpus):
    from bincli.backends.sagemaker.instances import gpu_count

    assert gpu_count(instance_type, "us-east-1") == gpus
