"""The preflight as the billed commands run it (no AWS here: a backend stand-in says what it would),
the cost question (asked on a terminal only, never with --yes), the flags' wiring, and the local
backend's doctor (disk, the deploy port, GPU, chromium)."""

from __future__ import annotations

import io
import json
import socket
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from bincli.backends.checks import FAIL, OK, WARN, Check, PreflightFailed
from bincli.cli import app
from bincli.config import Config
from bincli.errors import BincliError
from bincli.steps.preflight import check_before

runner = CliRunner()
COST = Check("train cost", OK, "1 x ml.g4dn.xlarge (spot) for up to 2 h at $0.736/h each: at most $1.47", cost=True)


class Billed:
    """A backend whose preflight answers the given rows."""

    name = "stand-in"

    def __init__(self, rows: list[Check]):
        self.rows = rows
        self.asked: list[list[str]] = []

    def preflight(self, steps: list[str]) -> list[Check]:
        self.asked.append(list(steps))
        return self.rows


class Terminal(io.StringIO):
    def __init__(self, text: str, tty: bool = True):
        super().__init__(text)
        self.tty = tty
        self.reads = 0

    def isatty(self) -> bool:
        return self.tty

    def readline(self, *args: Any) -> str:
        self.reads += 1
        return super().readline(*args)


def test_a_cost_is_asked_about_on_a_terminal_and_never_with_yes_or_without_one(monkeypatch, capsys):
    for answer, confirmed in (("n\n", False), ("\n", False), ("y\n", True), ("yes\n", True)):
        monkeypatch.setattr(sys, "stdin", Terminal(answer))
        if confirmed:
            assert check_before(Config(), ["train"], backend=Billed([COST])) == [COST]
        else:
            with pytest.raises(BincliError) as raised:
                check_before(Config(), ["train"], backend=Billed([COST]))
            assert raised.value.message == "stopped before creating anything (not confirmed)"
        assert capsys.readouterr().err == f"cost: train: {COST.detail}\nGo ahead? [y/N] "
    for stdin, yes in ((Terminal("n\n"), True), (Terminal("n\n", tty=False), False)):  # --yes; CI: no terminal
        monkeypatch.setattr(sys, "stdin", stdin)
        assert check_before(Config(), ["train"], yes=yes, backend=Billed([COST])) == [COST]
        assert stdin.reads == 0


def test_a_failed_check_stops_the_step_with_one_line_and_the_fix(monkeypatch):
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    rows = [Check("region", WARN, "sagemaker.region is us-east-1 but AWS_DEFAULT_REGION says eu-west-1"),
            Check("train quota", FAIL, "ml.g4dn.xlarge for spot training job usage is 0 in us-east-1, train needs 1",
                  "aws service-quotas request-service-quota-increase ..."),
            Check("role permissions", FAIL, "arn:aws:iam::1:role/r may not ec2:CreateNetworkInterface", "attach it",
                  exit_code=2), COST]
    backend = Billed(rows)
    with pytest.raises(PreflightFailed) as raised:
        check_before(Config(), ["pipeline", "deploy", "train", "evaluate"], backend=backend)
    assert backend.asked == [["train", "deploy"]]  # only the billed steps, in pipeline order
    assert raised.value.message == ("preflight: train quota: ml.g4dn.xlarge for spot training job usage is 0 in "
                                    "us-east-1, train needs 1 (and 1 more failed check(s): role permissions)")
    assert raised.value.hint.startswith("aws service-quotas request-service-quota-increase ...; 'bincli doctor'")
    assert raised.value.exit_code == 1 and sys.stdin.reads == 0  # never asked about a step that will not run
    assert check_before(Config(), ["download", "split", "evaluate"], backend=backend) == []


def test_the_local_backend_bills_nothing_and_asks_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    assert check_before(Config(workdir=tmp_path), ["tune", "train", "deploy"]) == []
    assert sys.stdin.reads == 0


@pytest.mark.parametrize("command", [["train"], ["tune"], ["deploy"], ["pipeline", "--set", "split.input=data"]])
def test_skip_preflight_and_yes_reach_the_preflight(command, in_tmp, monkeypatch):
    seen: list[tuple[Config, list[str], bool]] = []

    def preflight(cfg, steps, *, yes=False, backend=None, console=None):
        seen.append((cfg, list(steps), yes))
        raise BincliError("stopped here")  # the step itself is not the point

    monkeypatch.setattr("bincli.steps.preflight.check_before", preflight)
    for flags, skip, yes in (([], False, False), (["--skip-preflight", "-y"], True, True), (["--yes"], False, True)):
        result = runner.invoke(app, [*command, "-w", "w", *flags])
        assert result.exit_code == 1 and "error: stopped here" in result.output, result.output
        cfg, steps, got_yes = seen.pop()
        assert cfg.sagemaker.preflight is not skip and got_yes is yes
        if command[0] != "pipeline":
            assert steps == command
        else:  # every step the plan would run (the local backend's preflight then skips the unbilled ones)
            assert {"train", "deploy"} <= set(steps)


# ---------------------------------------------------------------- the local backend's doctor
def _rows(result) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(result.stdout)["checks"]}


def test_local_doctor_fails_on_a_taken_port_and_says_how(in_tmp):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["doctor", "--set", f"deploy.port={port}", "--json"])
        assert result.exit_code == 1, result.output
        row = _rows(result)["deploy port"]
        assert row["status"] == "fail" and row["detail"].startswith(f"127.0.0.1:{port} is taken")
        assert row["fix"].startswith("--port 0")
    result = runner.invoke(app, ["doctor", "--set", f"deploy.port={port}"])
    assert result.exit_code == 0, result.output
    assert f"ok          deploy port  127.0.0.1:{port} is free" in result.stdout
    assert result.stdout.splitlines()[-1] == "backend local: ready"
    names = list(_rows(runner.invoke(app, ["doctor", "--json"])))
    assert names == ["disk", "deploy port", "cpus", "gpu", "chromium"]


def test_local_doctor_disk_and_gpu(in_tmp, monkeypatch):
    import shutil

    import torch

    from bincli.backends.local import doctor

    usage = shutil.disk_usage(in_tmp)
    for free_gib, status in ((0.5, FAIL), (3, WARN), (50, OK)):
        monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p, f=free_gib: usage._replace(free=int(f * 2**30)))
        row = doctor.doctor(Config(workdir=in_tmp / "not-yet"))[0]
        assert (row.name, row.status) == ("disk", status)
        assert row.detail.startswith(f"{free_gib:.1f} GiB free at {in_tmp}")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU rows cannot show here")
    assert doctor.doctor(Config(workdir=in_tmp))[3].status == OK  # device auto: the CPU is fine
    cuda = doctor.doctor(Config(workdir=in_tmp, train={"device": "cuda"}))[3]
    assert cuda.status == FAIL and cuda.fix.startswith("--set train.device=auto")


def test_write_policies_is_for_backend_sagemaker(in_tmp):
    result = runner.invoke(app, ["doctor", "--write-policies", "out"])
    assert result.exit_code == 2
    assert "--write-policies: not available on backend local (available on: sagemaker)" in result.output
