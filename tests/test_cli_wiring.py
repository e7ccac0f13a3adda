"""Flag wiring: each command hands its step exactly the config and arguments its flags say.

The step functions (and the backend's upload/deploy/teardown) are replaced by recorders, so
nothing heavy runs: no torch, no training, no network. Each test compares the WHOLE config the
step received with `Config(...)` built from the expected values, so a flag that lands on the
wrong key, or a default that changes on the way, fails here. Every command also gets one run
through -c/--config, an env override (BINCLI_<SECTION>__<KEY>) and --set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import (
    Config,
    DeployConfig,
    DownloadConfig,
    PredictConfig,
    SplitConfig,
    TrainConfig,
    TuneConfig,
    UploadConfig,
)

runner = CliRunner()
W = Path("w")  # the -w every test passes (relative: in_tmp is the cwd)


class Recorder:
    """Stands in for a step function: records each call, returns a canned result."""

    def __init__(self, result: Any = None):
        self.result = {"ok": True} if result is None else result
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result

    def pop(self) -> tuple[tuple, dict]:
        assert len(self.calls) == 1, f"expected one call, got {len(self.calls)}"
        return self.calls.pop()


class FakeBackend:
    """get_backend(cfg) stand-in with the real methods' signatures; records (method, args)."""

    def __init__(self, result: dict[str, Any] | None = None):
        self.result = result or {"ok": True}
        self.cfgs: list[Config] = []
        self.calls: list[tuple[str, dict]] = []

    def get_backend(self, cfg: Config) -> FakeBackend:
        self.cfgs.append(cfg)
        return self

    def upload(self) -> dict[str, Any]:
        self.calls.append(("upload", {}))
        return self.result

    def deploy(self, model: Path | None, update: bool, foreground: bool) -> dict[str, Any]:
        self.calls.append(("deploy", {"model": model, "update": update, "foreground": foreground}))
        return self.result

    def teardown(self, name: str | None) -> dict[str, Any]:
        self.calls.append(("teardown", {"name": name}))
        return self.result

    def preflight(self, steps: list[str]) -> list:
        return []  # nothing to check or to bill

    def pop(self) -> tuple[Config, str, dict]:
        assert len(self.cfgs) == 1 and len(self.calls) == 1, (self.cfgs, self.calls)
        return self.cfgs.pop(), *self.calls.pop()


def patch_step(monkeypatch, module: str, name: str, result: Any = None) -> Recorder:
    # The commands import their step inside the function, so the module attribute is what they get.
    rec = Recorder(result)
    monkeypatch.setattr(f"{module}.{name}", rec)
    return rec


@pytest.fixture
def backend(monkeypatch) -> FakeBackend:
    fake = FakeBackend()
    monkeypatch.setattr("bincli.backends.get_backend", fake.get_backend)
    return fake


def invoke(args: list[str], code: int = 0) -> Any:
    """Run bincli with --json; stdout must be exactly one JSON document. Returns it."""
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


def config_file(tmp: Path, text: str) -> list[str]:
    path = tmp / "bincli.yaml"
    path.write_text(text)
    return ["-c", str(path)]


def test_download_flags(in_tmp, monkeypatch):
    rec = patch_step(monkeypatch, "bincli.data.download", "run_download", {"images": 7})
    out = invoke(["download", "-w", "w", "--per-class", "9", "--classes", "1-5", "--seed", "4",
                  "--file-list", "fl.json", "--ids-file", "ids.txt", "--ids", "00002,100313", "--ids", " 7 ",
                  "--s3-endpoint-url", "http://127.0.0.1:9000/", "--bucket", "mirror", "--workers", "3",
                  "--retries", "0", "--strict"])
    assert out == {"images": 7}
    args, kwargs = rec.pop()
    assert args == (DownloadConfig(per_class=9, classes="1-5", seed=4, file_list=Path("fl.json"),
                                   ids_file=Path("ids.txt"), endpoint_url="http://127.0.0.1:9000", bucket="mirror",
                                   workers=3, retries=0, strict=True),
                    W, ["00002", "100313", "7"]) and kwargs == {}

    # No flags: the config file, the env and --set decide; no --ids means None (not []).
    monkeypatch.setenv("BINCLI_DOWNLOAD__RETRIES", "2")
    invoke(["download", *config_file(in_tmp, "workdir: fw\ndownload: {bucket: b, strict: true}\n"),
            "--set", "download.per_class=5", "--no-strict"])
    assert rec.pop() == ((DownloadConfig(bucket="b", retries=2, per_class=5), Path("fw"), None), {})


def test_download_failure_still_prints_its_json_result(in_tmp, monkeypatch):
    from bincli.data.download import DownloadFailed

    def failing(*args, **kwargs):
        raise DownloadFailed("nothing usable came down", {"images": 0, "failed": 3})

    monkeypatch.setattr("bincli.data.download.run_download", failing)
    assert invoke(["download", "-w", "w", "--ids", "1"], code=1) == {"images": 0, "failed": 3}


def test_split_flags(in_tmp, monkeypatch):
    rec = patch_step(monkeypatch, "bincli.data.split", "run_split", {"train": 1})
    out = invoke(["split", "-w", "w", "-i", "data", "--ratios", "0.7", "0.2", "0.1", "--seed", "3",
                  "--classes", "0-5+", "--max-per-class", "50", "--layout", "folders"])
    assert out == {"train": 1}
    assert rec.pop() == ((SplitConfig(input=Path("data"), ratios=(0.7, 0.2, 0.1), seed=3, classes="0-5+",
                                      max_per_class=50, layout="folders"), W), {})
    invoke(["split", "-w", "w", "--input", "data2"])  # the long name of -i; the rest stays default
    assert rec.pop() == ((SplitConfig(input=Path("data2")), W), {})

    monkeypatch.setenv("BINCLI_SPLIT__SEED", "7")
    invoke(["split", "-w", "w", *config_file(in_tmp, "split: {classes: 1-3, seed: 1}\n"),
            "--set", "split.max_per_class=20"])
    assert rec.pop() == ((SplitConfig(classes="1-3", seed=7, max_per_class=20), W), {})


def test_upload_flags(in_tmp, backend, monkeypatch):
    backend.result = {"uploaded": 2}
    out = invoke(["upload", "-w", "w", "--s3-uri", "s3://my-bucket/abid/", "--layout", "folders",
                  "--s3-endpoint-url", "http://127.0.0.1:5000", "--workers", "4"])
    assert out == {"uploaded": 2}
    assert backend.pop() == (Config(workdir=W, upload=UploadConfig(
        s3_uri="s3://my-bucket/abid", layout="folders", endpoint_url="http://127.0.0.1:5000", workers=4)),
        "upload", {})

    monkeypatch.setenv("BINCLI_UPLOAD__WORKERS", "9")
    invoke(["upload", *config_file(in_tmp, "backend: sagemaker\nupload: {s3_uri: 's3://b-1/p'}\n"),
            "--set", "upload.layout=folders"])
    assert backend.pop() == (Config(backend="sagemaker", upload=UploadConfig(
        s3_uri="s3://b-1/p", layout="folders", workers=9)), "upload", {})


TRAIN_FLAGS = ["--model", "resnet34", "--batch-size", "8", "--lr", "0.01", "--image-size", "64",
               "--no-pretrained", "--weights-file", "imagenet.pth", "--freeze", "backbone", "--optimizer", "sgd",
               "--scheduler", "step", "--warmup-epochs", "0", "--weight-decay", "0.001",
               "--label-smoothing", "0.1", "--workers", "0", "--seed", "5", "--no-cache", "--device", "cpu"]
TRAIN_VALUES = dict(model="resnet34", batch_size=8, lr=0.01, image_size=64, pretrained=False,
                    weights_file=Path("imagenet.pth"), freeze="backbone", optimizer="sgd", scheduler="step",
                    warmup_epochs=0, weight_decay=0.001, label_smoothing=0.1, workers=0, seed=5, cache=False,
                    device="cpu")


def test_tune_flags(in_tmp, monkeypatch):
    rec = patch_step(monkeypatch, "bincli.steps.tune", "run_tune", {"trials": 4})
    out = invoke(["tune", "-w", "w", "--max-jobs", "4", "--max-parallel", "2", "--objective", "valid_acc",
                  "--epochs", "1", *TRAIN_FLAGS])
    assert out == {"trials": 4}
    # --epochs is the epochs per trial (tune.epochs); train.epochs stays the default.
    expected = Config(workdir=W, tune=TuneConfig(max_jobs=4, max_parallel=2, objective="valid_acc", epochs=1),
                      train=TrainConfig(**TRAIN_VALUES))
    assert rec.pop() == ((expected,), {"fixed": set(TRAIN_VALUES)})

    invoke(["tune", "-w", "w", "--max-jobs", "4", "--max-parallel", "2", "--epochs", "1", "--lr", "0.01"])
    assert rec.pop() == ((Config(workdir=W, tune=TuneConfig(max_jobs=4, max_parallel=2, epochs=1),
                                 train=TrainConfig(lr=0.01)),), {"fixed": {"lr"}})
    invoke(["tune", "-w", "w", "--pretrained", "--cache"])  # the positive halves of the switches
    assert rec.pop() == ((Config(workdir=W, train=TrainConfig(pretrained=True, cache=True)),),
                         {"fixed": {"pretrained", "cache"}})

    # Config, env and --set values are not flags: they stay searchable (fixed is empty).
    monkeypatch.setenv("BINCLI_TUNE__SEED", "3")
    invoke(["tune", "-w", "w", *config_file(in_tmp, "tune: {max_jobs: 2}\ntrain: {lr: 0.02}\n"),
            "--set", "tune.search_space.lr=null"])
    got = rec.pop()
    assert got == ((Config(workdir=W, tune=TuneConfig(max_jobs=2, seed=3, search_space={
        "lr": None, "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True}, "batch_size": [16, 32, 64]}),
        train=TrainConfig(lr=0.02)),), {"fixed": set()})


def test_train_flags(in_tmp, monkeypatch):
    rec = patch_step(monkeypatch, "bincli.steps.train", "run_train", {"model": "m.tar.gz"})
    out = invoke(["train", "-w", "w", "--epochs", "2", "--patience", "3", "--nproc-per-node", "2", *TRAIN_FLAGS,
                  "--from-tune", "--fresh", "--no-wait"])
    assert out == {"model": "m.tar.gz"}
    expected = Config(workdir=W, train=TrainConfig(epochs=2, patience=3, nproc_per_node=2, **TRAIN_VALUES))
    assert rec.pop() == ((expected,), {"from_tune": True, "fresh": True, "wait": False, "run_name": None,
                                       "resume": None})

    invoke(["train", "-w", "w", "--epochs", "2", "--lr", "0.01", "--no-pretrained", "--from-tune", "--fresh"])
    assert rec.pop() == ((Config(workdir=W, train=TrainConfig(epochs=2, lr=0.01, pretrained=False)),),
                         {"from_tune": True, "fresh": True, "wait": True, "run_name": None, "resume": None})
    invoke(["train", "-w", "w", "--pretrained", "--cache", "--wait"])
    assert rec.pop() == ((Config(workdir=W, train=TrainConfig(pretrained=True, cache=True)),),
                         {"from_tune": False, "fresh": False, "wait": True, "run_name": None, "resume": None})

    monkeypatch.setenv("BINCLI_TRAIN__EPOCHS", "4")
    invoke(["train", "-w", "w", *config_file(in_tmp, "train: {batch_size: 16, epochs: 9}\n"),
            "--set", "train.lr=0.05", "--set", "train.device=cpu"])
    assert rec.pop() == ((Config(workdir=W, train=TrainConfig(batch_size=16, epochs=4, lr=0.05, device="cpu")),),
                         {"from_tune": False, "fresh": False, "wait": True, "run_name": None, "resume": None})
    invoke(["train", "-w", "w", "--set", "train.lr=0.05", "--lr", "0.2"])  # the command's own flag wins
    assert rec.pop()[0][0].train.lr == 0.2


def test_deploy_flags(in_tmp, backend, monkeypatch):
    backend.result = {"name": "ep", "url": "http://127.0.0.1:1"}
    out = invoke(["deploy", "-w", "w", "-m", "model.tar.gz", "--endpoint", "ep-1", "--host", "0.0.0.0", "--port", "0",
                  "--threads", "2", "--update", "--foreground"])
    assert out == {"name": "ep", "url": "http://127.0.0.1:1"}
    assert backend.pop() == (Config(workdir=W, deploy=DeployConfig(model=Path("model.tar.gz"), name="ep-1",
                                                                   host="0.0.0.0", port=0, threads=2)),
                             "deploy", {"model": None, "update": True, "foreground": True})
    invoke(["deploy", "-w", "w", "--model", "other.tar.gz", "-p", "9000"])
    assert backend.pop() == (Config(workdir=W, deploy=DeployConfig(model=Path("other.tar.gz"), port=9000)),
                             "deploy", {"model": None, "update": False, "foreground": False})

    monkeypatch.setenv("BINCLI_DEPLOY__STARTUP_TIMEOUT", "5")
    invoke(["deploy", *config_file(in_tmp, "deploy: {threads: 8}\n"), "-w", "w", "--set", "deploy.name=from-set"])
    assert backend.pop() == (Config(workdir=W, deploy=DeployConfig(threads=8, startup_timeout=5, name="from-set")),
                             "deploy", {"model": None, "update": False, "foreground": False})


def test_predict_flags(in_tmp, monkeypatch):
    rows = [{"image": name, "count": 3, "label": "3", "confidence": 0.9, "ms": 12.0} for name in ("a.jpg", "more")]
    rec = patch_step(monkeypatch, "bincli.steps.predict", "run_predict",
                     {"source": "x", "results": rows, "n": 2, "failed": 0, "expected": 3, "mismatched": 0})
    result = runner.invoke(app, ["predict", "a.jpg", "more", "-w", "w", "--endpoint", "ep-x",
                                 "--endpoint-url", "http://127.0.0.1:8080", "--model", "m.tar.gz", "--expected", "3",
                                 "--concurrency", "2", "--timeout", "5", "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == rows  # one JSON object per image
    cfg = Config(workdir=W, predict=PredictConfig(endpoint="ep-x", endpoint_url="http://127.0.0.1:8080",
                                                  concurrency=2, timeout=5))
    assert rec.pop() == ((cfg, [Path("a.jpg"), Path("more")]),
                         {"endpoint": "ep-x", "endpoint_url": "http://127.0.0.1:8080", "model": Path("m.tar.gz"),
                          "expected": 3})

    # A count other than --expected: exit 1, the JSON rows still on stdout, the reason on stderr.
    rec.result = {**rec.result, "mismatched": 1}
    result = runner.invoke(app, ["predict", "a.jpg", "-e", "ep-y", "-m", "m2.tar.gz", "--expected", "4", "--json"])
    assert result.exit_code == 1 and "other than the expected 3" in result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == rows
    assert rec.pop() == ((Config(predict=PredictConfig(endpoint="ep-y")), [Path("a.jpg")]),
                         {"endpoint": "ep-y", "endpoint_url": None, "model": Path("m2.tar.gz"), "expected": 4})

    rec.result = {**rec.result, "mismatched": 0}
    monkeypatch.setenv("BINCLI_PREDICT__TIMEOUT", "7.5")
    result = runner.invoke(app, ["predict", "a.jpg", *config_file(in_tmp, "predict: {endpoint: from-file}\n"),
                                 "--set", "predict.concurrency=3"])
    # without --json the human answer is the result: on stdout, and still there with -q
    assert result.exit_code == 0 and "a.jpg" in result.stdout and result.stderr == ""
    rec.pop()
    quiet = runner.invoke(app, ["-q", "predict", "a.jpg", "-e", "ep-q"])
    assert quiet.exit_code == 0 and "a.jpg" in quiet.stdout, quiet.output
    rec.pop()
    result = runner.invoke(app, ["predict", "a.jpg", *config_file(in_tmp, "predict: {endpoint: from-file}\n"),
                                 "--set", "predict.concurrency=3"])
    assert rec.pop() == ((Config(predict=PredictConfig(endpoint="from-file", timeout=7.5, concurrency=3)),
                          [Path("a.jpg")]),
                         {"endpoint": None, "endpoint_url": None, "model": None, "expected": None})


def _evaluate_recorder(monkeypatch) -> Recorder:
    rec = Recorder({"failed": 0, "n": 3})

    def run_evaluate(cfg, split_name, **kwargs):
        kwargs.pop("progress")(1, 3)  # the command's progress callback must accept (done, total)
        return rec(cfg, split_name, **kwargs)

    monkeypatch.setattr("bincli.steps.evaluate.run_evaluate", run_evaluate)
    return rec


def test_evaluate_flags(in_tmp, monkeypatch):
    rec = _evaluate_recorder(monkeypatch)
    out = invoke(["evaluate", "-w", "w", "--split", "valid", "--in-process", "--concurrency", "2"])
    assert out == {"failed": 0, "n": 3}
    assert rec.pop() == ((Config(workdir=W, predict=PredictConfig(concurrency=2)), "valid"),
                         {"endpoint": None, "endpoint_url": None, "model": None, "in_process": True, "run": None})
    invoke(["evaluate", "-w", "w", "--split", "valid", "--local"])  # the hidden old name of --in-process
    assert rec.pop() == ((Config(workdir=W), "valid"),
                         {"endpoint": None, "endpoint_url": None, "model": None, "in_process": True, "run": None})
    invoke(["evaluate", "-w", "w", "-e", "ep-z", "--endpoint-url", "http://h:1", "-m", "m.tar.gz"])
    assert rec.pop() == ((Config(workdir=W, predict=PredictConfig(endpoint="ep-z", endpoint_url="http://h:1")),
                          "test"),
                         {"endpoint": "ep-z", "endpoint_url": "http://h:1", "model": Path("m.tar.gz"),
                          "in_process": False, "run": None})
    invoke(["evaluate", "--endpoint", "ep-long", "--model", "m2.tar.gz"])
    assert rec.pop()[1] == {"endpoint": "ep-long", "endpoint_url": None, "model": Path("m2.tar.gz"),
                            "in_process": False, "run": None}

    monkeypatch.setenv("BINCLI_PREDICT__TIMEOUT", "3")
    invoke(["evaluate", *config_file(in_tmp, "predict: {endpoint: from-file}\n"), "--set", "predict.concurrency=5"])
    assert rec.pop() == ((Config(predict=PredictConfig(endpoint="from-file", timeout=3, concurrency=5)), "test"),
                         {"endpoint": None, "endpoint_url": None, "model": None, "in_process": False, "run": None})


def test_teardown_flags(in_tmp, backend, monkeypatch):
    backend.result = {"message": "stopped", "removed": []}
    assert invoke(["teardown", "-w", "w", "-e", "ep-1"]) == {"message": "stopped", "removed": []}
    assert backend.pop() == (Config(workdir=W), "teardown", {"name": "ep-1"})

    monkeypatch.setenv("BINCLI_DEPLOY__NAME", "from-env")
    invoke(["teardown", *config_file(in_tmp, "backend: sagemaker\n"), "--set", "sagemaker.region=eu-west-1"])
    cfg, method, kwargs = backend.pop()
    assert cfg == Config(backend="sagemaker", deploy=DeployConfig(name="from-env"), sagemaker={"region": "eu-west-1"})
    assert (method, kwargs) == ("teardown", {"name": None})


def test_status_sources_of_the_workdir(in_tmp, monkeypatch):
    # status has only the shared flags: its workdir shows which source won (file < env < --set < -w).
    args = ["status", *config_file(in_tmp, "workdir: from-file\n")]
    assert invoke(args)["workdir"] == str(in_tmp / "from-file")  # status prints it absolute
    monkeypatch.setenv("BINCLI_WORKDIR", "from-env")
    assert invoke(args)["workdir"] == str(in_tmp / "from-env")
    assert invoke([*args, "--set", "workdir=from-set"])["workdir"] == str(in_tmp / "from-set")
    out = invoke([*args, "--set", "workdir=from-set", "-w", "w"])
    assert out["workdir"] == str(in_tmp / "w") and not any(step["done"] for step in out["steps"])
    human = runner.invoke(app, ["status", "--workdir", "w"])  # the table is the result: stdout, not stderr
    assert human.exit_code == 0 and "bincli workspace w" in human.stdout and "not run" in human.stdout
    assert human.stderr == ""


def test_config_show_and_validate(in_tmp, monkeypatch):
    monkeypatch.setenv("BINCLI_SPLIT__SEED", "7")
    out = invoke(["config", "show", *config_file(in_tmp, "split: {classes: 1-3}\n"), "-w", "w", "--step", "split",
                  "--set", "split.max_per_class=9"])
    assert out["config_file"] == str(in_tmp / "bincli.yaml")
    rows = {row["key"]: (row["value"], row["source"]) for row in out["keys"]}
    assert rows == {
        "split.input": (None, "default"), "split.ratios": ([0.8, 0.1, 0.1], "default"),
        "split.seed": (7, "env BINCLI_SPLIT__SEED"), "split.classes": ("1-3", str(in_tmp / "bincli.yaml")),
        "split.max_per_class": (9, "flag --set"), "split.layout": ("manifest", "default"),
        "split.group_near_duplicates": (True, "default"),
    }
    everything = {row["key"]: row["source"] for row in invoke(["config", "show", "--workdir", "w"])["keys"]}
    assert everything["workdir"] == "flag --workdir" and "train.lr" in everything

    good = in_tmp / "good.yaml"
    good.write_text("split: {seed: 3}\n")
    monkeypatch.setenv("BINCLI_SPLIT__RATIOS", "[0.5, 0.5, 0.5]")  # validate checks the file, not the env
    assert invoke(["config", "validate", str(good)]) == {"config_file": str(good), "valid": True}


def test_results_go_to_stdout_and_q_never_silences_them(in_tmp):
    shown = runner.invoke(app, ["config", "show"])  # `bincli config show | grep lr` finds it
    assert shown.exit_code == 0 and any("lr" in line for line in shown.stdout.splitlines()), shown.output
    quiet = runner.invoke(app, ["-q", "status", "-w", "w"])
    assert quiet.exit_code == 0 and "bincli workspace w" in quiet.stdout and quiet.stderr == ""
    as_json = runner.invoke(app, ["status", "-w", "w", "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["workdir"] == str(in_tmp / "w")  # only JSON
