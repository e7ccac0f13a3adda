"""`bincli train` (local backend): the step, the CLI, DDP with torchrun, Ctrl-C and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from bincli.backends.local.launcher import build_command, build_env
from bincli.cli import app
from bincli.config import Config, TrainConfig
from bincli.core.classes import ClassSpec
from bincli.core.data import CountDataset, ShardSampler, build_loader, load_channel
from bincli.core.distributed import DistContext
from bincli.core.engine import evaluate
from bincli.core.model import build_model
from bincli.core.presets import eval_transform
from bincli.errors import ConfigError
from bincli.hyperparameters import hyperparameters_from
from bincli.progress import TrainProgress
from bincli.state import State
from bincli.steps.train import run_train
from train_blobs import make_split, record_split

runner = CliRunner()
REPORT_KEYS = {"accuracy", "log_loss", "rmse", "mae", "per_class", "confusion_matrix", "baseline"}
FAST = {"image_size": 32, "batch_size": 8, "workers": 0}


def _tar_names(path) -> set[str]:
    with tarfile.open(path) as tar:
        return set(tar.getnames())


def _check_model_tar(path: Path) -> None:
    names = _tar_names(path)
    assert {"model.pth", "model_info.json", "code/inference.py", "code/train.py", "code/bincli/__init__.py",
            "code/bincli/core/train.py", "code/bincli/core/model.py", "code/bincli/core/presets.py",
            "code/bincli/core/contract.py"} <= names
    core = {p.name for p in (Path(__file__).parents[1] / "src" / "bincli" / "core").glob("*.py")}
    assert {n.split("/")[-1] for n in names if n.startswith("code/bincli/core/")} == core  # every core module ships
    assert not any("__pycache__" in n for n in names)


# ---------------------------------------------------------------- launching
def test_command_is_the_entry_point_with_sorted_name_value_args():
    hp = hyperparameters_from(TrainConfig(epochs=2, pretrained=True))
    assert hp["batch-size"] == 32 and hp["pretrained"] is True and "nproc-per-node" not in hp
    assert "weights-file" not in hp  # unset: left out, not passed as "None" or "null"
    cmd = build_command({"lr": 0.01, "epochs": 2, "pretrained": False, "weights-file": None}, 1,
                        {"data-root": "/d"}, python="py")
    assert cmd == ["py", "-m", "bincli.core.train", "--data-root", "/d", "--epochs", "2", "--lr", "0.01",
                   "--pretrained", "false"]
    ddp = build_command({"epochs": 1}, 4, {}, python="py")
    assert ddp == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m",
                   "bincli.core.train", "--epochs", "1"]


def test_environment_is_sagemakers(tmp_path):
    split = {"manifests_dir": "/w/splits", "train": 8, "valid": 2, "test": 0}
    env = build_env(split, tmp_path, 2, base={"PATH": "/bin", "SM_CHANNEL_TEST": "/elsewhere", "SM_HPS": "{}"})
    assert env["SM_CHANNEL_TRAIN"] == env["SM_CHANNEL_VALID"] == "/w/splits"
    assert "SM_CHANNEL_TEST" not in env and "SM_HPS" not in env  # no empty channel, nothing leaks in
    assert env["SM_MODEL_DIR"] == str(tmp_path / "model") and env["SM_OUTPUT_DATA_DIR"] == str(tmp_path / "output")
    assert json.loads(env["SM_CHANNELS"]) == ["train", "valid"] and env["PATH"] == "/bin"
    assert int(env["OMP_NUM_THREADS"]) >= 1


def test_tuned_hyperparameters_are_validated():
    hp = hyperparameters_from(TrainConfig(), {"lr": 0.02, "batch-size": 16, "weight_decay": 0.001})
    assert (hp["lr"], hp["batch-size"], hp["weight-decay"]) == (0.02, 16, 0.001)
    with pytest.raises(ConfigError, match=r"lr.*greater than 0"):
        hyperparameters_from(TrainConfig(), {"lr": -1})
    with pytest.raises(ConfigError, match="'momentum' is not a train hyperparameter"):
        hyperparameters_from(TrainConfig(), {"momentum": 0.9})


LINES = [
    "2026-11-25 10:00:00,000 INFO bincli.train: data: train 48, valid 18, test 18 images\n",
    "progress epoch=1 step=3/6 step_loss=1.700000 step_acc=0.250000 step_img_s=40.0\n",
    "progress epoch=1 step=6/6 step_loss=1.600000 step_acc=0.300000 step_img_s=42.5\n",
    "epoch=1 train_loss=1.600000 train_acc=0.300000 valid_loss=1.500000 valid_acc=0.350000 valid_rmse=1.100000 "
    "valid_mae=0.900000 lr=0.000500 train_img_s=42.500000\n",
    "2026-11-25 10:00:09,000 ERROR bincli.train: error: something broke\n",
]


@pytest.mark.parametrize("live", [True, False])
def test_progress_on_a_terminal_and_plain(live):
    console = Console(force_terminal=live, width=160, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    with TrainProgress(console, epochs=3, live=live) as progress:
        for line in LINES[:3]:
            progress.line(line)
        if live:  # the bar of the running epoch, with img/s, loss and accuracy
            shown = Console(width=160, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
            shown.print(progress.bar())
            bar = shown.export_text()
            assert "epoch 1/3" in bar and "6/6" in bar and "42.5 img/s  loss 1.6000  acc 0.300" in bar
        else:
            assert progress.bar() is None
        for line in LINES[3:]:
            progress.line(line)
    text = console.export_text()
    assert "epoch 1/3  |  train loss 1.6000 acc 0.300  |  valid loss 1.5000 acc 0.350 rmse 1.100 mae 0.900" in text
    assert "INFO bincli.train: data: train 48" in text and "2026-11-25" not in text
    assert progress.errors == ["something broke"] and progress.epoch_rows[0]["valid_acc"] == 0.35
    if not live:
        assert "progress epoch" not in text and "img/s  loss" not in text


def test_off_a_terminal_the_step_is_shown_at_most_every_interval():
    """CI logs: between epoch lines, a plain progress line at most every `interval` seconds."""
    now = [0.0]
    console = Console(force_terminal=False, width=160, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    with TrainProgress(console, epochs=3, live=False, interval=15, clock=lambda: now[0]) as progress:
        for t, step in [(5, 1), (16, 2), (20, 3), (32, 4)]:
            now[0] = t
            progress.line(f"progress epoch=1 step={step}/6 step_loss=1.5 step_acc=0.25 step_img_s=40.0\n")
    shown = [line for line in console.export_text().splitlines() if "step " in line]
    assert shown == ["step 2/6 of epoch 1/3 (33%)  loss 1.5000 acc 0.250  40.0 img/s",
                     "step 4/6 of epoch 1/3 (67%)  loss 1.5000 acc 0.250  40.0 img/s"]


# ---------------------------------------------------------------- end to end
def test_resume_with_a_flag_that_changes_the_runs_settings_is_refused_not_ignored(tmp_path):
    from bincli.steps import runs

    record_split(tmp_path, make_split(tmp_path / "split", {"train": 2, "valid": 1, "test": 1}, "1-5", size=32))
    run = runs.choose(tmp_path, {"epochs": 1}, run_name="exp")
    fingerprint = runs.split_fingerprint(State(tmp_path).outputs("split"))
    runs.write_config(run, TrainConfig(epochs=1, lr=0.01).model_dump(mode="json"), {"epochs": 1}, False, fingerprint)
    result = runner.invoke(app, ["train", "-w", str(tmp_path), "--resume", "exp", "--epochs", "10", "--lr", "0.01"])
    assert result.exit_code == 2
    assert "--resume exp continues that run with the settings it started with; --epochs 10 would change them" \
        in result.stderr and "train without --resume" in result.stderr  # --lr 0.01 is the run's own: no change


def test_train_needs_a_split(in_tmp):
    result = runner.invoke(app, ["train", "-w", "w"])
    assert result.exit_code == 1
    assert "step 'split' has not run" in result.output and "run 'bincli split' first" in result.output


@pytest.mark.slow
def test_train_step_with_two_ddp_processes(tmp_path):
    """torchrun, 2 CPU processes (gloo): ranks agree, only rank 0 writes, metrics count each image once."""
    split = make_split(tmp_path, {"train": 5, "valid": 1, "test": 3}, "1-5", size=32)  # 5 valid images: 3 + 2
    record_split(tmp_path, split)
    cfg = TrainConfig(epochs=2, nproc_per_node=2, **FAST)
    result = run_train(Config(workdir=tmp_path, train=cfg), console=Console(file=open(os.devnull, "w")))  # noqa: SIM115

    log = Path(result["log"]).read_text()
    assert "torch.distributed.run" in log and "distributed: rank 0 of 2" in log
    assert "ranks agree: 2 ranks" in log
    assert [line.split()[0] for line in log.splitlines() if line.startswith("epoch=")] == ["epoch=1", "epoch=2"]
    run_dir = tmp_path / "runs" / "train"
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == ["model.pth", "model_info.json"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # the reduced valid metrics equal one process evaluating the saved model on all 5 images
    job = json.loads((run_dir / "output" / "metrics.json").read_text())
    spec = ClassSpec.parse("1-5")
    model = build_model("resnet18", 5)
    model.load_state_dict(torch.load(run_dir / "model" / "model.pth", weights_only=True))
    model = model.to(memory_format=torch.channels_last)
    samples = load_channel(split["manifests_dir"], "valid", spec, split["data_root"])
    valid = CountDataset(samples, 32, eval_transform(32))
    alone = evaluate(model, build_loader(valid, 8, ShardSampler(len(valid)), 0), ctx=DistContext(),
                     labels=spec.labels, counts=spec.counts)
    assert job["valid"]["n"] == 5 and job["valid"]["confusion_matrix"] == alone["confusion_matrix"]
    # the logits gathered from both ranks give the one-process log-loss; the reported one is after the
    # temperature fitted on them (never higher)
    assert job["calibration"]["valid_log_loss_before"] == pytest.approx(alone["log_loss"], rel=1e-4)
    assert job["valid"]["log_loss"] == pytest.approx(job["calibration"]["valid_log_loss_after"], rel=1e-6)
    assert job["valid"]["log_loss"] <= alone["log_loss"] + 1e-6

    assert set(json.loads(Path(result["metrics"]).read_text())) >= REPORT_KEYS
    _check_model_tar(Path(result["model"]))
    recorded = State(tmp_path).outputs("train")
    assert recorded["model"] == str(run_dir / "model.tar.gz") and recorded["split"] == "test"
    assert (tmp_path / "model" / "model.tar.gz").read_bytes() == (run_dir / "model.tar.gz").read_bytes()  # latest
    assert recorded["accuracy"] == result["accuracy"] and recorded["hyperparameters"]["classes"] == "1-5"


@pytest.mark.slow
def test_cli_train_end_to_end_then_rerun_has_nothing_to_resume(in_tmp):
    split = make_split(in_tmp / "w", {"train": 4, "valid": 1, "test": 2}, "0-5", size=32)
    record_split(in_tmp / "w", split)
    State(in_tmp / "w").record("tune", {"best_hyperparameters": {"lr": 0.002, "weight-decay": 0.0005}})
    args = ["train", "-w", "w", "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--workers", "0",
            "--from-tune", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["hyperparameters"]["lr"] == 0.002 and out["hyperparameters"]["weight-decay"] == 0.0005
    assert out["hyperparameters"]["epochs"] == 1  # flags still apply
    assert out["split"] == "test" and out["report"]["n"] == 12 and out["best_epoch"] == 1
    report = Path(out["report_dir"])
    assert sorted(p.name for p in report.iterdir()) == ["accuracy-coverage.png", "confusion-matrix.png",
                                                        "learning-curves.png", "metrics.json", "reliability.png"]
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) >= REPORT_KEYS and set(metrics["baseline"]) >= {"accuracy", "log_loss", "rmse", "mae"}
    _check_model_tar(Path(out["model"]))
    with tarfile.open(out["model"]) as tar:
        info = json.load(tar.extractfile("model_info.json"))
    assert info["classes"] == "0-5" and info["image_size"] == 32 and info["metrics"]["test"]["n"] == 12
    snapshot = (in_tmp / "w" / "runs" / "train" / "config.yaml").read_text()
    assert snapshot.startswith("# bincli ") and "from_tune: true" in snapshot

    again = runner.invoke(app, args[:-1])  # same settings, human output
    assert again.exit_code == 0, again.output
    assert "nothing to resume" in again.output and "baseline (always" in again.output
    assert json.loads(Path(out["metrics"]).read_text())["accuracy"] == out["accuracy"]


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_next_run_resumes(tmp_path):
    split = make_split(tmp_path / "w", {"train": 6, "valid": 1, "test": 1}, "0-5", size=32)
    record_split(tmp_path / "w", split)
    cmd = [str(Path(sys.executable).parent / "bincli"), "train", "-w", str(tmp_path / "w"), "--epochs", "4",
           "--image-size", "32", "--batch-size", "4", "--workers", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINCLI_")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "w" / "runs" / "train" / "train.log"
    _wait_for(lambda: log.is_file() and "progress epoch=" in log.read_text(), 120, "training to start", proc)
    proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches bincli; bincli forwards it to the trainer
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "error: training interrupted at epoch" in err and "run 'bincli train' again to resume" in err
    ckpt = torch.load(tmp_path / "w" / "runs" / "train" / "checkpoints" / "last.pt", weights_only=True)
    stopped_at = ckpt["next"]  # mid-epoch on a slow machine, an epoch boundary on a fast one
    assert (stopped_at["epoch"], stopped_at["sample"]) > (1, 0) and stopped_at["epoch"] <= 4
    assert State(tmp_path / "w").outputs("train") is None and not (tmp_path / "w" / "model").exists()

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    last_pt = tmp_path / "w" / "runs" / "train" / "checkpoints" / "last.pt"
    resumed = f"resuming from {last_pt} at epoch {stopped_at['epoch']}"
    assert resumed in again.stderr
    epochs_after = [int(line.split()[1].split("/")[0]) for line in again.stderr.splitlines()
                    if line.startswith("epoch ")]
    assert epochs_after == list(range(stopped_at["epoch"], 5))  # the rest, not all over again
    assert State(tmp_path / "w").outputs("train")["epochs_run"] == 4
