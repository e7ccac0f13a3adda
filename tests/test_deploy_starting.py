"""A deploy killed after "starting endpoint" (issue 28, item 7): the record it left is settled by
the next command: completed when its server answers /ping, cleared when no server of it runs."""

from __future__ import annotations

import json
import os

from bincli.backends.local.endpoint import RUNTIME_FILE, _identity_if_alive, endpoint_dir, running_endpoint
from bincli.config import Config
from bincli.state import State
from serving_support import ServerThread, model  # noqa: F401 (a fixture)


def _left_starting(workdir, pid: int) -> dict:
    """The record deploy writes before it waits for /ping, as a killed deploy leaves it."""
    record = {"name": "bincli-test", "host": "127.0.0.1", "model": "m.tar.gz", "threads": 1,
              **_identity_if_alive(pid), "servers": [_identity_if_alive(pid)], "port": 0, "url": None,
              "starting": True, "foreground": False}
    State(workdir).record("deploy", record, {"name": "bincli-test"})
    return record


def test_a_record_left_starting_is_completed_when_its_server_answers(model, tmp_path):  # noqa: F811
    workdir = tmp_path / "work"
    _left_starting(workdir, os.getpid())  # "the server": a live process (this one) that serves below
    with ServerThread(model, name="bincli-test") as srv:
        ep_dir = endpoint_dir(workdir, "bincli-test")
        ep_dir.mkdir(parents=True)
        (ep_dir / RUNTIME_FILE.format(0)).write_text(json.dumps({"pid": os.getpid(), "port": srv.port,
                                                                  "url": srv.url}))
        record = running_endpoint(Config(workdir=workdir))
    assert record["url"] == srv.url and record["port"] == srv.port and "starting" not in record
    assert State(workdir).outputs("deploy") == record  # settled in state: the next command needs no check
    assert State(workdir).step("deploy")["config"] == {"name": "bincli-test"}


def test_a_record_left_starting_whose_server_is_gone_is_cleared(tmp_path):
    import subprocess
    import sys

    workdir = tmp_path / "work"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    _left_starting(workdir, gone.pid)
    gone.wait()
    from bincli.errors import StateError

    try:
        running_endpoint(Config(workdir=workdir))
        raise AssertionError("a cleared record is no endpoint")
    except StateError as exc:
        assert "none is deployed" in exc.message
    assert State(workdir).outputs("deploy") is None
