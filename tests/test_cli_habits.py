"""CLI habits users bring from other tools (issue 18): global options before or after the command
name, renamed flags with their old spelling kept, plain help, `config validate -c/--set`, the
`--model` message, and output files that respect the umask.

Steps and backends are replaced by recorders (as in test_cli_wiring.py): nothing heavy runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import Config, DeployConfig, DownloadConfig, UploadConfig

runner = CliRunner()


class Recorder:
    def __init__(self, result: Any):
        self.result = result
        self.calls: list[tuple[tuple, dict]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result


class FakeBackend:
    """get_backend(cfg) stand-in: records the config and the call."""

    def __init__(self, result: dict[str, Any]):
        self.result = result
        self.calls: list[tuple[Config, str, Any]] = []
        self.cfg: Config | None = None

    def get_backend(self, cfg: Config) -> FakeBackend:
        self.cfg = cfg
        return self

    def upload(self) -> dict[str, Any]:
        self.calls.append((self.cfg, "upload", None))
        return self.result

    def deploy(self, model: Path | None, update: bool, foreground: bool) -> dict[str, Any]:
        self.calls.append((self.cfg, "deploy", None))
        return self.result

    def teardown(self, name: str | None) -> dict[str, Any]:
        self.calls.append((self.cfg, "teardown", name))
        return self.result

    def preflight(self, steps: list[str]) -> list:
        return []  # nothing to check or to bill


@pytest.fixture
def backend(monkeypatch) -> FakeBackend:
    fake = FakeBackend({"ok": True})
    monkeypatch.setattr("bincli.backends.get_backend", fake.get_backend)
    return fake


def run(args: list[str], code: int = 0):
    result = runner.invoke(app, args)
    assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def workdir_of(args: list[str]) -> str:
    """The workdir `status --json` resolved (its last part: status may print it absolute)."""
    return Path(json.loads(run([*args, "--json"]).stdout)["workdir"]).name


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- options before or after the command
def test_config_workdir_and_json_work_before_or_after_the_command_name(in_tmp):
    write(in_tmp / "x.yaml", "workdir: from-x\n")
    write(in_tmp / "y.yaml", "workdir: from-y\n")
    after = json.loads(run(["status", "-c", "x.yaml", "--json"]).stdout)
    before = json.loads(run(["-c", "x.yaml", "--json", "status"]).stdout)
    assert before == after and Path(before["workdir"]).name == "from-x"
    # The command's own -c/-w win over the ones before its name.
    assert workdir_of(["-c", "x.yaml", "status", "-c", "y.yaml"]) == "from-y"
    assert workdir_of(["-w", "a", "status", "-w", "b"]) == "b"
    assert workdir_of(["-w", "a", "-c", "x.yaml", "status"]) == "a"
    # Nothing carries over to the next invocation in the same process.
    assert workdir_of(["status"]) == "bincli-work"

    # A subcommand of a group: `config show -c x.yaml` and `-c x.yaml config show` agree.
    shown = [json.loads(run(args).stdout) for args in (["config", "show", "-c", "x.yaml", "--json"],
                                                        ["-c", "x.yaml", "config", "show", "--json"])]
    assert shown[0] == shown[1] and shown[0]["config_file"] == "x.yaml"
    sources = {row["key"]: row["source"] for row in json.loads(run(["-w", "w", "config", "show", "--json"]).stdout)
               ["keys"]}
    assert sources["workdir"] == "flag --workdir"


def test_quiet_and_verbose_work_after_the_command_name(in_tmp, backend):
    backend.result = {"name": "ep", "model": "m.tar.gz", "url": "http://127.0.0.1:1", "pid": 1, "log": "l"}
    loud = run(["deploy"])
    assert "serving m.tar.gz" in loud.stdout and "next: bincli predict" in loud.stderr
    for args in (["deploy", "-q"], ["-q", "deploy"], ["deploy", "--quiet"]):
        quiet = run(args)
        assert "serving m.tar.gz" in quiet.stdout and quiet.stderr == "", args  # results stay, hints go

    run(["status", "-v"])
    assert logging.getLogger("bincli").level == logging.DEBUG
    run(["status"])
    assert logging.getLogger("bincli").level == logging.INFO
    run(["-q", "status", "-v"])  # both given: each on its side, as before the command name
    assert logging.getLogger("bincli").level == logging.DEBUG


def test_split_with_workdir_and_quiet_before_the_name(in_tmp, monkeypatch):
    rec = Recorder({"ok": True})
    monkeypatch.setattr("bincli.data.split.run_split", rec)
    out = run(["-w", "wd", "-q", "split", "--ratios", "0.7", "0.2", "0.1", "--json"])
    assert json.loads(out.stdout) == {"ok": True} and out.stderr == ""
    (split_cfg, workdir), _ = rec.calls.pop()
    assert workdir == Path("wd") and split_cfg.ratios == (0.7, 0.2, 0.1)
    # The help says the ratios are space-separated; commas are refused by the parser, not half-read.
    commas = run(["split", "--ratios", "0.8,0.1,0.1"], code=2)
    assert "--ratios" in commas.stderr and not rec.calls


# ---------------------------------------------------------------- renamed flags
def test_endpoint_is_e_on_deploy_and_teardown_and_name_still_works(in_tmp, backend):
    for flag in ("-e", "--endpoint", "--name"):
        run(["deploy", flag, "ep-1", "--json"])
        cfg, method, _ = backend.calls.pop()
        assert cfg.deploy == DeployConfig(name="ep-1") and method == "deploy", flag
        run(["teardown", flag, "ep-1", "--json"])
        assert backend.calls.pop()[1:] == ("teardown", "ep-1"), flag
    run(["deploy", "-e", "ep-1", "--name", "ep-1", "--json"])  # the same value twice is no conflict
    backend.calls.pop()

    both = run(["deploy", "-e", "ep-1", "--name", "ep-2"], code=2)
    assert both.stderr.strip() == "error: --endpoint ep-1 and --name ep-2 (its old name) disagree; give --endpoint only"
    assert run(["teardown", "--all", "-e", "ep-1"], code=2).stderr.startswith(
        "error: --all removes everything this workspace made: do not combine it with --endpoint")
    bad = run(["deploy", "--name", "bad_name!"], code=2)  # the error names the public flag
    assert bad.stderr.startswith("error: --endpoint: deploy.name: must be 1-63 letters")
    assert not backend.calls


def test_s3_endpoint_url_on_download_and_upload_and_the_old_spelling(in_tmp, monkeypatch, backend):
    rec = Recorder({"images": 1})
    monkeypatch.setattr("bincli.data.download.run_download", rec)
    for flag in ("--s3-endpoint-url", "--endpoint-url"):
        run(["download", flag, "http://127.0.0.1:9000/", "--json"])
        (cfg, _, _), _ = rec.calls.pop()
        assert cfg == DownloadConfig(endpoint_url="http://127.0.0.1:9000"), flag
        run(["upload", flag, "http://127.0.0.1:9000", "--json"])
        assert backend.calls.pop()[0].upload == UploadConfig(endpoint_url="http://127.0.0.1:9000"), flag
    bad = run(["download", "--endpoint-url", "ftp://x"], code=2)
    assert bad.stderr.startswith("error: --s3-endpoint-url: download.endpoint_url: must be an http(s):// URL")
    both = run(["download", "--s3-endpoint-url", "http://a:1", "--endpoint-url", "http://b:1"], code=2)
    assert "--s3-endpoint-url http://a:1 and --endpoint-url http://b:1 (its old name) disagree" in both.stderr


def test_old_spellings_are_hidden_from_help():
    for command, new, old in (("deploy", "--endpoint", "--name"), ("teardown", "--endpoint", "--name"),
                              ("download", "--s3-endpoint-url", "--endpoint-url"),
                              ("upload", "--s3-endpoint-url", "--endpoint-url")):
        text = run([command, "--help"]).stdout
        assert new in text and not re.search(rf"{old}\b(?!-)", text.replace("--s3-endpoint-url", "")), command
    assert "-e, --endpoint NAME" in run(["deploy", "--help"]).stdout


# ---------------------------------------------------------------- --model is the architecture
@pytest.mark.parametrize("value", ["wd/model/model.tar.gz", "model.tar.gz", "best.pt"])
def test_train_model_given_a_file_says_it_is_the_architecture(in_tmp, value):
    result = run(["train", "--model", value], code=2)
    assert result.stderr == (
        f"error: --model: train.model: is the architecture (resnet18, resnet34, resnet50), not a model file, got "
        f"{value!r}; to start from ImageNet weights use --pretrained (--weights-file FILE.pth: a local copy), "
        "to continue a run use --resume RUN\n")
    assert not (in_tmp / "bincli-work").exists()


def test_model_file_in_the_config_names_the_file_and_a_misspelt_name_keeps_the_choices(in_tmp):
    write(in_tmp / "c.yaml", "train: {model: runs/train1/model.tar.gz}\n")
    result = run(["config", "validate", "c.yaml"], code=2)
    assert result.stderr.startswith("error: c.yaml: train.model: is the architecture (resnet18, resnet34, "
                                    "resnet50), not a model file, got 'runs/train1/model.tar.gz';")
    typo = run(["train", "--model", "resnet19"], code=2)
    assert typo.stderr.strip() == ("error: --model: train.model: Input should be 'resnet18', 'resnet34' or "
                                   "'resnet50', got 'resnet19'")


# ---------------------------------------------------------------- help
COMMANDS = ("download", "inspect", "split", "upload", "tune", "train", "deploy", "predict", "evaluate", "loadtest",
            "teardown", "status", "pipeline")


def test_help_has_plain_metavars_and_defaults_written_one_way():
    helps = {c: run([c, "--help"]).stdout for c in COMMANDS}
    helps.update({f"config {c}": run(["config", c, "--help"]).stdout for c in ("show", "validate")})
    for command, text in helps.items():
        assert not re.search(r"<(int|float|str|file|dir|path|list)", text, re.I), (command, text)
        assert "[default:" not in text and "Default:" not in text, (command, text)
        for flag in ("-q, --quiet", "-v, --verbose", "--set KEY=VALUE"):
            assert flag in text, (command, flag)
    assert "--ratios TRAIN VALID TEST" in helps["split"]
    assert "Usage: bincli predict [OPTIONS] IMAGE..." in helps["predict"]
    assert "Usage: bincli config validate [OPTIONS] [FILE]" in helps["config validate"]
    assert "--layout [manifest|folders]" in helps["split"]
    assert "--slo-p95-ms FLOAT" in helps["loadtest"] and "(default 200)." in helps["loadtest"]


def test_train_help_groups_its_flags_by_meaning():
    from bincli.commands.train_options import PANEL_OF
    from bincli.core.hyperparams import CONFIG_PARAMS

    assert {p.name for p in CONFIG_PARAMS} == set(PANEL_OF)  # a new hyperparameter must pick a section
    text = run(["train", "--help"]).stdout
    sections = re.findall(r"^(\w[\w ]*):$", text, re.M)
    assert sections == ["Options", "Model", "Optimisation", "Data", "Run and hardware"]
    model = text[text.index("\nModel:"):text.index("\nOptimisation:")]
    assert "--model [resnet18|resnet34|resnet50]" in model and "not a model file" in model
    assert "--weights-file FILE" in model
    assert "--device [auto|cpu|cuda]" in text[text.index("\nRun and hardware:"):]
    assert "--lr FLOAT" in text[text.index("\nOptimisation:"):text.index("\nData:")]
    assert "(default:" not in text[text.index("\nModel:"):]  # "(default on)", like every other flag


# ---------------------------------------------------------------- config validate
def test_config_validate_takes_c_and_set_like_every_command(in_tmp, monkeypatch):
    good = write(in_tmp / "good.yaml", "split: {seed: 3}\n")
    for args in (["config", "validate", "good.yaml"], ["config", "validate", "-c", "good.yaml"],
                 ["-c", "good.yaml", "config", "validate"], ["config", "validate", "good.yaml", "-c", "good.yaml"]):
        assert json.loads(run([*args, "--json"]).stdout) == {"config_file": "good.yaml", "valid": True}, args
    bad_set = run(["config", "validate", "-c", str(good), "--set", "train.lr=0"], code=2)
    assert bad_set.stderr.strip() == "error: --set: train.lr: Input should be greater than 0, got 0"
    assert run(["config", "validate", "-c", str(good), "--set", "train.lr=0.1"]).exit_code == 0
    two = run(["config", "validate", "good.yaml", "-c", "other.yaml"], code=2)
    assert two.stderr.strip() == "error: two config files given (good.yaml and -c other.yaml): give one"
    none = run(["config", "validate"], code=2)  # in_tmp has no configs/local.yaml
    assert none.stderr.startswith("error: no config file to validate")
    monkeypatch.setenv("BINCLI_CONFIG", str(good))
    assert json.loads(run(["config", "validate", "--json"]).stdout)["config_file"] == str(good)


# ---------------------------------------------------------------- file modes
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    from bincli.core.fileio import atomic_write_json, atomic_write_text
    from bincli.state import State

    old = os.umask(umask)
    try:
        text = atomic_write_text(tmp_path / "a.csv", "id\n")
        over = atomic_write_json(tmp_path / "a.csv", {"replaced": True})  # a rename over an existing file
        State(tmp_path / "w").record("split", {"train": 1})
    finally:
        os.umask(old)
    assert text == over and json.loads(over.read_text()) == {"replaced": True}
    for path in (over, tmp_path / "w" / "state.json"):
        assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temp file left beside them


def test_a_failed_atomic_write_leaves_nothing(tmp_path):
    from bincli.core.fileio import atomic_write_bytes

    class Unwritable:
        def __len__(self):
            return 1

    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "x.bin", Unwritable())  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
