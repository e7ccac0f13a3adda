"""Training runs (issue 18): a folder per run under <workdir>/runs/, never a blocked checkpoint.

Other settings start a new run and never fail; the identical command after an interrupt resumes
its run; --run-name, --resume RUN and --fresh are explicit; <workdir>/model/model.tar.gz and
<workdir>/report/metrics.json are the latest finished run's; every output names the model's sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from bincli.backends.local.launcher import _public_reason, show_child_line
from bincli.backends.local.tuner import SEARCH_FILE, _set_aside_other_search
from bincli.config import Config, TrainConfig
from bincli.errors import ConfigError, UsageError
from bincli.progress import TrainProgress
from bincli.state import State
from bincli.steps import runs
from bincli.steps.evaluate import run_evaluate
from bincli.steps.train import run_train
from train_blobs import make_split, record_split

TINY = {"epochs": 1, "image_size": 32, "batch_size": 4, "workers": 0, "device": "cpu", "cache": False}
TINY_FLAGS = ["--epochs", "1", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
              "--no-cache"]
QUIET = Console(file=io.StringIO())


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def work(tmp_path) -> Path:
    w = tmp_path / "w"
    record_split(w, make_split(w, {"train": 2, "valid": 1, "test": 1}, "0-2", size=32))
    return w


def _cfg(work: Path, **train) -> Config:
    return Config(workdir=work, train=TrainConfig(**{**TINY, **train}))


def _bincli(work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINCLI_")}
    return subprocess.run([str(Path(sys.executable).parent / "bincli"), *args, "-w", str(work)], cwd=work.parent,
                          env=env, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- choosing the run (no training)
def test_runs_are_numbered_and_matched_by_settings_not_by_operational_flags(tmp_path):
    wanted = runs.settings({"lr": 0.001, "epochs": 1, "workers": 2, "cache": True}, "split-a")
    first = runs.choose(tmp_path, wanted)
    assert (first.name, first.existed) == ("train", False)
    runs.write_config(first, {}, {"lr": 0.001, "epochs": 1, "workers": 2, "cache": True}, False, "split-a")
    # workers/cache change how fast, not what is learnt: the same run continues
    same = runs.choose(tmp_path, runs.settings({"lr": 0.001, "epochs": 1, "workers": 0, "cache": False}, "split-a"))
    assert (same.name, same.existed) == ("train", True)
    for other in (runs.settings({"lr": 0.002, "epochs": 1}, "split-a"), runs.settings({"lr": 0.001, "epochs": 1},
                                                                                       "split-b")):
        assert runs.choose(tmp_path, other).name == "train2"
    (tmp_path / "runs" / "train7").mkdir()  # never reuses a number
    assert runs.next_name(tmp_path) == "train8"


def test_explicit_run_flags_say_what_is_wrong(tmp_path):
    hp = {"lr": 0.001, "epochs": 1}
    exp = runs.choose(tmp_path, runs.settings(hp, "s"), run_name="exp")
    runs.write_config(exp, {}, hp, False, "s")
    with pytest.raises(UsageError) as info:
        runs.choose(tmp_path, runs.settings({**hp, "epochs": 5}, "s"), run_name="exp")
    assert "--epochs 1 -> 5" in info.value.message and "--fresh" in info.value.hint and "--run-name" in info.value.hint
    assert runs.choose(tmp_path, runs.settings({**hp, "epochs": 5}, "s"), run_name="exp", fresh=True).existed
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(UsageError, match="--run-name"):
            runs.check_name(bad)
    with pytest.raises(UsageError, match=r"--resume nope: no such run .* \(runs: exp\)"):
        runs.choose(tmp_path, {}, resume="nope")
    assert runs.choose(tmp_path, {}, resume="last").name == "exp"
    with pytest.raises(UsageError, match="give one of them"):
        runs.choose(tmp_path, {}, resume="exp", run_name="exp")


def test_child_info_lines_only_with_verbose_and_errors_said_once():
    lines = ["2026-01-01 10:00:00,001 INFO bincli.train: hyperparameters: {'lr': 0.001}\n",
             "2026-01-01 10:00:00,002 INFO bincli.train: cache: /w/cache\n",
             "2026-01-01 10:00:00,003 INFO bincli.train: resuming from /w/runs/train/checkpoints/last.pt at epoch 2\n",
             "2026-01-01 10:00:00,004 WARNING bincli.train: ignoring unknown arguments: --x\n",
             "2026-01-01 10:00:00,005 ERROR bincli.train: error: it broke\n",
             "2026-01-01 10:00:00,006 ERROR bincli.train: hint: start over with --resume never\n"]
    for verbose in (False, True):
        buf = io.StringIO()
        progress = TrainProgress(Console(file=buf, width=200), 1, live=False)
        on_line = show_child_line(progress, verbose)
        for line in lines:
            on_line(line)
        shown = buf.getvalue()
        assert "resuming from" in shown and "ignoring unknown arguments" in shown
        assert ("hyperparameters:" in shown) is verbose and ("cache: /w/cache" in shown) is verbose
        assert ("--resume never" in shown) is verbose  # the entry point's own flags only with -v
        assert progress.errors == ["it broke"] and progress.hints == ["start over with --resume never"]


def test_a_refused_checkpoint_is_told_in_public_words():
    made = _public_reason("/w/runs/train/checkpoints/last.pt was made with other settings (--lr 0.001 -> 0.002); "
                          "only epochs, batch-size, workers, patience and cache may change on resume", "train")
    assert made == "run train's checkpoint was made with other settings (--lr 0.001 -> 0.002)"
    data = _public_reason("/w/ckpt/last.pt was trained on other data (train set fingerprint ab12 != cd34)", "train2")
    assert data == "run train2's checkpoint was trained on another split" and "fingerprint" not in data


def test_another_search_keeps_the_earlier_ones_trial_logs(tmp_path):
    (tmp_path / "trial-000").mkdir()
    (tmp_path / "trial-000" / "train.log").write_text("search a\n")
    (tmp_path / "tune-results.csv").write_text("trial\n0\n")
    _set_aside_other_search(tmp_path, "bincli-aaaa")  # the first search: nothing to set aside
    assert (tmp_path / "trial-000" / "train.log").is_file()
    _set_aside_other_search(tmp_path, "bincli-bbbb")
    assert (tmp_path / "bincli-aaaa" / "trial-000" / "train.log").read_text() == "search a\n"
    assert not (tmp_path / "trial-000").exists() and (tmp_path / "bincli-aaaa" / "tune-results.csv").is_file()
    assert json.loads((tmp_path / SEARCH_FILE).read_text()) == {"study": "bincli-bbbb"}


# ---------------------------------------------------------------- real training
def _check_latest_is(work: Path, result: dict) -> None:
    run_dir = work.resolve() / "runs" / result["run"]
    sha = _sha(run_dir / "model.tar.gz")
    assert result["model_sha256"] == sha and result["model"] == str(run_dir / "model.tar.gz")
    assert _sha(work / "model" / "model.tar.gz") == sha  # the interface CI scripts read
    latest = json.loads((work / "report" / "metrics.json").read_text())
    assert (latest["run"], latest["model_sha256"]) == (result["run"], sha)
    assert json.loads((run_dir / "report" / "metrics.json").read_text())["model_sha256"] == sha
    recorded = State(work).outputs("train")
    assert (recorded["run"], recorded["model_sha256"], recorded["model"]) == (result["run"], sha, result["model"])


@pytest.mark.slow
def test_other_settings_start_a_new_run_and_the_same_settings_find_theirs(work):
    first = run_train(_cfg(work), console=QUIET)
    assert first["run"] == "train"
    _check_latest_is(work, first)
    first_sha = first["model_sha256"]

    second = run_train(_cfg(work, image_size=48), console=QUIET)  # was: "made with other settings", exit 1
    assert second["run"] == "train2" and second["model_sha256"] != first_sha
    _check_latest_is(work, second)
    assert _sha(work / "runs" / "train" / "model.tar.gz") == first_sha  # the earlier run is kept as it was
    assert yaml.safe_load((work / "runs" / "train2" / "config.yaml").read_text())["hyperparameters"]["image-size"] == 48

    out = io.StringIO()
    again = run_train(_cfg(work), console=Console(file=out, width=200))  # the first settings again: their run
    assert again["run"] == "train" and "run train" in out.getvalue() and "nothing to resume" in out.getvalue()
    _check_latest_is(work, again)
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["train", "train2"]


@pytest.mark.slow
def test_cli_run_name_fresh_and_resume(work):
    made = _bincli(work, "train", "--run-name", "exp", *TINY_FLAGS, "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["run"] == "exp" and (work / "runs" / "exp" / "model.tar.gz").is_file()
    before = _sha(work / "runs" / "exp" / "model.tar.gz")

    clash = _bincli(work, "train", "--run-name", "exp", *TINY_FLAGS, "--lr", "0.01")
    assert clash.returncode == 2, clash.stderr
    assert "run 'exp'" in clash.stderr and "--lr 0.001 -> 0.01" in clash.stderr and "--fresh" in clash.stderr
    assert _sha(work / "runs" / "exp" / "model.tar.gz") == before  # nothing touched

    # --resume RUN: that run with its own settings (a finished one: its model again); a flag that would
    # change them is refused, not dropped; flags equal to the run's own are fine
    changed = _bincli(work, "train", "--resume", "exp", *TINY_FLAGS, "--lr", "0.5", "--json")
    assert changed.returncode == 2 and "--lr 0.5 would change them" in changed.stderr
    resumed = _bincli(work, "train", "--resume", "exp", *TINY_FLAGS, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["hyperparameters"]["lr"] == 0.001 and "nothing to resume" in resumed.stderr
    missing = _bincli(work, "train", "--resume", "nope")
    assert missing.returncode == 2 and "no such run" in missing.stderr and "exp" in missing.stderr

    fresh = _bincli(work, "train", "--run-name", "exp", *TINY_FLAGS, "--lr", "0.01", "--fresh", "--json")
    assert fresh.returncode == 0, fresh.stderr
    out = json.loads(fresh.stdout)
    assert out["run"] == "exp" and out["hyperparameters"]["lr"] == 0.01 and out["epochs_run"] == 1
    assert "nothing to resume" not in fresh.stderr  # started over, not the old checkpoint
    assert _sha(work / "model" / "model.tar.gz") == out["model_sha256"] != before
    assert " INFO " not in f" {fresh.stderr} "  # the entry point's INFO lines only with -v (and in train.log)
    assert " INFO " in (work / "runs" / "exp" / "train.log").read_text()


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_interrupted_new_run_resumes_with_the_same_command(tmp_path):
    work = tmp_path / "w"
    record_split(work, make_split(work, {"train": 6, "valid": 1, "test": 1}, "0-5", size=32))
    first = _bincli(work, "train", *TINY_FLAGS)
    assert first.returncode == 0, first.stderr
    first_sha = _sha(work / "model" / "model.tar.gz")

    args = ["train", "--epochs", "4", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--device",
            "cpu", "--no-cache"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINCLI_")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bincli"), *args, "-w", str(work)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = work / "runs" / "train2" / "train.log"  # other settings (4 epochs): a new run
    _wait_for(lambda: log.is_file() and "progress epoch=" in log.read_text(), 120, "training to start", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run train2 keeps its checkpoint" in err and "--resume train2" in err
    stopped_at = torch.load(work / "runs" / "train2" / "checkpoints" / "last.pt", weights_only=True)["next"]
    assert State(work).outputs("train")["run"] == "train"  # the latest FINISHED run is still the first
    assert _sha(work / "model" / "model.tar.gz") == first_sha

    again = _bincli(work, *args)
    assert again.returncode == 0, again.stderr
    assert f"resuming from {work.resolve() / 'runs' / 'train2' / 'checkpoints' / 'last.pt'}" in again.stderr
    epochs_after = [int(line.split()[1].split("/")[0]) for line in again.stderr.splitlines()
                    if line.startswith("epoch ")]
    assert epochs_after == list(range(stopped_at["epoch"], 5))  # the rest, not all over again
    recorded = State(work).outputs("train")
    assert recorded["run"] == "train2" and recorded["epochs_run"] == 4
    assert _sha(work / "model" / "model.tar.gz") == recorded["model_sha256"] != first_sha
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["train", "train2"]


@pytest.mark.slow
def test_evaluate_writes_into_the_run_of_the_model_and_names_its_sha(work):
    first = run_train(_cfg(work), console=QUIET)
    second = run_train(_cfg(work, lr=0.01), console=QUIET)
    latest = run_evaluate(_cfg(work), "test", in_process=True)  # the latest finished run
    assert latest["report_dir"] == str(work.resolve() / "runs" / "train2" / "evaluate-test")
    assert (latest["run"], latest["model_sha256"]) == ("train2", second["model_sha256"])
    metrics = json.loads(Path(latest["metrics"]).read_text())
    assert (metrics["run"], metrics["model_sha256"]) == ("train2", second["model_sha256"])

    older = run_evaluate(_cfg(work), "valid", run="train")
    assert older["report_dir"] == str(work.resolve() / "runs" / "train" / "evaluate-valid")
    assert older["model_sha256"] == first["model_sha256"]
    # the latest copy is known by its sha256
    copy = run_evaluate(_cfg(work), "valid", model=work / "model" / "model.tar.gz")
    assert copy["run"] == "train2" and copy["report_dir"].endswith("runs/train2/evaluate-valid")
    assert not (work / "report" / "evaluate-test").exists()
    with pytest.raises(UsageError, match="--run nope: no finished run"):
        run_evaluate(_cfg(work), "test", run="nope")


@pytest.mark.parametrize("name", ["ok\n", "ok\r", "a\nb", "", "-x", "x" * 65])
def test_a_run_name_with_a_newline_or_outside_the_alphabet_is_refused(name):
    from bincli.steps.runs import check_name

    with pytest.raises(UsageError, match="--run-name"):
        check_name(name)
    assert check_name("run-1.b_2") == "run-1.b_2"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_train_that_fails_before_training_leaves_no_empty_run(tmp_path):
    record_split(tmp_path, make_split(tmp_path / "split", {"train": 2, "valid": 1, "test": 1}, "1-5", size=32))
    cfg = Config(workdir=tmp_path, train=TrainConfig(device="cuda", epochs=1))
    with pytest.raises(ConfigError, match=r"train\.device: cuda"):
        run_train(cfg, console=Console(file=io.StringIO()))
    assert runs.list_runs(tmp_path) == []  # not train1 holding only its config.yaml
    assert not (tmp_path / "runs" / "train1").exists()
