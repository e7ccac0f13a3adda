"""`bincli loadtest` and `deploy --instances N`: the pure parts (durations, steps, the SLO rule, the
target formula) on hand-made figures, and a short bounded load test against a real local endpoint
of two server processes."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image
from typer.testing import CliRunner

from bincli.backends.local.endpoint import deploy, teardown
from bincli.cli import app
from bincli.config import Config, DeployConfig, load_config
from bincli.errors import UsageError
from bincli.state import State
from bincli.steps.loadtest import (
    CSV_COLUMNS,
    client_steps,
    holds_slo,
    parse_duration,
    recommend,
    recommended_target,
    target_from,
)
from serving_support import model_tar

runner = CliRunner()


def step(clients: int, rps: float, p95: float | None, errors: int = 0, ok: int = 100) -> dict:
    return {"clients": clients, "rps": rps, "p95_ms": p95, "errors": errors, "ok": ok}


# ---------------------------------------------------------------- pure parts
@pytest.mark.parametrize(("text", "seconds"), [("20s", 20.0), ("1m", 60.0), ("30", 30.0), ("2.5", 2.5),
                                               ("500ms", 0.5), (" 1.5M ", 90.0), (7, 7.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "20x", "-5s", "1h", "0", "0s", "2m30s", "61m", "1e3"])
def test_bad_durations_are_one_line_usage_errors(text):
    with pytest.raises(UsageError) as caught:
        parse_duration(text)
    message = caught.value.message
    assert message.startswith(f"--duration {text!r}:") and "\n" not in message


def test_a_bad_duration_exits_2_before_any_request(in_tmp):
    out = runner.invoke(app, ["loadtest", "-w", "w", "--duration", "20x", "--images", str(in_tmp)])
    assert out.exit_code == 2
    assert "error: --duration '20x': expected a duration such as 20s, 1m" in out.stderr
    assert not (in_tmp / "w" / "report").exists()


def test_client_steps_double_up_to_the_maximum():
    assert client_steps(1) == [1]
    assert client_steps(2) == [1, 2]
    assert client_steps(32) == [1, 2, 4, 8, 16, 32]
    assert client_steps(12) == [1, 2, 4, 8, 12]


def test_the_slo_rule_on_hand_made_steps():
    steps = [step(1, 10.0, 50.0), step(2, 19.0, 120.0), step(4, 30.0, 199.9), step(8, 41.0, 260.0),
             step(16, 45.0, 150.0, errors=1)]
    assert [holds_slo(s, 200.0) for s in steps] == [True, True, True, False, False]
    assert not holds_slo(step(1, 0.0, None, errors=5, ok=0), 200.0)
    found = recommend(steps, 200.0, instances=1)
    # The fastest step within the SLO (4 clients), not the fastest overall (8: too slow; 16: an error).
    assert found == {"best_clients": 4, "max_rps": 30.0, "max_rps_per_instance": 30.0,
                     "recommended_target": 900}  # 30 req/s x 60 s x 0.5
    per_two = recommend(steps, 200.0, instances=2, safety=0.4)
    assert per_two["max_rps_per_instance"] == 15.0 and per_two["recommended_target"] == 360
    assert recommend(steps, 40.0, instances=1)["recommended_target"] is None  # not even 1 client holds it


def test_target_formula_rounds_down_and_is_at_least_one():
    assert target_from(13.3) == 399  # 13.3 x 60 x 0.5 = 399.0
    assert target_from(0.001) == 1


def test_recommended_target_reads_state(tmp_path):
    state = State(tmp_path)
    assert recommended_target(state, "ep") is None
    state.record("loadtest", {"endpoints": {"ep": {"recommended_target": 420}, "other": {"recommended_target": None}}})
    assert recommended_target(state, "ep") == 420
    assert recommended_target(state, "other") is None and recommended_target(state, "nope") is None


def test_deploy_instances_flag_reaches_the_config(in_tmp, monkeypatch):
    seen = []

    class Backend:
        def deploy(self, model, update, foreground):
            return {"ok": True}

        def preflight(self, steps):
            return []  # nothing to check or to bill

    monkeypatch.setattr("bincli.backends.get_backend", lambda cfg: seen.append(cfg) or Backend())
    out = runner.invoke(app, ["deploy", "-w", "w", "--instances", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert seen and all(c == Config(workdir=Path("w"), deploy=DeployConfig(instances=3)) for c in seen)
    out = runner.invoke(app, ["deploy", "-w", "w", "--set", "deploy.instances=0", "--json"])
    assert out.exit_code != 0 and "deploy.instances" in out.stderr


def test_several_instances_are_refused_in_the_foreground(tmp_path):
    cfg = load_config(None, {"workdir": tmp_path / "work", "deploy.instances": 2}, env={}).config
    with pytest.raises(UsageError, match="--foreground serves one process"):
        deploy(cfg, model=tmp_path / "model.tar.gz", foreground=True)  # refused before the model is read
    assert State(cfg.workdir).outputs("deploy") is None


# ---------------------------------------------------------------- a real endpoint of two processes
@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="several instances need SO_REUSEPORT (Linux)")
def test_two_instances_answer_and_the_loadtest_sizes_them(tmp_path, tmp_path_factory, abid_sample):
    work = tmp_path / "work"
    cfg = load_config(None, {"workdir": work, "deploy.port": 0, "deploy.instances": 2}, env={}).config
    record = deploy(cfg, model=model_tar(tmp_path_factory.getbasetemp()))
    pids = {server["pid"] for server in record["servers"]}
    try:
        assert record["instances"] == 2 and len(pids) == 2 and record["pid"] in pids
        assert State(work).outputs("deploy")["servers"] == record["servers"]
        # Both processes serve the one port: new connections reach each of them (the kernel hashes
        # each connection to one listening socket; 64 connections all missing one server: p = 2**-63).
        answered = set()
        for _ in range(64):
            with httpx.Client(base_url=record["url"]) as client:  # a fresh connection each time
                answered.add(client.get("/info").json()["pid"])
            if answered == pids:
                break
        assert answered == pids

        out = runner.invoke(app, ["loadtest", "-w", str(work), "--images", str(abid_sample / "images"),
                                  "--duration", "1s", "--max-requests", "40", "--max-clients", "2",
                                  "--slo-p95-ms", "600000", "--json"])
        assert out.exit_code == 0, (out.stdout, out.stderr)
        result = json.loads(out.stdout)  # --json: one object, nothing else on stdout
        assert result["instances"] == 2 and result["endpoint"] == "bincli-local"
        assert [s["clients"] for s in result["steps"]] == [1, 2]
        for s in result["steps"]:
            assert 0 < s["requests"] <= 40 and s["errors"] == 0 and s["rps"] > 0
            assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] and s["client_cpu_ms_per_request"] > 0
        best = max(result["steps"], key=lambda s: s["rps"])
        assert result["max_rps"] == best["rps"] and result["best_clients"] == best["clients"]
        assert result["recommended_target"] == max(1, math.floor(best["rps"] / 2 * 60 * 0.5))

        report = Path(result["report_dir"])
        assert report == work.resolve() / "report" / "loadtest-bincli-local"
        with open(report / "steps.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert tuple(rows[0]) == CSV_COLUMNS and [int(r["clients"]) for r in rows] == [1, 2]
        assert [float(r["rps"]) for r in rows] == [s["rps"] for s in result["steps"]]
        with Image.open(report / "latency-throughput.png") as png:
            assert png.format == "PNG" and png.width > 500

        saved = State(work).outputs("loadtest")["endpoints"]["bincli-local"]
        assert saved["instances"] == 2 and saved["max_rps"] == result["max_rps"]
        assert recommended_target(State(work), "bincli-local") == result["recommended_target"]
    finally:
        out = teardown(cfg)
    assert out["stopped"] and sorted(out["pids"]) == sorted(pids)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert State(work).outputs("deploy") is None and not (work / "endpoints").exists()


def test_the_table_and_the_target_go_to_stdout(capsys):
    from bincli.commands.loadtest import _render

    steps = [{**step(1, 10.0, 50.0), "p50_ms": 40.0, "p99_ms": 60.0, "client_cpu_ms_per_request": 1.5,
              "holds_slo": True},
             {**step(2, 12.0, 250.0), "p50_ms": 90.0, "p99_ms": 300.0, "client_cpu_ms_per_request": 1.4,
              "holds_slo": False}]
    result = {"source": "'ep' at http://127.0.0.1:1", "instances": 1, "steps": steps, "slo_p95_ms": 200.0,
              "safety": 0.5, "stopped": "stopped after 2 client(s)", "report_dir": "r",
              **recommend(steps, 200.0, instances=1)}
    _render(result)
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[1].split()[:2] == ["clients", "req/s"]
    assert lines[2].split() == ["1", "10.0", "40.0", "50.0", "60.0", "0", "1.5", "held"]
    assert lines[3].split()[-1] == "missed"
    assert lines[-2].startswith("autoscaling target: 300 invocations per instance per minute (= 10 x 60 x 0.5")
    assert lines[-1] == "report: r" and out.err == ""  # where the outputs are is part of the result
