"""The CLI shell: help, version, heavy imports kept lazy, config and status commands, the error funnel."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from bincli import __version__
from bincli.cli import app
from bincli.state import State

runner = CliRunner()


def test_help_does_not_import_heavy_packages():
    code = ("import sys; from bincli.cli import app\n"
            "try:\n    app(['--help'], prog_name='bincli')\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'torchvision', 'boto3', 'botocore', 'sagemaker', 'optuna', 'matplotlib',"
            " 'fastapi', 'PIL') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY="


def test_every_command_has_help_with_an_example():
    for command in ("download", "split", "upload", "tune", "train", "deploy", "predict", "evaluate",
                    "teardown", "status"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, command
        for flag in ("--config", "--workdir", "--json"):
            assert flag in result.output, (command, flag)


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"bincli {__version__}"


def test_config_show_json_reports_sources(in_tmp, monkeypatch):
    monkeypatch.setenv("BINCLI_TRAIN__EPOCHS", "4")
    result = runner.invoke(app, ["config", "show", "--step", "train", "--json", "--set", "train.lr=0.05"])
    assert result.exit_code == 0, result.output
    rows = {row["key"]: row for row in json.loads(result.stdout)["keys"]}
    assert rows["train.epochs"] == {"key": "train.epochs", "value": 4, "source": "env BINCLI_TRAIN__EPOCHS"}
    assert rows["train.lr"]["value"] == 0.05 and rows["train.lr"]["source"] == "flag --set"
    assert rows["train.model"]["source"] == "default"
    assert all(key.startswith("train.") for key in rows)


def test_config_validate_good_and_bad(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("split:\n  seed: 3\n")
    assert runner.invoke(app, ["config", "validate", str(good)]).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("split:\n  ratios: [0.5, 0.5, 0.5]\n")
    result = runner.invoke(app, ["config", "validate", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {bad}: split.ratios: must sum to 1.0, got 1.5"


def test_config_error_lists_each_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0\n  epochz: 3\n")
    result = runner.invoke(app, ["config", "validate", str(bad)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: 2 problems in the config"
    assert f"  - {bad}: train.epochz: unknown key; did you mean 'epochs'?" in lines


def test_status_shows_done_and_missing_steps(tmp_path, in_tmp):
    State(tmp_path / "w").record("split", {"train": 10, "valid": 2, "test": 2})
    result = runner.invoke(app, ["status", "-w", str(tmp_path / "w"), "--json"])
    assert result.exit_code == 0
    steps = {s["step"]: s for s in json.loads(result.stdout)["steps"]}
    assert steps["split"]["done"] and steps["split"]["outputs"]["train"] == 10
    assert not steps["train"]["done"]
    table = runner.invoke(app, ["status", "-w", str(tmp_path / "w")])
    assert "not run" in table.stdout and "train=10" in table.stdout


def test_unknown_flag_is_a_usage_error():
    result = runner.invoke(app, ["split", "--ratio", "0.8"])
    assert result.exit_code == 2


def test_state_file_written_atomically_and_corrupt_state_is_explained(tmp_path):
    state = State(tmp_path)
    state.record("download", {"images": 3})
    assert json.loads(state.path.read_text())["steps"]["download"]["outputs"] == {"images": 3}
    assert not list(tmp_path.glob(".state.json*"))
    state.path.write_text("{broken")
    result = runner.invoke(app, ["status", "-w", str(tmp_path)])
    assert result.exit_code == 1
    assert "unreadable state file" in result.stderr


def test_features_a_backend_lacks_are_refused_with_one_message(in_tmp):
    result = runner.invoke(app, ["tune", "--stop"])
    assert result.exit_code == 2, result.output
    assert "--stop: not available on backend local (available on: sagemaker)" in result.output
    assert not (in_tmp / "bincli-work" / "state.json").exists()  # nothing started, nothing recorded
    result = runner.invoke(app, ["deploy", "--foreground", "--set", "backend=sagemaker",
                                 "--set", "sagemaker.region=us-east-1"])
    assert result.exit_code == 2, result.output
    assert "--foreground: not available on backend sagemaker (available on: local)" in result.output
    result = runner.invoke(app, ["teardown", "--all"])
    assert result.exit_code == 2, result.output
    assert "teardown --all: not available on backend local (available on: sagemaker)" in result.output
    result = runner.invoke(app, ["train", "--no-wait"])
    assert result.exit_code == 2, result.output
    assert "--no-wait: not available on backend local (available on: sagemaker)" in result.output
