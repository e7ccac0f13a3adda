"""`bincli evaluate`: a split through the endpoint and through the in-process model, same numbers."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bincli.artifacts.loader import load_model
from bincli.cli import app
from bincli.config import load_config
from bincli.data.split import run_split
from bincli.errors import DataError, UsageError
from bincli.state import State
from bincli.steps.evaluate import run_evaluate
from serving_support import ServerThread, model_tar


@pytest.fixture
def work(tmp_path, abid_sample):
    """A workspace with a real split: 60 ABID images, classes 1-5, made by `bincli split`."""
    src = tmp_path / "abid"
    for sub in ("images", "metadata"):
        (src / sub).mkdir(parents=True)
    for img in sorted((abid_sample / "images").glob("*.jpg"))[:60]:
        shutil.copy(img, src / "images" / img.name)
        shutil.copy(abid_sample / "metadata" / f"{img.stem}.json", src / "metadata" / f"{img.stem}.json")
    cfg = load_config(None, {"workdir": tmp_path / "work", "split.input": src, "split.ratios": [0.6, 0.1, 0.3]},
                      env={}).config
    run_split(cfg.split, cfg.workdir)
    return cfg


@pytest.fixture(scope="module")
def tar(tmp_path_factory):
    return model_tar(tmp_path_factory.getbasetemp())


def test_endpoint_and_in_process_evaluation_agree(work, tar):
    local = run_evaluate(work, "test", model=tar)
    model, tmp = load_model(tar)
    try:
        with ServerThread(model, name="bincli-local") as srv:
            remote = run_evaluate(work, "test", endpoint_url=srv.url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_test = State(work.workdir).outputs("split")["test"]
    a, b = local["report"], remote["report"]
    assert a["n"] == b["n"] == n_test and local["failed"] == remote["failed"] == 0
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert (a["accuracy"], a["per_class"]) == (b["accuracy"], b["per_class"])
    for key in ("log_loss", "rmse", "mae"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert a["baseline"] == b["baseline"] and a["baseline"]["n"] == n_test
    # the count-aware metrics agree too, each beside the baseline's
    for key in ("ece", "coverage", "total_count", "count_errors"):
        assert a[key] == b[key], key  # the same floats: JSON round-trips them exactly
        assert key in a["baseline"], key
    assert a["count_errors"]["argmax"]["mae"] == pytest.approx(a["mae"])
    assert a["total_count"]["true"] == sum(int(r) for r in [row["count"] for row in
                                            csv.DictReader(io.StringIO(Path(local["predictions"]).read_text()))])
    assert remote["source"].startswith("'bincli-local' at http://127.0.0.1:")

    # What is on disk says the same: the predictions' hit rate is the accuracy.
    rows = list(csv.DictReader(io.StringIO(Path(remote["predictions"]).read_text())))
    assert len(rows) == n_test
    assert sum(r["count"] == r["predicted"] for r in rows) / n_test == pytest.approx(b["accuracy"])
    assert json.loads(Path(remote["metrics"]).read_text())["confusion_matrix"] == b["confusion_matrix"]
    for figure in ("confusion_matrix", "reliability", "coverage"):
        assert Path(remote["figures"][figure]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert {"expected_count", "count_range"} <= set(rows[0])
    assert State(work.workdir).outputs("evaluate")["accuracy"] == b["accuracy"]


def test_evaluate_command_prints_the_metrics_table(work, tar):
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tar), "--split", "valid", "-w", str(work.workdir)])
    assert result.exit_code == 0, result.output
    for line in ("accuracy", "log-loss", "RMSE (count)", "MAE (count)", "accuracy of class 1", "baseline",
                 "MAE (median count)", "RMSE (expected count)", "calibration error (ECE)",
                 "accuracy of the 50% most confident", "total count error"):
        assert line in result.stdout, line  # the metrics table is the result
    json_run = CliRunner().invoke(app, ["evaluate", "--model", str(tar), "--json", "-w", str(work.workdir)])
    out = json.loads(json_run.stdout)
    assert out["split"] == "test" and 0 <= out["accuracy"] <= 1 and out["failed"] == 0


def test_evaluate_refuses_what_does_not_fit(work, tmp_path_factory):
    with pytest.raises(UsageError, match="no such manifest"):
        run_evaluate(work, "holdout", model=model_tar(tmp_path_factory.getbasetemp()))
    other = model_tar(tmp_path_factory.getbasetemp(), classes="0-5+")
    with pytest.raises(DataError, match=r"predicts classes 0-5\+, the split has 1-5"):
        run_evaluate(work, "test", model=other)
