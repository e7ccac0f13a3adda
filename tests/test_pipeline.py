"""`bincli pipeline`: the plan (what runs, what is skipped, why), and whole runs on generated data through
every step: downloaded from a real S3 server (moto), trained, tuned, served by the real local endpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import load_config
from bincli.errors import ConfigError, UsageError
from bincli.state import State
from bincli.steps.pipeline import STEPS, plan, run_pipeline
from helpers import make_bin_image, write_metadata

runner = CliRunner()
ENDPOINT = "bincli-pipeline-test"


def _cfg(path: Path | None = None, **overrides):
    return load_config(path, overrides, env={}).config


def _actions(planned) -> dict[str, str]:
    return {p.step: p.action for p in planned}


def _statuses(result) -> dict[str, str]:
    return {row["step"]: row["status"] for row in result["steps"]}


# ---------------------------------------------------------------- the plan
def _record_all(cfg) -> None:
    """The records a finished pipeline leaves, made with `cfg` (no step runs)."""
    state = State(cfg.workdir)
    state.record("download", {"data_dir": "d", "images": 9}, cfg.download.model_dump(mode="json"))
    state.record("inspect", {"images": 9}, cfg.inspect.model_dump(mode="json"))
    state.record("split", {"manifests_dir": "s", "train": 6, "valid": 1, "test": 2}, cfg.split.model_dump(mode="json"))
    state.record("tune", {"best_hyperparameters": {"lr": 0.01}}, {**cfg.tune.model_dump(mode="json"), "fixed": []})
    state.record("train", {"model": "m.tar.gz", "accuracy": 0.5}, cfg.train.model_dump(mode="json"))
    state.record("deploy", {"name": ENDPOINT}, cfg.deploy.model_dump(mode="json"))
    state.record("evaluate", {"accuracy": 0.5}, {"split": "test", "concurrency": 8})


def test_a_fresh_workspace_runs_everything_and_leaves_out_what_is_not_configured(tmp_path):
    cfg = _cfg(workdir=tmp_path / "w", **{"split.input": tmp_path / "abid", "tune.max_jobs": 0})
    planned = plan(cfg)
    assert [p.step for p in planned] == list(STEPS)
    assert _actions(planned) == {"download": "not configured", "inspect": "run", "split": "run",
                                 "upload": "not configured", "tune": "not configured", "train": "run",
                                 "deploy": "run", "evaluate": "run"}
    reasons = {p.step: p.reasons for p in planned}
    assert reasons["tune"] == ["tune.max_jobs: 0"]
    assert "split.input is the data" in reasons["download"][0] and "upload.s3_uri" in reasons["upload"][0]
    assert reasons["train"] == ["not run yet"]
    assert not (tmp_path / "w").exists()  # planning writes nothing


def test_nothing_to_download_and_no_folder_fails_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="nothing to split") as caught:
        plan(_cfg(workdir=tmp_path / "w"))
    assert "split.input" in caught.value.hint


def test_a_changed_setting_reruns_that_step_and_every_step_after_it(tmp_path):
    cfg = _cfg(workdir=tmp_path / "w", **{"download.ids": ["00001"], "upload.s3_uri": "s3://bucket/abid"})
    _record_all(cfg)
    State(cfg.workdir).record("upload", {"uri": "s3://bucket/abid"}, cfg.upload.model_dump(mode="json"))
    for step in ("tune", "train", "deploy", "evaluate"):  # as if made after that upload
        record = State(cfg.workdir).step(step)
        State(cfg.workdir).record(step, record["outputs"], record["config"])
    assert set(_actions(plan(cfg, check_endpoint=False)).values()) == {"skip"}

    changed = _cfg(workdir=tmp_path / "w", **{"download.ids": ["00001"], "upload.s3_uri": "s3://bucket/abid",
                                              "train.epochs": 11, "train.workers": 7})
    planned = {p.step: p for p in plan(changed, check_endpoint=False)}
    assert {s: p.action for s, p in planned.items()} == {**dict.fromkeys(STEPS[:5], "skip"),
                                                         **dict.fromkeys(STEPS[5:], "run")}
    assert planned["train"].reasons == ["train.epochs: 10 -> 11"]  # workers: how, not what: no reason
    assert planned["deploy"].reasons == ["train runs before it"]

    # A new split makes everything after it stale; inspect only reports: its rerun reruns nothing.
    State(cfg.workdir).record("split", {"manifests_dir": "other"}, cfg.split.model_dump(mode="json"))
    planned = {p.step: p for p in plan(cfg, check_endpoint=False)}
    assert [s for s, p in planned.items() if p.action == "run"] == ["upload", "tune", "train", "deploy", "evaluate"]
    assert planned["upload"].reasons[0].startswith("split changed since")
    more_thumbnails = _cfg(workdir=tmp_path / "w", **{"download.ids": ["00001"], "upload.s3_uri": "s3://bucket/abid",
                                                      "inspect.per_class": 3})
    actions = _actions(plan(more_thumbnails, check_endpoint=False))
    assert (actions["inspect"], actions["split"]) == ("run", "skip")


def test_force_from_to_and_teardown(tmp_path):
    cfg = _cfg(workdir=tmp_path / "w", **{"download.ids": ["00001"]})
    _record_all(cfg)
    planned = plan(cfg, force=["split"], check_endpoint=False)
    assert [p.step for p in planned if p.action == "run"] == ["split", "tune", "train", "deploy", "evaluate"]
    assert planned[2].reasons == ["--force"]

    ranged = {p.step: p for p in plan(cfg, start="tune", stop="deploy", force=["split", "tune"], check_endpoint=False)}
    assert ranged["split"].action == "skip" and ranged["split"].reasons == ["before --from tune"]
    assert [s for s, p in ranged.items() if p.action == "run"] == ["tune", "train", "deploy"]
    assert ranged["evaluate"].reasons == ["after --to deploy"]

    last = plan(cfg, teardown=True, check_endpoint=False)[-1]
    assert (last.step, last.action, last.reasons) == ("teardown", "run", ["--teardown"])
    with pytest.raises(UsageError, match="--force tune: tune is not configured"):
        plan(_cfg(workdir=tmp_path / "w", **{"download.ids": ["00001"], "tune.max_jobs": 0}), force=["tune"])
    with pytest.raises(UsageError, match="--from trian: not a pipeline step; expected one of download, "):
        plan(cfg, start="trian")
    with pytest.raises(UsageError, match="--from deploy comes after --to split"):
        plan(cfg, start="deploy", stop="split")


def test_a_stopped_local_endpoint_is_deployed_again(tmp_path):
    cfg = _cfg(workdir=tmp_path / "w", **{"download.ids": ["00001"]})
    _record_all(cfg)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    State(cfg.workdir).record("deploy", {"backend": "local", "name": ENDPOINT, "pid": int(dead.stdout),
                                         "url": "http://127.0.0.1:1", "model": "m.tar.gz"},
                              cfg.deploy.model_dump(mode="json"))
    planned = {p.step: p for p in plan(cfg)}
    assert planned["deploy"].action == "run" and planned["deploy"].reasons == [f"endpoint '{ENDPOINT}' is not running"]
    assert planned["evaluate"].reasons == ["deploy runs before it"]


def test_a_record_with_work_left_is_run_again(tmp_path):
    cfg = _cfg(workdir=tmp_path / "w", **{"download.ids": ["00001"]})
    _record_all(cfg)
    state = State(cfg.workdir)
    state.record("evaluate", {"accuracy": 0.5, "failed": 2}, {"split": "test", "concurrency": 8})
    planned = {p.step: p for p in plan(cfg, check_endpoint=False)}
    assert [s for s, p in planned.items() if p.action == "run"] == ["evaluate"]
    assert planned["evaluate"].reasons == ["2 image(s) got no answer last time"]

    # SageMaker's tuner records its job before waiting for it: interrupted there, tune is not done.
    state.record("tune", {"backend": "sagemaker", "tuning_job": "bincli-t1", "status": "InProgress"},
                 {**cfg.tune.model_dump(mode="json"), "fixed": []})
    planned = {p.step: p for p in plan(cfg, check_endpoint=False)}
    assert planned["tune"].reasons == ["the tuning job bincli-t1 had not finished"]
    assert [s for s, p in planned.items() if p.action == "run"] == ["tune", "train", "deploy", "evaluate"]


def test_dry_run_on_a_fresh_workspace_says_every_step_would_run_and_writes_nothing(in_tmp):
    args = ["pipeline", "-w", "w", "--dry-run", "--json", "--set", "download.per_class=5",
            "--set", "upload.s3_uri=s3://bucket/abid", "--set", "tune.max_jobs=2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [(r["step"], r["status"], r["reasons"]) for r in out["steps"]] == [
        (step, "would run", ["not run yet"]) for step in STEPS]
    assert not (in_tmp / "w").exists()  # no state.json, no lock file, no folder

    human = runner.invoke(app, ["pipeline", "-w", "w", "--dry-run", "--set", "download.per_class=5"])
    assert human.exit_code == 0, human.output
    assert "would run" in human.stdout and "not configured" in human.stdout and "no upload.s3_uri" in human.stdout
    assert not (in_tmp / "w").exists()


def test_tune_refuses_zero_trials_which_the_pipeline_reads_as_no_tuning(in_tmp):
    result = runner.invoke(app, ["tune", "-w", "w", "--max-jobs", "0"])
    assert result.exit_code == 2
    assert "tune.max_jobs: 0 means no tuning; give 1 or more trials" in result.output


# ---------------------------------------------------------------- whole runs, backend local
def _bucket_with_bins(moto_url: str, name: str, root: Path, counts: dict[int, int]) -> list[str]:
    """Generated bins under the real ABID keys in a bucket of the S3 server: what download fetches."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=name)
    s3.put_bucket_policy(Bucket=name, Policy=json.dumps({  # public, like the real ABID bucket
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
                       "Resource": [f"arn:aws:s3:::{name}", f"arn:aws:s3:::{name}/*"]}]}))
    ids, n = [], 1
    for count, k in sorted(counts.items()):
        for _ in range(k):
            id_ = f"{n:05d}"
            image = make_bin_image(root / f"{id_}.jpg", count, size=48, seed=n)
            write_metadata(root / f"{id_}.json", count)
            s3.upload_file(str(image), name, f"bin-images/{id_}.jpg")
            s3.upload_file(str(root / f"{id_}.json"), name, f"metadata/{id_}.json")
            ids.append(id_)
            n += 1
    return ids


@pytest.fixture
def local_pipeline(moto_url, tmp_path):
    """A config file for a small pipeline on backend local; whatever happens, no endpoint is left running."""
    ids = _bucket_with_bins(moto_url, "pipeline-bins", tmp_path / "bucket", {1: 12, 2: 12, 3: 12})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "workdir": str(tmp_path / "work"),
        "download": {"bucket": "pipeline-bins", "endpoint_url": moto_url, "ids": ids, "workers": 4},
        "split": {"classes": "1-3", "ratios": [0.6, 0.2, 0.2]},
        "inspect": {"per_class": 2},
        "train": {"epochs": 1, "image_size": 32, "batch_size": 8, "workers": 0, "device": "cpu"},
        "tune": {"max_jobs": 2, "max_parallel": 1, "epochs": 1},
        "deploy": {"name": ENDPOINT, "port": 0, "threads": 1},
    }))
    yield path
    from bincli.backends import get_backend

    get_backend(_cfg(path)).teardown(None)


def _bincli(config: Path, *args: str, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINCLI_")}
    return subprocess.Popen([sys.executable, "-m", "bincli", "pipeline", "-c", str(config), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train_logs(workdir: Path) -> set[Path]:
    """The training runs' logs, wherever the run folders are (not the tuning trials')."""
    return {p for p in workdir.rglob("train.log") if "tune" not in p.relative_to(workdir).parts}


def _new_run_trained_a_step(workdir: Path, before: set[Path]) -> bool:
    return any("progress epoch=" in p.read_text(errors="replace") for p in _train_logs(workdir) - before)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"pipeline exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _pipeline_json(config: Path, *args: str, cwd: Path) -> tuple[dict, str]:
    proc = _bincli(config, *args, "--json", cwd=cwd)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout), stderr


def _gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.timeout(1200)  # four pipeline runs; on 2 busy cores the first alone took 3 min
def test_pipeline_runs_all_then_nothing_then_what_changed_and_resumes_after_a_kill(local_pipeline, tmp_path):
    # The runs that start endpoint servers run as `bincli pipeline` processes, as a user runs them: a
    # server started from this (long-lived) test process could not be reaped by the next one's update.
    cfg = _cfg(local_pipeline)
    state = State(cfg.workdir)

    first, _ = _pipeline_json(local_pipeline, cwd=tmp_path)
    assert first["failed"] is None, first["failed"]
    assert _statuses(first) == {**dict.fromkeys(STEPS, "ran"), "upload": "not configured"}
    records = state.read()["steps"]
    assert records["download"]["outputs"]["images"] == 36 and records["split"]["outputs"]["train"] > 0
    assert records["inspect"]["outputs"]["images"] == 36 and Path(records["inspect"]["outputs"]["page"]).is_file()
    assert records["tune"]["outputs"]["trials"] == 2
    assert records["deploy"]["outputs"]["url"].startswith("http://127.0.0.1:")
    assert records["evaluate"]["outputs"]["source"].startswith(f"'{ENDPOINT}' at http://127.0.0.1:")
    metrics = first["metrics"]
    assert metrics["source"] == "evaluate" and metrics["accuracy"] == records["evaluate"]["outputs"]["accuracy"]
    assert 0 < metrics["baseline"]["accuracy"] < 1 and metrics["baseline_label"] in {"1", "2", "3"}
    by_step = {row["step"]: row for row in first["steps"]}
    assert by_step["train"]["seconds"] > 0 and by_step["evaluate"]["outputs"]["n"] == metrics["n"]
    tuned = records["tune"]["outputs"]["best_hyperparameters"]
    assert all(records["train"]["outputs"]["hyperparameters"][k.replace("_", "-")] == v for k, v in tuned.items())

    second = run_pipeline(cfg)  # the plain function, as the command calls it
    assert _statuses(second) == {**dict.fromkeys(STEPS, "skipped"), "upload": "not configured"}
    assert state.read()["steps"] == records  # nothing rewritten

    # A changed setting (train.epochs), killed mid-train (Ctrl-C reaches bincli, which stops the trainer
    # at a checkpoint): the rerun resumes at train; download, inspect, split and tune are not redone.
    # (One run with the change, interrupted then resumed, instead of a plain changed run and a
    # killed one after it: the resumed run makes every assertion the plain one made.)
    changed = ["--set", "train.epochs=4", "--set", "train.batch_size=4"]  # many steps: the kill lands mid-run
    logs_before = _train_logs(cfg.workdir)
    proc = _bincli(local_pipeline, *changed, cwd=tmp_path)
    _wait_for(lambda: _new_run_trained_a_step(cfg.workdir, logs_before), proc, 300, "the new training run")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, stderr[-3000:]
    assert "error: pipeline stopped at train: training interrupted" in stderr
    assert "run 'bincli pipeline' again (same config) to resume at train" in stderr
    assert state.read()["steps"]["train"] == records["train"]  # the interrupted run recorded nothing

    resumed, stderr = _pipeline_json(local_pipeline, *changed, cwd=tmp_path)
    assert _statuses(resumed) == {**dict.fromkeys(STEPS[:5], "skipped"), "upload": "not configured",
                                  **dict.fromkeys(("train", "deploy", "evaluate"), "ran")}
    assert "train.epochs: 1 -> 4" in {r["step"]: r["reasons"] for r in resumed["steps"]}["train"]
    assert "resuming from" in stderr, stderr[-3000:]
    final = state.read()["steps"]
    assert {s: final[s] for s in ("download", "inspect", "split", "tune")} == \
        {s: records[s] for s in ("download", "inspect", "split", "tune")}
    assert final["train"]["outputs"]["epochs_run"] == 4
    assert final["deploy"]["outputs"]["pid"] != records["deploy"]["outputs"]["pid"]
    assert final["evaluate"]["finished_at"] >= final["train"]["finished_at"] >= records["evaluate"]["finished_at"]

    # --teardown: nothing else to do, and no endpoint left running.
    server_pid = final["deploy"]["outputs"]["pid"]
    planned = plan(_cfg(local_pipeline, **{"train.epochs": 4, "train.batch_size": 4}), teardown=True)
    logs = {p.name: p.read_text()[-2000:] for p in (cfg.workdir / "endpoints").rglob("*.log")}
    assert {p.step: p.action for p in planned if p.action == "run"} == {"teardown": "run"}, (planned, logs)
    done = run_pipeline(_cfg(local_pipeline, **{"train.epochs": 4, "train.batch_size": 4}), teardown=True)
    assert _statuses(done) == {**dict.fromkeys(STEPS, "skipped"), "upload": "not configured", "teardown": "ran"}
    assert state.outputs("deploy") is None and _gone(server_pid)


# ---------------------------------------------------------------- a whole run, backend sagemaker (moto)
class SageMakerRuns:
    """What SageMaker does that moto does not, done when bincli asks for it (botocore events on every
    session bincli makes): a training job bincli creates runs at once as its container would
    (sagemaker_container.run_training_job); a tuning job runs its trials as test_sagemaker_tune's
    run_trial does (the toolkit, scored by the last regex match) and lists them through that module's
    SageMakerStandIn; InvokeEndpoint answers with the endpoint's model from S3 through bincli's
    inference handlers, as the serving container does (moto answers any JPEG with a 500)."""

    def __init__(self, s3, sm, base: Path, trials: list[dict[str, str]]):
        import threading

        from test_sagemaker_tune import SageMakerStandIn

        self.s3, self.sm, self.base, self.trials = s3, sm, base, trials
        self.stand_in = SageMakerStandIn()
        self.jobs: list[str] = []
        self.tuning_jobs: list[str] = []
        self.models: dict[str, object] = {}
        self._lock = threading.Lock()

    def install(self, monkeypatch) -> SageMakerRuns:
        import botocore.handlers

        self.stand_in.install(monkeypatch)
        monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", [
            *botocore.handlers.BUILTIN_HANDLERS,
            ("after-call.sagemaker.CreateTrainingJob", self._run_job),
            ("after-call.sagemaker.CreateHyperParameterTuningJob", self._run_trials),
            ("before-call.sagemaker-runtime.InvokeEndpoint", self._invoke)])
        return self

    def _run_job(self, parsed, **_):
        from sagemaker_container import run_training_job

        name = parsed["TrainingJobArn"].rsplit("/", 1)[-1]
        if "_tuning_objective_metric" in self.sm.describe_training_job(TrainingJobName=name)["HyperParameters"]:
            return  # a trial: run_trial runs it
        self.jobs.append(name)
        result = run_training_job(self.sm, self.s3, name, self.base / f"job-{len(self.jobs)}")
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    def _run_trials(self, parsed, **_):
        from test_sagemaker_tune import run_trial

        name = parsed["HyperParameterTuningJobArn"].rsplit("/", 1)[-1]
        self.tuning_jobs.append(name)
        for i, params in enumerate(self.trials):
            run_trial(self.sm, self.s3, name, i, params, self.base / f"{name}-trial-{i}", self.stand_in)

    def _invoke(self, params, **_):
        import io
        from types import SimpleNamespace

        from botocore.response import StreamingBody

        from bincli.core.inference import handle_request

        endpoint = params["url_path"].split("/")[2]
        body, content_type = handle_request(self._model(endpoint), params["body"], params["headers"]["Content-Type"],
                                            "application/json")
        data = body.encode()
        return SimpleNamespace(status_code=200, headers={}), {"Body": StreamingBody(io.BytesIO(data), len(data)),
                                                              "ContentType": content_type}

    def _model(self, endpoint: str):
        from bincli.artifacts.loader import load_model

        with self._lock:
            if endpoint not in self.models:
                config = self.sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
                variant = self.sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
                uri = self.sm.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]["ModelDataUrl"]
                bucket, _, key = uri.removeprefix("s3://").partition("/")
                tar = self.base / f"{endpoint}.tar.gz"
                self.s3.download_file(bucket, key, str(tar))
                self.models[endpoint], _ = load_model(tar, self.base / "models")
            return self.models[endpoint]


@pytest.fixture
def sagemaker_pipeline(sagemaker_env, monkeypatch, tmp_path):
    """A pipeline config on backend sagemaker (moto), and SageMaker's part played by SageMakerRuns;
    whatever happens, teardown runs."""
    import uuid

    from helpers import make_abid_folder

    s3, sm, bucket, role = sagemaker_env
    make_abid_folder(tmp_path / "abid", {1: 6, 2: 6, 3: 6}, size=32)
    name = f"bincli-pl-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(workdir=tmp_path / "work", backend="sagemaker", **{
        "split.input": tmp_path / "abid", "split.classes": "1-3", "split.ratios": [0.6, 0.2, 0.2],
        "upload.s3_uri": f"s3://{bucket}/abid",
        "train.epochs": 1, "train.image_size": 32, "train.batch_size": 4, "train.workers": 0, "train.cache": False,
        "train.device": "cpu",
        "tune.max_jobs": 2, "tune.max_parallel": 2, "tune.epochs": 1,
        "tune.search_space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_size": [4, 8],
                              "weight_decay": None},
        "deploy.name": name, "deploy.autoscaling": {"min_instances": 1, "max_instances": 2},
        "sagemaker.role_arn": role, "sagemaker.region": "us-east-1", "sagemaker.poll_seconds": 0.01,
        "sagemaker.train_instance_type": "ml.m5.xlarge"})
    runs = SageMakerRuns(s3, sm, tmp_path / "opt_ml", [{"lr": "0.003", "batch-size": "4"},
                                                       {"lr": "0.0005", "batch-size": "8"}]).install(monkeypatch)
    yield cfg, runs
    from bincli.backends import get_backend

    get_backend(cfg).teardown(None)


@pytest.mark.slow
def test_pipeline_on_sagemaker_then_teardown_leaves_nothing_deployed(sagemaker_pipeline):
    import boto3

    cfg, runs = sagemaker_pipeline
    sm, aas = runs.sm, boto3.client("application-autoscaling")
    name = cfg.deploy.name
    first = run_pipeline(cfg)
    assert first["failed"] is None, first["failed"]
    assert _statuses(first) == {**dict.fromkeys(STEPS, "ran"), "download": "not configured"}
    state = State(cfg.workdir)
    assert state.outputs("upload")["channels"]["train"].startswith("s3://")
    assert len(runs.tuning_jobs) == 1 and state.outputs("tune")["tuning_job"] == runs.tuning_jobs[0]
    assert state.outputs("tune")["complete"] == 2
    assert len(runs.jobs) == 1 and state.outputs("train")["job_name"] == runs.jobs[0]
    trained_with = sm.describe_training_job(TrainingJobName=runs.jobs[0])["HyperParameters"]
    best = state.outputs("tune")["best_hyperparameters"]
    assert float(trained_with["lr"]) == pytest.approx(best["lr"])  # train --from-tune: the best trial's
    deployed = state.outputs("deploy")
    assert deployed["endpoint"] == name and sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    rid = deployed["autoscaling"]["resource_id"]
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    evaluated = state.outputs("evaluate")
    assert evaluated["failed"] == 0 and evaluated["n"] == state.outputs("split")["test"]
    assert first["metrics"]["source"] == "evaluate" and first["metrics"]["baseline"]["accuracy"] is not None

    last = run_pipeline(cfg, teardown=True)
    assert _statuses(last) == {**dict.fromkeys(STEPS, "skipped"), "download": "not configured", "teardown": "ran"}
    assert len(runs.jobs) == 1 and len(runs.tuning_jobs) == 1  # nothing trained again
    assert [e for e in sm.list_endpoints()["Endpoints"] if e["EndpointName"].startswith(name)] == []
    assert [c for c in sm.list_endpoint_configs()["EndpointConfigs"] if c["EndpointConfigName"].startswith(name)] == []
    assert [m for m in sm.list_models()["Models"] if m["ModelName"].startswith(name)] == []
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert state.outputs("deploy") is None


# ---------------------------------------------------------------- --teardown whatever happens (issue 25)
@pytest.mark.parametrize("how", ["ctrl-c", "a failed step", "a bug"])
def test_teardown_runs_last_whatever_stopped_the_pipeline_and_says_what_it_removed(
        sagemaker_env, tmp_path, monkeypatch, how):
    import io
    import uuid

    from rich.console import Console

    from bincli.errors import DataError
    from bincli.steps import pipeline

    _, sm, bucket, role = sagemaker_env
    name = f"bincli-pl-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(workdir=tmp_path / "work", backend="sagemaker", **{
        "split.input": tmp_path / "abid", "tune.max_jobs": 0, "deploy.name": name,
        "sagemaker.role_arn": role, "sagemaker.region": "us-east-1", "sagemaker.poll_seconds": 0.01})
    State(cfg.workdir).record("train", {"model_s3": f"s3://{bucket}/m/model.tar.gz"})
    deployed = _deploy_now(cfg)  # an endpoint an earlier run left, billing
    stop = {"ctrl-c": KeyboardInterrupt(), "a failed step": DataError("no images in split.input"),
            "a bug": RuntimeError("a bug")}[how]

    def inspect_stops(cfg, from_tune):  # the pipeline's first step to run, stopped
        raise stop

    monkeypatch.setitem(pipeline._RUNNERS, "inspect", inspect_stops)
    shown = io.StringIO()
    console = Console(file=shown, width=200)
    if how == "a bug":
        with pytest.raises(RuntimeError, match="a bug"):
            run_pipeline(cfg, teardown=True, console=console)
    else:
        result = run_pipeline(cfg, teardown=True, console=console)
        statuses = _statuses(result)
        assert statuses["inspect"] == "failed" and statuses["evaluate"] == "not reached"
        assert statuses["teardown"] == "ran" and list(statuses)[-1] == "teardown"
        assert result["failed"]["step"] == "inspect"  # the exit code is still the step's
        assert result["failed"]["exit_code"] == (130 if how == "ctrl-c" else 1)
        row = result["steps"][-1]["outputs"]
        assert row["message"] == f"removed endpoint '{name}'" and row["left"] == []
        assert {f"endpoint {name}", f"model {deployed['models'][0]}",
                f"endpoint config {deployed['endpoint_configs'][0]}"} <= set(row["removed"])
    assert "== teardown: --teardown" in shown.getvalue() and f"removed endpoint '{name}'" in shown.getvalue()
    assert [e for e in sm.list_endpoints()["Endpoints"] if e["EndpointName"] == name] == []
    assert State(cfg.workdir).outputs("deploy") is None


def _deploy_now(cfg):
    from bincli.backends import get_backend

    return get_backend(cfg).deploy(None, update=False, foreground=False)
