"""`bincli tune` on backend sagemaker, against moto.

moto creates and describes tuning jobs (and marks them Completed at once) but runs no trial and
lacks two calls. `SageMakerStandIn` answers only those from this test, through botocore's
before-call event (registered on every new botocore session, as bincli makes its own):
  - ListTrainingJobsForHyperParameterTuningJob: the trials this test ran, each a real training
    job on moto run as its container would run it (the sagemaker-training toolkit, as tuning jobs
    run scripts), scored as SageMaker scores a trial: the LAST match of the objective's regex,
    read back from the tuning job, in the trial's output;
  - StopHyperParameterTuningJob: recorded, and the job then reads "Stopping".
It also overlays the tuning job's status in DescribeHyperParameterTuningJob while the test says
the search is still running (moto says Completed at once), and adds the BillableTimeInSeconds a test
gives a trial to DescribeTrainingJob (moto reports none). Everything else is moto's.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import Config, FloatRange, SageMakerConfig, TrainConfig, TuneConfig, UploadConfig
from bincli.data.upload import run_upload
from bincli.errors import BincliError, ConfigError, Interrupted
from bincli.state import State
from sagemaker_container import download_prefix, prepare, send_logs, upload_outputs
from train_blobs import make_split, record_split

runner = CliRunner()
SPACE = {"lr": FloatRange(low=1e-4, high=1e-2, log=True), "label_smoothing": FloatRange(low=0.01, high=0.1),
         "batch_size": [4, 8], "weight_decay": FloatRange(low=1e-6, high=1e-2, log=True)}


class SageMakerStandIn:
    """The SageMaker calls moto lacks, answered from this test (see the module docstring)."""

    def __init__(self):
        self.trials: dict[str, list[dict]] = {}
        self.statuses: dict[str, list[str]] = {}  # tuning job -> statuses describe reports, one per call
        self.stopped: list[str] = []
        self.interrupt = False
        self.billable: dict[str, int] = {}  # training job -> its BillableTimeInSeconds

    def install(self, monkeypatch) -> None:
        import botocore.handlers

        monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", [
            *botocore.handlers.BUILTIN_HANDLERS,
            ("before-call.sagemaker.ListTrainingJobsForHyperParameterTuningJob", self._list),
            ("before-call.sagemaker.StopHyperParameterTuningJob", self._stop),
            ("after-call.sagemaker.DescribeHyperParameterTuningJob", self._describe),
            ("after-call.sagemaker.DescribeTrainingJob", self._billed)])

    def _list(self, params, **_):  # params: the serialised request; its body the call's JSON arguments
        if self.interrupt:
            raise KeyboardInterrupt  # Ctrl-C, pressed while bincli polls
        trials = self.trials.get(json.loads(params["body"])["HyperParameterTuningJobName"], [])
        return SimpleNamespace(status_code=200, headers={}), {"TrainingJobSummaries": list(trials)}

    def _stop(self, params, **_):
        name = json.loads(params["body"])["HyperParameterTuningJobName"]
        self.stopped.append(name)
        self.statuses[name] = ["Stopping"]
        return SimpleNamespace(status_code=200, headers={}), {}

    def _billed(self, parsed, **_):
        if parsed.get("TrainingJobName") in self.billable:
            parsed["BillableTimeInSeconds"] = self.billable[parsed["TrainingJobName"]]

    def _describe(self, parsed, **_):
        queue = self.statuses.get(parsed.get("HyperParameterTuningJobName"))
        if queue:
            parsed["HyperParameterTuningJobStatus"] = queue.pop(0) if len(queue) > 1 else queue[0]


def create_trial_job(sm, tuning_job: str, number: int, params: dict[str, str]) -> tuple[dict, dict, dict]:
    """The training job SageMaker makes for a trial, from the tuning job's definition (on moto; not
    run): its description, the definition and the objective."""
    tuning = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
    d = tuning["TrainingJobDefinition"]
    objective = tuning["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]
    name = f"{tuning_job}-{number:03d}-{uuid.uuid4().hex[:8]}"
    spec = d["AlgorithmSpecification"]
    sm.create_training_job(
        TrainingJobName=name, RoleArn=d["RoleArn"], InputDataConfig=d["InputDataConfig"],
        HyperParameters={**d["StaticHyperParameters"], **params, "_tuning_objective_metric": objective["MetricName"]},
        AlgorithmSpecification={"TrainingImage": spec["TrainingImage"], "TrainingInputMode": "File",
                                "MetricDefinitions": spec["MetricDefinitions"]},
        OutputDataConfig=d["OutputDataConfig"], ResourceConfig=d["ResourceConfig"],
        StoppingCondition=d["StoppingCondition"], EnableManagedSpotTraining=d["EnableManagedSpotTraining"],
        **({"CheckpointConfig": d["CheckpointConfig"]} if "CheckpointConfig" in d else {}))
    return sm.describe_training_job(TrainingJobName=name), d, objective


def ended_trial(sm, tuning_job: str, number: int, status: str, value: float | None,
                stand_in: SageMakerStandIn) -> str:
    """A trial that ended `status` with `value` as its final objective (None: it reported none),
    as ListTrainingJobsForHyperParameterTuningJob lists it; nothing is run."""
    params = {"lr": "0.001", "label-smoothing": "0.05", "batch-size": "4", "weight-decay": "0.0001"}
    job, _, objective = create_trial_job(sm, tuning_job, number, params)
    now = datetime.now(UTC)
    summary = {"TrainingJobName": job["TrainingJobName"], "TrainingJobArn": job["TrainingJobArn"],
               "TuningJobName": tuning_job, "CreationTime": now, "TrainingStartTime": now, "TrainingEndTime": now,
               "TrainingJobStatus": status, "TunedHyperParameters": params}
    if value is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "Type": objective["Type"], "MetricName": objective["MetricName"], "Value": value}
    stand_in.trials.setdefault(tuning_job, []).append(summary)
    return job["TrainingJobName"]


def run_trial(sm, s3, tuning_job: str, number: int, params: dict[str, str], base: Path, stand_in: SageMakerStandIn
              ) -> str:
    """What SageMaker does for one trial: a training job from the tuning job's definition with the
    trial's hyperparameters, run by the sagemaker-training toolkit in a container-like /opt/ml
    (`base`), its checkpoint dir synced from and to the definition's CheckpointConfig if it has one
    (one for every trial, as on SageMaker), scored by the last regex match. Returns its output."""
    job, d, objective = create_trial_job(sm, tuning_job, number, params)
    name, spec = job["TrainingJobName"], d["AlgorithmSpecification"]
    prepare(job, s3, base)
    config = base / "input" / "config"
    host = socket.gethostname()  # the toolkit waits for the hosts it is told about to resolve
    resource = json.loads((config / "resourceconfig.json").read_text())
    resource.update(current_host=host, hosts=[host])
    resource["instance_groups"][0]["hosts"] = [host]
    (config / "resourceconfig.json").write_text(json.dumps(resource))
    hps = json.loads((config / "hyperparameters.json").read_text())
    source = base / "sourcedir.tar.gz"  # the one liberty: the toolkit gets the code from a local copy
    bucket, _, key = hps["sagemaker_submit_directory"].removeprefix("s3://").partition("/")
    s3.download_file(bucket, key, str(source))
    hps["sagemaker_submit_directory"] = str(source)
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    checkpoint_uri = d.get("CheckpointConfig", {}).get("S3Uri")
    if checkpoint_uri:
        download_prefix(s3, checkpoint_uri, base / "checkpoints")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AWS_"))}
    env.update(SAGEMAKER_BASE_DIR=str(base), TRAINING_JOB_NAME=name, PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    started = datetime.now(UTC)
    result = subprocess.run([str(Path(sys.executable).parent / "train")], cwd=base, env=env, capture_output=True,
                            text=True, timeout=300)
    output = result.stdout + result.stderr
    send_logs(name, output)
    cb, _, cprefix = (checkpoint_uri or "").removeprefix("s3://").partition("/")
    for path in sorted((base / "checkpoints").rglob("*")) if checkpoint_uri else []:
        if path.is_file():
            s3.upload_file(str(path), cb, cprefix + path.relative_to(base / "checkpoints").as_posix())
    summary = {"TrainingJobName": name, "TrainingJobArn": job["TrainingJobArn"], "TuningJobName": tuning_job,
               "CreationTime": started, "TrainingStartTime": started, "TrainingEndTime": datetime.now(UTC),
               "TrainingJobStatus": "Completed" if result.returncode == 0 else "Failed",
               "TunedHyperParameters": params}
    regex = next(m["Regex"] for m in spec["MetricDefinitions"] if m["Name"] == objective["MetricName"])
    found = re.findall(regex, output)
    if result.returncode == 0:
        upload_outputs(job, s3, base)
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
            "Type": objective["Type"], "MetricName": objective["MetricName"], "Value": float(found[-1])}
        summary["ObjectiveStatus"] = "Succeeded"
    else:
        summary["FailureReason"] = "AlgorithmError: see the log"
    stand_in.trials.setdefault(tuning_job, []).append(summary)
    return output


@pytest.fixture
def stand_in(monkeypatch):
    s = SageMakerStandIn()
    s.install(monkeypatch)
    return s


@pytest.fixture
def uploaded(sagemaker_env, tmp_path):
    """conftest's `uploaded`, with a smaller split (classes 0-2, no test set): every trial trains for real."""
    s3, sm, bucket, role = sagemaker_env
    workdir = tmp_path / "work"
    record_split(workdir, make_split(tmp_path / "split", {"train": 4, "valid": 2}, "0-2", size=32))
    run_upload(UploadConfig(s3_uri=f"s3://{bucket}/abid"), workdir, progress=False)
    return workdir, s3, sm, bucket, role


def _config(workdir: Path, role: str, **tune) -> Config:
    return Config(workdir=workdir, backend="sagemaker",
                  train=TrainConfig(batch_size=4, image_size=32, workers=0, cache=False, device="cpu"),
                  tune=TuneConfig(**{"max_jobs": 2, "max_parallel": 2, "epochs": 2, "search_space": SPACE, **tune}),
                  sagemaker=SageMakerConfig(role_arn=role, region="us-east-1", train_instance_type="ml.m5.xlarge",
                                            poll_seconds=0.01))


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _tuning_jobs(sm) -> list[str]:
    return sorted(j["HyperParameterTuningJobName"]
                  for j in sm.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"])


def test_the_tuning_job_request_and_a_rerun_attaches(uploaded, stand_in):
    from bincli.steps.tune import run_tune

    workdir, s3, sm, bucket, role = uploaded
    before = _tuning_jobs(sm)
    started = run_tune(_config(workdir, role), fixed={"weight_decay"}, console=_quiet(), wait=False)
    name = started["tuning_job"]
    assert started["waiting"] is False and _tuning_jobs(sm) == sorted([*before, name])
    # Recorded before any waiting: the job file and state.
    record = json.loads((workdir / "tune" / "sagemaker-tuning-job.json").read_text())
    assert record["latest"] == name and [r["job_name"] for r in record["jobs"].values()] == [name]
    assert State(workdir).outputs("tune")["tuning_job"] == name

    job = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    config = job["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian" and config["TrainingJobEarlyStoppingType"] == "Auto"  # 2 epochs
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "best_valid_loss"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2}
    assert config["RandomSeed"] == 0  # tune.seed's default, seeded as the local search is (the SDK dropped 0)
    ranges = config["ParameterRanges"]
    continuous = {r["Name"]: (float(r["MinValue"]), float(r["MaxValue"]), r["ScalingType"])
                  for r in ranges["ContinuousParameterRanges"]}
    assert continuous == {"lr": (1e-4, 1e-2, "Logarithmic"), "label-smoothing": (0.01, 0.1, "Linear")}
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["4", "8"]}]
    assert not ranges.get("IntegerParameterRanges")

    d = job["TrainingJobDefinition"]
    static = d["StaticHyperParameters"]
    # As `bincli train` sends them (strings; false, not Python's False), less the searched ones;
    # weight_decay was fixed by a flag, so it is static.
    assert {k: static[k] for k in ("epochs", "classes", "pretrained", "image-size", "weight-decay")} == {
        "epochs": "2", "classes": "0-2", "pretrained": "false", "image-size": "32", "weight-decay": "0.0001"}
    assert not {"lr", "batch-size", "label-smoothing"} & set(static)
    assert static["sagemaker_program"] == "train.py"
    source_bucket, _, key = static["sagemaker_submit_directory"].removeprefix("s3://").partition("/")
    assert (source_bucket, key.split("/")[:3]) == (bucket, ["abid", "sagemaker", "code"])  # under the prefix
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=source_bucket, Key=key)["Body"].read())) as tar:
        assert {"train.py", "bincli/core/train.py", "bincli/core/contract.py"} <= set(tar.getnames())  # the core bundle
    from bincli.core.contract import metric_definitions

    assert d["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert {"Name": "best_valid_loss", "Regex": r"\bbest_valid_loss=([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"} in \
        d["AlgorithmSpecification"]["MetricDefinitions"]
    upload = State(workdir).outputs("upload")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in d["InputDataConfig"]}
    assert {k: channels[k] for k in ("train", "valid")} == {k: upload["channels"][k] + "/" for k in ("train", "valid")}
    assert "test" not in channels  # the split has no test set; train sends none either
    # No checkpoints in S3 for trials: one CheckpointConfig for all of them would be copied down,
    # whole, to every trial as it starts.
    assert "CheckpointConfig" not in d
    assert d["EnableManagedSpotTraining"] is True and d["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    tags = sm.list_tags(ResourceArn=job["HyperParameterTuningJobArn"])["Tags"]
    assert {"Key": "bincli:step", "Value": "tune"} in tags and any(t["Key"] == "bincli:workspace" for t in tags)

    with pytest.raises(ConfigError, match=r"^tune.seed: SageMaker's RandomSeed is 0 or more, got -1$"):
        run_tune(_config(workdir, role, seed=-1), console=_quiet(), wait=False)  # refused before it is created
    assert _tuning_jobs(sm) == sorted([*before, name])
    # Same settings: the same job, not a second one. Other settings: a new one.
    again = run_tune(_config(workdir, role), fixed={"weight_decay"}, console=_quiet(), wait=False)
    assert again["tuning_job"] == name and _tuning_jobs(sm) == sorted([*before, name])
    hyperband = run_tune(_config(workdir, role, strategy="hyperband", epochs=3), console=_quiet(), wait=False)
    other = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=hyperband["tuning_job"])
    config = other["HyperParameterTuningJobConfig"]
    assert hyperband["tuning_job"] != name and config["Strategy"] == "Hyperband"
    assert config["TrainingJobEarlyStoppingType"] == "Off"  # Hyperband stops trials itself
    assert config["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 3}}
    single = run_tune(_config(workdir, role, strategy="random", epochs=1, objective="valid_acc"), console=_quiet(),
                      wait=False)
    config = sm.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=single["tuning_job"])["HyperParameterTuningJobConfig"]
    assert (config["Strategy"], config["TrainingJobEarlyStoppingType"]) == ("Random", "Off")  # 1 epoch: nothing to stop
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "best_valid_acc"}


@pytest.mark.slow
def test_trials_run_score_as_the_local_tuner_and_feed_train_from_tune(uploaded, stand_in, tmp_path, in_tmp):
    from bincli.backends.local.tuner import _Objective
    from bincli.core.contract import parse_epoch_line
    from bincli.steps.tune import run_tune

    workdir, s3, sm, _, role = uploaded
    cfg = _config(workdir, role)
    name = run_tune(cfg, console=_quiet(), wait=False)["tuning_job"]
    outputs = [run_trial(sm, s3, name, i, params, tmp_path / f"opt_ml_{i}", stand_in) for i, params in enumerate((
        {"lr": "0.003", "label-smoothing": "0.05", "batch-size": "4", "weight-decay": "0.0001"},
        {"lr": "0.0005", "label-smoothing": "0.02", "batch-size": "8", "weight-decay": "0.001"}))]
    trials = stand_in.trials[name]
    assert [t["TrainingJobStatus"] for t in trials] == ["Completed", "Completed"], outputs[-1][-3000:]

    # Each trial started with no one else's checkpoints (none are kept in S3 for trials), and
    # checkpointed as it went in its own container only.
    assert sorted(p.name for p in (tmp_path / "opt_ml_1" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert "resuming from" not in outputs[1] and "nothing to resume" not in outputs[1]

    # One score on both tuners: SageMaker's (last regex match) is the local tuner's trial value
    # for the same output, and it is the best epoch's, not the last epoch's, valid loss.
    class Trial:
        def report(self, value, step):
            pass

        def should_prune(self):
            return False

    local = _Objective(None, cfg.tune, {}, cfg.train, {}, tmp_path, tmp_path, console=None)
    for trial, output in zip(trials, outputs, strict=True):
        best, scores = [], []
        reader = local._reader(Trial(), best, scores)
        for line in output.splitlines():
            reader(line)
        epochs = [parse_epoch_line(line) for line in output.splitlines() if parse_epoch_line(line)]
        assert len(epochs) == 2 and scores
        assert trial["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == scores[-1]
        assert scores[-1] == pytest.approx(min(e["valid_loss"] for e in epochs), abs=1e-6)

    # The rerun attaches, waits with a live view, writes the leaderboard and records the best.
    stand_in.statuses[name] = ["InProgress", "InProgress", "Completed"]  # the attach check reads one
    err = io.StringIO()
    result = run_tune(cfg, console=Console(file=err, width=300))
    shown = err.getvalue()
    assert f"attaching to tuning job {name}" in shown
    assert f"tuning job {name}: InProgress; 2 completed, 0 running, 0 failed, 0 stopped; best so far" in shown
    assert f"tuning job {name}: Completed;" in shown
    values = [t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in trials]
    best = values.index(min(values))
    assert (result["trials"], result["complete"], result["best_trial"]) == (2, 2, best)
    assert result["best_value"] == min(values) and result["best_training_job"] == trials[best]["TrainingJobName"]
    with open(workdir / "tune" / "tune-results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    local_columns = ["trial", "state", "value", "duration_s", "lr", "weight_decay", "batch_size", "label_smoothing"]
    assert list(rows[0])[:len(local_columns)] == local_columns and list(rows[0])[len(local_columns):] == [
        "training_job", "billable_s", "cost_usd"]
    assert [(r["trial"], r["state"], r["training_job"]) for r in rows] == [
        (str(i), "complete", t["TrainingJobName"]) for i, t in enumerate(trials)]
    assert float(rows[1]["value"]) == pytest.approx(values[1], abs=1e-6) and rows[1]["batch_size"] == "8"
    # Recorded as the local tuner records it: train config names, typed values.
    recorded = State(workdir).outputs("tune")
    assert recorded["best_hyperparameters"] == result["best_hyperparameters"]
    assert recorded["best_hyperparameters"] == (
        {"lr": 0.003, "weight_decay": 0.0001, "batch_size": 4, "label_smoothing": 0.05} if best == 0 else
        {"lr": 0.0005, "weight_decay": 0.001, "batch_size": 8, "label_smoothing": 0.02})

    # The SageMaker result trains on backend local ...
    trained = runner.invoke(app, ["train", "-w", str(workdir), "--from-tune", "--epochs", "1", "--image-size", "32",
                                  "--workers", "0", "--no-cache", "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    snapshot = yaml.safe_load((workdir / "runs" / "train" / "config.yaml").read_text())
    assert snapshot["from_tune"] is True
    assert snapshot["hyperparameters"]["lr"] == recorded["best_hyperparameters"]["lr"]
    assert snapshot["hyperparameters"]["batch-size"] == recorded["best_hyperparameters"]["batch_size"]

    # ... and a local tuner's result trains on backend sagemaker.
    from bincli.steps.train import run_train

    State(workdir).record("tune", {"best_hyperparameters": {"lr": 0.002, "batch_size": 8, "weight_decay": 0.0003}})
    job_name = run_train(cfg, from_tune=True, wait=False, console=_quiet())["job_name"]
    hps = sm.describe_training_job(TrainingJobName=job_name)["HyperParameters"]
    assert (hps["lr"], hps["batch-size"], hps["weight-decay"]) == ("0.002", "8", "0.0003")


def test_trials_stopped_by_hyperband_or_early_stopping_are_ranked(uploaded, stand_in):
    from bincli.steps.tune import run_tune

    workdir, _, sm, _, role = uploaded
    cfg = _config(workdir, role, strategy="hyperband", epochs=3, max_jobs=3)
    name = run_tune(cfg, console=_quiet(), wait=False)["tuning_job"]
    ended_trial(sm, name, 0, "Completed", 0.9, stand_in)
    stopped = ended_trial(sm, name, 1, "Stopped", 0.5, stand_in)  # stopped by Hyperband, with a score
    ended_trial(sm, name, 2, "Stopped", None, stand_in)  # stopped before it reported any
    result = run_tune(cfg, console=_quiet())  # attaches (moto: Completed) and ranks
    assert (result["best_trial"], result["best_value"], result["best_training_job"]) == (1, 0.5, stopped)
    assert (result["complete"], result["pruned"]) == (1, 2)
    assert State(workdir).outputs("tune")["best_training_job"] == stopped


def test_a_tuning_jobs_cost_is_its_trials_billed_time(uploaded, stand_in):
    from bincli.steps.tune import run_tune

    workdir, _, sm, _, role = uploaded
    cfg = _config(workdir, role, max_jobs=3)
    name = run_tune(cfg, console=_quiet(), wait=False)["tuning_job"]
    trials = [ended_trial(sm, name, 0, "Completed", 0.9, stand_in), ended_trial(sm, name, 1, "Stopped", 0.7, stand_in),
              ended_trial(sm, name, 2, "Failed", None, stand_in)]
    stand_in.billable.update(zip(trials, (600, 300, 60), strict=True))
    err = io.StringIO()
    result = run_tune(cfg, console=Console(file=err, width=300))
    # 960 s of ml.m5.xlarge at $0.23/h (bincli's table), every trial's, the failed one's too.
    price_from = "on-demand list price, us-east-1, 2025; sagemaker.prices overrides"
    assert result["billable_seconds"] == 960
    assert result["cost"] == State(workdir).outputs("tune")["cost"] == {
        "jobs": 3, "billable_seconds": 960, "usd": round(960 * 0.23 / 3600, 4), "price_from": price_from}
    assert f"tuning job {name} (3 trials): billed 960 s: $0.061 ({price_from})" in err.getvalue()
    with open(workdir / "tune" / "tune-results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["billable_s"], r["cost_usd"]) for r in rows] == [("600", "0.0383"), ("300", "0.0192"), ("60", "0.0038")]


def test_ctrl_c_leaves_the_job_running_then_stop_stops_it(uploaded, stand_in, in_tmp):
    from bincli.steps.tune import run_tune

    workdir, _, _, _, role = uploaded
    cfg = _config(workdir, role)
    stand_in.interrupt = True
    with pytest.raises(Interrupted) as caught:
        run_tune(cfg, console=_quiet())
    name = json.loads((workdir / "tune" / "sagemaker-tuning-job.json").read_text())["latest"]
    assert f"tuning job {name} keeps running" in str(caught.value)
    assert "'bincli tune' again with the same settings attaches" in caught.value.hint
    assert State(workdir).outputs("tune")["tuning_job"] == name and not stand_in.stopped

    stand_in.interrupt = False
    stand_in.statuses[name] = ["InProgress"]
    args = ["tune", "-w", str(workdir), "--set", "backend=sagemaker", "--set", "sagemaker.region=us-east-1",
            "--set", f"sagemaker.role_arn={role}"]
    result = runner.invoke(app, [*args, "--stop", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"backend": "sagemaker", "tuning_job": name, "status": "Stopping"}
    assert stand_in.stopped == [name]
    # --no-wait from the command line: started (other settings than cfg: a new job), not waited for;
    # the job of cfg's settings stays on record beside it.
    result = runner.invoke(app, [*args, "--no-wait", "--json"])
    assert result.exit_code == 0, result.output
    started = json.loads(result.stdout)
    assert started["waiting"] is False and started["tuning_job"] != name and "started tuning job" in result.stderr
    # A stopped search with nothing finished: one clear error, the leaderboard still written.
    stand_in.statuses[name] = ["Stopped"]
    with pytest.raises(BincliError, match=f"tuning job {name} stopped with no finished trial \\(0 tried\\)"):
        run_tune(cfg, console=_quiet())  # same settings: attaches to the stopped job, starts none
    assert len(json.loads((workdir / "tune" / "sagemaker-tuning-job.json").read_text())["jobs"]) == 2
    assert (workdir / "tune" / "tune-results.csv").read_text().startswith("trial,state,value,duration_s,")


def test_stop_without_a_recorded_job_says_so(sagemaker_env, tmp_path, in_tmp):
    result = runner.invoke(app, ["tune", "-w", str(tmp_path / "w"), "--stop", "--set", "backend=sagemaker",
                                 "--set", "sagemaker.region=us-east-1"])
    assert result.exit_code == 1
    assert "no SageMaker tuning job recorded in" in result.output and "'bincli tune' starts one" in result.output



def test_the_best_so_far_line_and_per_job_checkpoints(tmp_path, monkeypatch):
    """The score line's one format (contract) and --checkpoint-per-job's folder (entry point)."""
    from bincli.core.contract import format_best_line, metric_definitions, parse_best_line
    from bincli.core.train import Dirs, get_args_parser

    history = [{"valid_loss": 0.9, "valid_acc": 0.5}, {"valid_loss": 1.2, "valid_acc": 0.4}]
    line = format_best_line(history)
    assert line == "best_valid_loss=0.900000 best_valid_acc=0.500000"
    assert parse_best_line(line) == {"best_valid_loss": 0.9, "best_valid_acc": 0.5}
    assert format_best_line([{"train_loss": 1.0}]) is None  # no valid channel: no score line
    regex = {m["Name"]: m["Regex"] for m in metric_definitions()}
    assert not re.search(regex["valid_loss"], line)  # valid_loss= never matches inside best_valid_loss=
    assert re.findall(regex["best_valid_loss"], f"epoch=2 valid_loss=1.2\n{line}") == ["0.900000"]

    args = get_args_parser().parse_args(["--model-dir", str(tmp_path / "model"), "--checkpoint-per-job", "true"])
    monkeypatch.setenv("TRAINING_JOB_NAME", "bincli-tune-1-002-abcd")
    assert Dirs.from_args(args).checkpoints == tmp_path / "checkpoints" / "bincli-tune-1-002-abcd"
    monkeypatch.delenv("TRAINING_JOB_NAME")
    from bincli.core.data import InputDataError

    with pytest.raises(InputDataError, match="--checkpoint-per-job needs TRAINING_JOB_NAME"):
        Dirs.from_args(args)
    plain = get_args_parser().parse_args(["--model-dir", str(tmp_path / "model")])
    assert Dirs.from_args(plain).checkpoints == tmp_path / "checkpoints"  # `bincli train`: one folder to resume
