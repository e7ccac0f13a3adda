"""`bincli status`: stale steps, the next command, the endpoint's liveness, pending jobs, and a
table that fits 80 columns with paths relative to the workspace (absolute in --json)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from bincli import console
from bincli.cli import app
from bincli.state import State

runner = CliRunner()


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch):
    """The width a terminal of 80 columns gives rich (a test run from a wide terminal would not)."""
    monkeypatch.setattr(console.out, "_width", 80)


def _status(*args: str):
    result = runner.invoke(app, ["status", "-w", "w", *args])
    assert result.exit_code == 0, result.output
    return result


def _json(*args: str) -> dict:
    return json.loads(_status("--json", *args).stdout)


def _cell(table: str, step: str, column: str) -> str:
    """One cell of the table, its wrapped lines joined: _cell(t, "train", "status") == "stale (split changed)"."""
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["step", "status"])
    names = lines[header].split()
    starts = [lines[header].index(f" {name} ") + 1 for name in names]
    at = names.index(column)
    first = next(i for i, line in enumerate(lines) if line.split()[:1] == [step])
    row = [lines[first]]
    for line in lines[first + 1:]:
        if line[:starts[1]].strip() or not line.strip():  # the next step's row, or the table's end
            break
        row.append(line)
    end = starts[at + 1] if at + 1 < len(starts) else None
    return " ".join(" ".join(line[starts[at]:end] for line in row).split())


def _steps(doc: dict) -> dict:
    return {row["step"]: row for row in doc["steps"]}


def _split(workdir: Path, seed: int = 42) -> dict:
    """A split as `bincli split` records it: manifests under the workspace, photos elsewhere."""
    manifests = workdir / "splits" / f"fp{seed}"
    manifests.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid", "test"):
        (manifests / f"{name}.csv").write_text(f"id,path,count\n{seed}{name},images/{seed}{name}.jpg,3\n")
    outputs = {"train": 1, "valid": 1, "test": 1, "classes": "1-5", "data_root": str(workdir.parent / "photos"),
               "manifests_dir": str(manifests),
               "manifests": {name: str(manifests / f"{name}.csv") for name in ("train", "valid", "test")}}
    State(workdir).record("split", outputs, {"seed": seed})
    return outputs


def _train(workdir: Path, from_tune: bool = False, **config) -> None:
    """A train record as the train step leaves it (made from the split, and tune with --from-tune)."""
    State(workdir).record("train", {"model": str((workdir / "model" / "model.tar.gz").resolve()),
                                    "accuracy": 0.41234, "report_dir": str(workdir / "report")},
                          {"epochs": 3, **config}, reads=("split", "tune") if from_tune else ("split",))


def _deploy(workdir: Path, url: str, pid: int) -> None:
    """A local deploy record naming server process `pid` and `url`: what endpoint.py records once
    its server answered."""
    proc = psutil.Process(pid)
    State(workdir).record("deploy", {"backend": "local", "name": "bincli-local", "url": url, "port": 1,
                                     "pid": proc.pid, "pid_started": proc.create_time(), "cmdline": proc.cmdline(),
                                     "model": str((workdir / "model" / "model.tar.gz").resolve())}, {})


# A real HTTP server answering GET /ping 200, as a local endpoint's server does, in a process of
# its own: the deploy record names it, and conftest tears recorded endpoints down after each test.
PING_SERVER = """
from http.server import BaseHTTPRequestHandler, HTTPServer
class Ping(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", 0), Ping)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


@pytest.fixture
def pinged():
    """(the server process, its URL)."""
    proc = subprocess.Popen([sys.executable, "-c", PING_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())  # printed once it listens
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_a_resplit_leaves_train_and_evaluate_stale_and_names_train_next(in_tmp):
    wd = in_tmp / "w"
    _split(wd)
    _train(wd)
    State(wd).record("evaluate", {"split": "test", "accuracy": 0.4}, {"split": "test"})
    steps = _steps(_json())
    assert steps["train"]["status"] == "done" and steps["evaluate"]["status"] == "done"

    _split(wd, seed=7)  # a new split: the model and its evaluation were made from the old one
    doc = _json()
    steps = _steps(doc)
    assert steps["split"]["status"] == "done"
    assert steps["train"]["status"] == "stale" and steps["train"]["reasons"][0].startswith("split changed since")
    assert steps["evaluate"]["status"] == "stale"
    assert steps["train"]["done"]  # stale is still a result on disk (older readers of "done")
    assert doc["next"]["command"] == "bincli train -w w"
    assert "split changed" in doc["next"]["why"]
    table = _status().stdout
    assert _cell(table, "train", "status") == "stale (split changed)"
    assert _cell(table, "evaluate", "status") == "stale (split changed)"
    assert "next: bincli train -w w" in table


@pytest.mark.parametrize(("setup", "args", "expected"), [
    ("empty", [], "bincli download --per-class 500 -w w"),  # nothing chosen: download's own example
    ("empty", ["--set", "download.ids=[\"00002\"]"], "bincli download -w w"),
    ("empty", ["--set", "split.input=photos"], "bincli split -w w"),  # split reads any folder
    ("split", [], "bincli train -w w"),  # local, no upload.s3_uri: nothing to upload; tune is optional
    ("split", ["--set", "upload.s3_uri=s3://bucket/abid"], "bincli upload -w w"),
    ("tuned", [], "bincli train --from-tune -w w"),
    ("trained", [], "bincli deploy -w w"),
    ("tuned-then-trained-without", [], "bincli deploy -w w"),  # a search nothing used is not in the way
])
def test_next_command_follows_the_workspace(in_tmp, setup, args, expected):
    wd = in_tmp / "w"
    if setup != "empty":
        _split(wd)
    if setup.startswith("tuned"):
        State(wd).record("tune", {"trials": 4, "best_trial": 2, "best_value": 0.5,
                                  "best_hyperparameters": {"lr": 0.01}}, {"max_jobs": 4})
    if setup == "tuned-then-trained-without":
        _split(wd, seed=9)  # the search is stale now, and train (made without it) too...
        _train(wd)          # ...until train runs again, still without it
    if setup == "trained":
        _train(wd)
    assert _json(*args)["next"]["command"] == expected


def test_next_repeats_the_config_file_that_chose_the_workspace(in_tmp):
    (in_tmp / "my config.yaml").write_text("workdir: w\n")
    result = runner.invoke(app, ["-c", "my config.yaml", "status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["next"]["command"] == "bincli download --per-class 500 -c 'my config.yaml'"


def test_a_deployed_endpoint_is_alive_or_not_answering(in_tmp, pinged):
    server, url = pinged
    wd = in_tmp / "w"
    _split(wd)
    _train(wd)
    _deploy(wd, url, server.pid)
    doc = _json()
    deploy = _steps(doc)["deploy"]
    assert deploy["endpoint"]["alive"] is True and deploy["endpoint"]["status"] == "running"
    # Deployed, not evaluated: evaluate, or one photo of the test split through the endpoint.
    assert doc["next"]["command"] == "bincli evaluate -w w"
    assert f"bincli predict {Path('photos/images/42test.jpg')}" in doc["next"]["why"]
    table = _status().stdout
    assert _cell(table, "deploy", "status") == "done, alive"
    assert _cell(table, "deploy", "outputs") == f"name=bincli-local, url={url}"

    State(wd).record("evaluate", {"split": "test", "accuracy": 0.4}, {"split": "test"})
    doc = _json()
    assert doc["next"]["command"] == "bincli predict photos/images/42test.jpg -w w"
    assert "bincli teardown" in doc["next"]["why"]

    # A new model since deploy: the endpoint still answers, with the old one.
    State(wd).record("train", {"model": str(wd.resolve() / "runs" / "train2" / "model.tar.gz")}, {"epochs": 3},
                     reads=("split",))
    doc = _json()
    assert doc["next"]["command"] == "bincli deploy --update -w w"
    assert _cell(_status().stdout, "deploy", "status") == "stale, alive (train changed)"

    server.send_signal(signal.SIGSTOP)  # the process lives on, wedged: nothing answers /ping
    doc = _json()
    assert _steps(doc)["deploy"]["endpoint"]["alive"] is False
    assert doc["next"]["command"] == "bincli deploy -w w"  # a new server (not --update: nothing answers)
    assert _cell(_status().stdout, "deploy", "status") == "stale, not answering (train changed)"


def test_an_endpoint_whose_process_is_gone_is_not_answering(in_tmp, pinged):
    server, url = pinged  # something answers at the URL, but not the server process deploy started
    wd = in_tmp / "w"
    _split(wd)
    _train(wd)
    _deploy(wd, url, server.pid)
    State(wd).record("deploy", {**State(wd).outputs("deploy"), "pid_started": 1.0}, {})  # a reused pid
    doc = _json()
    endpoint = _steps(doc)["deploy"]["endpoint"]
    assert endpoint["status"] == "not running" and endpoint["alive"] is False
    assert doc["next"] == {"command": "bincli deploy -w w", "why": "endpoint 'bincli-local' is not answering"}
    assert _cell(_status().stdout, "deploy", "status") == "done, not answering"


def test_a_search_started_with_no_wait_is_running_not_done(in_tmp):
    wd = in_tmp / "w"
    _split(wd)
    # What `bincli tune --no-wait` records on backend sagemaker before the search has a result.
    State(wd).record("tune", {"backend": "sagemaker", "tuning_job": "bincli-tune-1201", "status": "InProgress",
                              "checkpoints": "s3://b/p/"}, {"max_jobs": 4})
    doc = _json()
    tune = _steps(doc)["tune"]
    assert tune["status"] == "running" and not tune["done"]
    assert doc["next"]["command"] == "bincli tune -w w"
    assert "bincli-tune-1201 was started with --no-wait" in doc["next"]["why"]
    table = _status().stdout
    assert _cell(table, "tune", "status") == "running"
    assert _cell(table, "tune", "outputs") == "tuning_job=bincli-tune-1201"


def test_table_paths_are_relative_to_the_workspace_and_fit_80_columns_json_keeps_them_absolute(in_tmp):
    wd = in_tmp / "w"
    _split(wd)
    _train(wd)
    result = _status()
    assert result.stderr == ""  # the table, the notes and the next line are results: stdout
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines if not line.startswith("next: ")) <= 80, "\n".join(lines)
    assert _cell(result.stdout, "train", "outputs") == "model=model/model.tar.gz, accuracy=0.4123"
    assert _cell(result.stdout, "split", "outputs") == "train=1, valid=1, test=1, manifests_dir=splits/fp42"
    assert str(wd.resolve()) not in result.stdout.replace("\n", "")

    doc = _json()
    assert doc["workdir"] == str(wd.resolve())
    assert _steps(doc)["train"]["outputs"]["model"] == str(wd.resolve() / "model" / "model.tar.gz")
    assert _steps(doc)["split"]["outputs"]["manifests_dir"] == str(wd / "splits" / "fp42")
    assert _steps(doc)["train"]["finished_at"].endswith("+00:00")  # whole, not the table's "12-01 10:05"


def test_settings_that_differ_now_are_a_note_not_stale(in_tmp):
    wd = in_tmp / "w"
    _split(wd)
    _train(wd, lr=0.001)
    doc = _json("--set", "train.epochs=5")
    train = _steps(doc)["train"]
    assert train["status"] == "done" and train["config_differs"] == ["train.epochs: 3 -> 5"]
    assert doc["next"]["command"] == "bincli deploy -w w"  # a different setting does not block the way on
    out = _status("--set", "train.epochs=5").stdout
    assert _cell(out, "train", "status") == "done (config differs)"
    assert "train: config differs since it ran: train.epochs 3 -> 5 ('bincli pipeline' would redo it)" in (
        " ".join(out.split()))


def test_quiet_never_silences_the_status(in_tmp):
    _split(in_tmp / "w")
    result = runner.invoke(app, ["status", "-w", "w", "-q"])
    assert result.exit_code == 0 and "next: bincli train -w w" in result.stdout
