"""The training entry point: its flags and SM_* defaults, what it writes, its log lines, and that it
runs where bincli is not installed: from a copied bundle, under SageMaker's training toolkit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bincli.artifacts.bundle import write_core_bundle
from bincli.core.contract import (
    BEST_METRICS,
    HYPERPARAMETERS,
    METRIC_REGEX,
    metric_definitions,
    parse_epoch_line,
)
from bincli.core.model import build_model
from bincli.core.train import get_args_parser, main, run
from train_blobs import make_channels, make_split

METRICS_KEYS = {"accuracy", "log_loss", "rmse", "mae", "per_class", "confusion_matrix", "labels", "counts", "n"}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    return make_split(tmp_path_factory.mktemp("small"), {"train": 4, "valid": 2, "test": 2}, "0-5", size=32)


def test_every_hyperparameter_is_a_flag_and_channels_default_to_sm_variables(monkeypatch):
    flags = {opt for action in get_args_parser()._actions for opt in action.option_strings}
    assert {f"--{name}" for name in HYPERPARAMETERS} <= flags
    monkeypatch.setenv("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train")
    monkeypatch.setenv("SM_CHANNEL_VALID", "/opt/ml/input/data/valid")
    monkeypatch.setenv("SM_MODEL_DIR", "/opt/ml/model")
    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data")
    monkeypatch.delenv("SM_CHANNEL_TEST", raising=False)
    # SageMaker's launchers pass every value as a string, booleans as true/false (or True/False)
    args, unknown = get_args_parser().parse_known_args(
        ["--epochs", "3", "--pretrained", "false", "--cache", "True", "--_tuning_objective_metric", "valid_loss"])
    assert (args.train, args.valid, args.test) == ("/opt/ml/input/data/train", "/opt/ml/input/data/valid", None)
    assert (args.model_dir, args.output_dir) == ("/opt/ml/model", "/opt/ml/output/data")
    assert args.epochs == 3 and args.pretrained is False and args.cache is True
    assert unknown == ["--_tuning_objective_metric", "valid_loss"]  # tolerated (SageMaker tuning adds it)


@pytest.mark.slow
def test_entry_point_writes_model_metrics_and_lines_the_regexes_read(tmp_path, small, capsys):
    d = small["manifests_dir"]
    metrics = run(get_args_parser().parse_args([
        "--train", d, "--valid", d, "--test", d, "--data-root", small["data_root"], "--classes", "0-5",
        "--epochs", "2", "--batch-size", "8", "--image-size", "32", "--workers", "0", "--log-interval", "0",
        "--model-dir", str(tmp_path / "model"), "--output-dir", str(tmp_path / "out"),
        "--cache-dir", str(tmp_path / "cache")]))
    # model dir: the data contract
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["model.pth", "model_info.json"]
    info = json.loads((tmp_path / "model" / "model_info.json").read_text())
    assert {k: info[k] for k in ("arch", "classes", "labels", "counts", "image_size")} == {
        "arch": "resnet18", "classes": "0-5", "labels": ["0", "1", "2", "3", "4", "5"],
        "counts": [0, 1, 2, 3, 4, 5], "image_size": 32}
    assert len(info["mean"]) == len(info["std"]) == 3
    assert set(info["metrics"]) == {"valid", "test", "baseline"} and info["metrics"]["test"]["n"] == 12
    model = build_model("resnet18", 6)
    model.load_state_dict(torch.load(tmp_path / "model" / "model.pth", weights_only=True))
    # checkpoints beside the model dir by default (/opt/ml/checkpoints on SageMaker)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # output dir
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(saved["test"]) >= METRICS_KEYS and set(saved["valid"]) >= METRICS_KEYS
    assert saved["baseline"]["split"] == "test" and saved["test"] == metrics["test"]
    history_lines = (tmp_path / "out" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history_lines] == [1, 2]
    assert {"confusion-matrix.png", "learning-curves.png"} <= {p.name for p in (tmp_path / "out").iterdir()}

    # the real output, read the way SageMaker's metric_definitions and the tuner read it
    out = capsys.readouterr().out
    assert "progress epoch=1 step=1/3" in out  # 24 images, batches of 8
    rows = [parse_epoch_line(line) for line in out.splitlines() if parse_epoch_line(line)]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row, hist in zip(rows, metrics["history"], strict=True):
        for name in ("train_loss", "train_acc", "valid_loss", "valid_acc", "valid_rmse", "valid_mae", "lr"):
            assert row[name] == pytest.approx(hist[name], abs=1e-6), name
    for definition in metric_definitions():
        values = [float(v) for v in re.findall(definition["Regex"], out)]
        if definition["Name"] in BEST_METRICS:  # the best-so-far line after each epoch line: both tuners' score
            column, pick = BEST_METRICS[definition["Name"]]
            expected = [pick(r[column] for r in rows[:i + 1]) for i in range(len(rows))]
        else:
            expected = [r[definition["Name"]] for r in rows]
        assert values == [pytest.approx(v, abs=1e-6) for v in expected], definition  # never a progress line
    assert set(METRIC_REGEX) == {d["Name"] for d in metric_definitions()}


def test_bad_input_exits_2_with_one_error_line(tmp_path, caplog, monkeypatch):
    for var in ("SM_CHANNEL_TRAIN", "SM_CHANNEL_VALID", "SM_CHANNEL_TEST"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--model-dir", str(tmp_path / "m")])
    assert exit_.value.code == 2 and "error: no train channel: pass --train DIR or set SM_CHANNEL_TRAIN" in caplog.text
    (tmp_path / "ch").mkdir()
    (tmp_path / "ch" / "train.csv").write_text("id,path,count\n00001,images/00001.jpg,7\n")
    with pytest.raises(SystemExit) as exit_:
        main(["--train", str(tmp_path / "ch"), "--classes", "1-5", "--model-dir", str(tmp_path / "m")])
    assert exit_.value.code == 2 and "train.csv:2: count '7' is not in classes 1-5" in caplog.text


def _isolated_python(bundle: Path) -> list[str]:
    """A Python that sees torch & co. but not the installed bincli: only the bundle's copy of the core."""
    code = (
        "import sys, runpy, pathlib\n"
        "sys.path[:] = [p for p in sys.path if p and not (pathlib.Path(p) / 'bincli').exists()]\n"
        f"sys.path.insert(0, {str(bundle)!r})\n"
        "import bincli\n"
        f"assert pathlib.Path(bincli.__file__).parent.parent == pathlib.Path({str(bundle)!r}), bincli.__file__\n"
        "try:\n    import bincli.config\nexcept ImportError:\n    pass\n"
        "else:\n    sys.exit('the rest of bincli is importable')\n"
        f"sys.argv = [{str(bundle / 'train.py')!r}] + sys.argv[1:]\n"
        f"runpy.run_path({str(bundle / 'train.py')!r}, run_name='__main__')\n"
    )
    return [sys.executable, "-c", code]


@pytest.mark.slow
def test_shipped_bundle_runs_without_bincli_and_resumes_after_ctrl_c_mid_epoch(tmp_path):
    """The job's source dir (exactly what is shipped) run as SageMaker's v3 driver runs it: SM_*
    variables, `--name value` arguments, from the bundle dir, with no bincli installed. Ctrl-C in
    the middle of epoch 1 saves a checkpoint; the same command then resumes mid-epoch."""
    channels = make_channels(tmp_path / "data", {"train": 10, "valid": 2}, "0-5", size=32)
    bundle = write_core_bundle(tmp_path / "src")
    assert sorted(p.name for p in (bundle / "bincli" / "core").glob("*.py")) == sorted(
        p.name for p in (Path(__file__).parents[1] / "src" / "bincli" / "core").glob("*.py"))
    sm = tmp_path / "opt_ml"
    env = {**os.environ, "SM_CHANNEL_TRAIN": str(channels["train"]), "SM_CHANNEL_VALID": str(channels["valid"]),
           "SM_MODEL_DIR": str(sm / "model"), "SM_OUTPUT_DATA_DIR": str(sm / "output" / "data"),
           "SM_HOSTS": '["algo-1"]', "SM_CURRENT_HOST": "algo-1", "SM_NUM_GPUS": "0", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": ""}
    env.pop("SM_CHANNEL_TEST", None)
    cmd = [*_isolated_python(bundle), "--batch-size", "2", "--classes", "0-5", "--epochs", "2", "--image-size", "32",
           "--lr", "0.001", "--pretrained", "false", "--workers", "0", "--log-interval", "0",
           "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, cwd=bundle, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first.startswith("progress epoch=1 step=1/30"), first + proc.stderr.read()
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted by signal 2 at epoch 1" in err
    assert not (sm / "model" / "model.pth").exists()
    ckpt = torch.load(sm / "checkpoints" / "last.pt", weights_only=True)
    done = ckpt["next"]["sample"]
    assert ckpt["next"]["epoch"] == 1 and 0 < done < 60 and done % 2 == 0

    again = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"at epoch 1 after {done} samples" in again.stderr
    first_step = int(re.search(r"progress epoch=1 step=(\d+)/30", again.stdout).group(1))
    assert first_step == done // 2 + 1  # carried on from the next batch, not from the start of the epoch
    assert [parse_epoch_line(x)["epoch"] for x in again.stdout.splitlines() if parse_epoch_line(x)] == [1, 2]
    assert sorted(p.name for p in (sm / "model").iterdir()) == ["model.pth", "model_info.json"]
    history = json.loads((sm / "output" / "data" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.slow
def test_sagemaker_training_toolkit_runs_the_entry_point(tmp_path):
    """The sagemaker-training toolkit's trainer (what tuning jobs run) on an /opt/ml-like tree."""
    toolkit = shutil.which("train", path=str(Path(sys.executable).parent))
    if toolkit is None:
        pytest.skip("sagemaker-training is not installed (pip install -e '.[test]')")
    base = tmp_path / "opt_ml"
    channels = make_channels(base / "input" / "data", {"train": 4, "valid": 2, "test": 2}, "0-5", size=32)
    bundle = write_core_bundle(tmp_path / "sourcedir")
    config = base / "input" / "config"
    config.mkdir(parents=True)
    host = socket.gethostname()  # with algo-1 the toolkit waits for DNS
    hps = {"epochs": 1, "batch-size": 8, "image-size": 32, "classes": "0-5", "workers": 0, "pretrained": False,
           "cache-dir": str(tmp_path / "cache")}
    hps = {k: json.dumps(v) for k, v in hps.items()}  # the toolkit json-decodes every value
    hps.update(sagemaker_program=json.dumps("train.py"), sagemaker_submit_directory=json.dumps(str(bundle)))
    (config / "hyperparameters.json").write_text(json.dumps(hps))
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for name in channels}))
    (config / "resourceconfig.json").write_text(json.dumps({
        "current_host": host, "hosts": [host], "current_instance_type": "ml.m5.large",
        "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
        "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": "ml.m5.large",
                             "hosts": [host]}]}))
    for sub in ("model", "output/data"):
        (base / sub).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env["SAGEMAKER_BASE_DIR"] = str(base)
    started = time.monotonic()
    result = subprocess.run([toolkit], env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert time.monotonic() - started < 300
    # where SageMaker uploads from: /opt/ml/model -> model.tar.gz, /opt/ml/output/data -> output.tar.gz
    assert sorted(p.name for p in (base / "model").iterdir()) == ["model.pth", "model_info.json"]
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert set(metrics["test"]) >= METRICS_KEYS and metrics["test"]["n"] == 12
    assert (base / "output" / "success").exists() and not (base / "output" / "failure").exists()
    assert (base / "checkpoints" / "last.pt").is_file()  # /opt/ml/checkpoints, synced to S3 for spot restarts
    line = next(x for x in log.splitlines() if x.startswith("epoch=1 "))
    assert set(parse_epoch_line(line)) >= {"train_loss", "valid_loss", "valid_acc"}
    assert "--batch-size 8 --cache-dir" in log  # the toolkit's own command line: --name value, names sorted
