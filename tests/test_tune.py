"""`bincli tune`: real Optuna trials of the real entry point on a tiny generated split."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from bincli.backends.local.tuner import _Objective, search_space
from bincli.cli import app
from bincli.config import Config, SplitConfig, TrainConfig, TuneConfig
from bincli.core.contract import format_epoch_line
from bincli.data.split import run_split
from bincli.errors import DataError
from bincli.state import State
from bincli.steps.tune import run_tune
from helpers import make_abid_folder

runner = CliRunner()
TINY = ["--image-size", "32", "--workers", "0", "--no-cache"]


@pytest.fixture(scope="module")
def split_work(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    make_abid_folder(root / "data", {1: 12, 2: 12, 3: 12}, size=32)
    run_split(SplitConfig(input=root / "data", classes="1-3", ratios=(0.6, 0.2, 0.2)), root / "w")
    return root / "w"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_flags_given_are_fixed_and_taken_out_of_the_search():
    space = search_space(Config().tune.search_space, fixed={"lr"})
    assert set(space) == {"weight_decay", "batch_size"}
    assert space["batch_size"] == [16, 32, 64]


def _objective(tmp_path, objective="valid_loss"):
    split = {"classes": "1-3", "data_root": str(tmp_path / "data"), "manifests_dir": str(tmp_path / "m"),
             "train": 6, "valid": 2}
    train_cfg = TrainConfig(lr=0.005, epochs=1, device="cpu")
    tune = TuneConfig(max_parallel=2, epochs=1, objective=objective)
    return _Objective(None, tune, {}, train_cfg, split, tmp_path / "tune", tmp_path, console=None)


def test_a_trial_runs_the_entry_point_with_its_params_over_the_fixed_ones(tmp_path):
    objective = _objective(tmp_path)
    trial_dir = tmp_path / "tune" / "trial-004"
    cmd = objective.command({"batch_size": 16, "weight_decay": 0.002}, trial_dir)
    args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert cmd[1:3] == ["-m", "bincli.core.train"]
    assert {k: args[k] for k in ("--batch-size", "--weight-decay", "--lr", "--epochs", "--classes", "--device")} == {
        "--batch-size": "16", "--weight-decay": "0.002", "--lr": "0.005", "--epochs": "1", "--classes": "1-3",
        "--device": "cpu"}
    assert args["--checkpoint-dir"] == str(trial_dir / "checkpoints") and args["--data-root"] == str(tmp_path / "data")
    assert float(args["--log-interval"]) == 15  # a line from the trial at least this often (CI logs)
    env = objective.env(trial_dir)
    assert env["SM_MODEL_DIR"] == str(trial_dir / "model") and int(env["OMP_NUM_THREADS"]) >= 1


def test_a_trial_reports_each_epoch_and_stops_when_pruned(tmp_path):
    import optuna

    class Trial:
        def __init__(self):
            self.reported = []

        def report(self, value, step):
            self.reported.append((step, value))

        def should_prune(self):
            return len(self.reported) == 2

    best: list[float] = []
    trial = Trial()
    on_line = _objective(tmp_path, "valid_acc")._reader(trial, best)
    on_line("loading 12 images")  # not an epoch line: ignored
    on_line(format_epoch_line(1, {"train_loss": 1.0, "valid_loss": 0.9, "valid_acc": 0.4}))
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 2"):
        on_line(format_epoch_line(2, {"train_loss": 0.8, "valid_loss": 0.7, "valid_acc": 0.5}))
    assert best == [0.4, 0.5] and trial.reported == [(1, 0.4), (2, 0.5)]


def test_a_trial_shows_its_steps_and_epochs_as_they_come(tmp_path):
    import io

    from rich.console import Console

    from bincli.core.contract import format_progress_line

    objective = _objective(tmp_path)
    shown = io.StringIO()
    objective.console = Console(file=shown, width=200)

    class Trial:
        number = 7

        def report(self, value, step):
            pass

        def should_prune(self):
            return False

    on_line = objective._reader(Trial(), [], epochs=3)
    on_line(format_progress_line(1, 3, 6, 1.25, 0.5, 40.0))
    on_line(format_epoch_line(1, {"train_loss": 1.0, "train_acc": 0.4, "valid_loss": 0.9, "valid_acc": 0.4}))
    lines = shown.getvalue().splitlines()
    assert lines[0] == "trial 7: step 3/6 of epoch 1/3 (50%)  loss 1.2500 acc 0.500  40.0 img/s"
    assert lines[1].startswith("trial 7: epoch 1/3  |  train loss 1.0000 acc 0.400  |  valid loss 0.9000")


@pytest.mark.slow
def test_tune_runs_trials_records_best_and_rerun_continues(split_work, in_tmp):
    args = ["tune", "-w", str(split_work), "--max-jobs", "3", "--max-parallel", "2", "--epochs", "1",
            "--lr", "0.005", *TINY, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["trials"] == 3 and out["complete"] + out["pruned"] == 3

    rows = _rows(split_work / "tune" / "tune-results.csv")
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert set(rows[0]) == {"trial", "state", "value", "duration_s", "weight_decay", "batch_size"}  # lr fixed
    best = min((r for r in rows if r["state"] == "complete"), key=lambda r: float(r["value"]))
    assert out["best_trial"] == int(best["trial"])
    assert out["best_hyperparameters"]["batch_size"] == int(best["batch_size"])
    for trial in range(3):  # every trial ran the entry point with the fixed lr
        head = (split_work / "tune" / f"trial-{trial:03d}" / "train.log").read_text().splitlines()[0]
        assert "--lr 0.005" in head and "--image-size 32" in head and "--epochs 1" in head

    recorded = State(split_work).outputs("tune")
    assert recorded["best_hyperparameters"] == out["best_hyperparameters"]

    again = runner.invoke(app, args)  # same search: nothing left to run
    assert again.exit_code == 0 and json.loads(again.stdout)["trials"] == 3
    more = runner.invoke(app, [*args[:4], "4", *args[5:]])  # one more trial asked for: only that one runs
    assert more.exit_code == 0 and json.loads(more.stdout)["trials"] == 4


@pytest.mark.slow
def test_train_from_tune_uses_the_best_trial(split_work, in_tmp):
    best = {"best_hyperparameters": {"batch_size": 8, "weight_decay": 0.002}}
    State(split_work).record("tune", best)
    result = runner.invoke(app, ["train", "-w", str(split_work), "--from-tune", "--epochs", "1", *TINY])
    assert result.exit_code == 0, result.output
    snapshot = yaml.safe_load((split_work / "runs" / "train" / "config.yaml").read_text())
    assert snapshot["from_tune"] is True
    assert snapshot["hyperparameters"]["batch-size"] == 8
    assert snapshot["hyperparameters"]["weight-decay"] == 0.002


def test_tune_needs_a_valid_split(tmp_path):
    make_abid_folder(tmp_path / "data", {1: 4, 2: 4}, size=32)
    run_split(SplitConfig(input=tmp_path / "data", classes="1-2", ratios=(0.9, 0.0, 0.1)), tmp_path / "w")
    cfg = Config(workdir=tmp_path / "w")
    with pytest.raises(DataError, match="tune needs a valid split"):
        run_tune(cfg)


def test_tune_before_split_says_what_to_run(tmp_path, in_tmp):
    result = runner.invoke(app, ["tune", "-w", str(tmp_path / "w")])
    assert result.exit_code == 1
    assert "run 'bincli split' first" in result.stderr


def test_the_best_trial_is_shown_rounded(capsys):
    from bincli.commands.tune import _render

    _render({"complete": 2, "pruned": 0, "failed": 0, "best_trial": 1, "objective": "valid_loss",
             "best_value": 1.23456, "best_hyperparameters": {"lr": 0.0019578897201213002, "batch_size": 32},
             "results": "tune/tune-results.csv"})
    assert "best: trial 1 valid_loss=1.2346 lr=0.001958 batch_size=32" in capsys.readouterr().out
