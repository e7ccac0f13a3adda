"""core/metrics.py against values worked out by hand, and the report built from them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from bincli.core.metrics import (
    MetricState,
    baseline_metrics,
    compute_metrics,
    confusion_matrix,
    metrics_from_confusion,
    summary,
)
from bincli.steps.report import render_metrics_table, write_report

LABELS, COUNTS = ["1", "2", "3"], [1, 2, 3]


def test_confusion_matrix_rows_are_true_columns_predicted():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix([0, 3], [0, 0], 3)


def test_metrics_by_hand():
    # true counts 1 1 2 3 3 3, predicted 1 2 2 3 1 3: errors 0 +1 0 0 -2 0
    m = metrics_from_confusion(confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3), 6 * 0.5, LABELS, COUNTS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["log_loss"] == pytest.approx(0.5)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 4) / 6))
    assert m["mae"] == pytest.approx((1 + 2) / 6)
    assert m["per_class"] == {"1": {"accuracy": 0.5, "n": 2}, "2": {"accuracy": 1.0, "n": 1},
                              "3": {"accuracy": pytest.approx(2 / 3), "n": 3}}
    assert m["labels"] == LABELS and m["counts"] == COUNTS
    json.dumps(m)  # plain types only


def test_log_loss_from_probabilities_by_hand():
    probs = np.array([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]])
    m = compute_metrics([0, 1, 1], probs, LABELS, COUNTS)
    # p(true) = 0.5, 0.25, 0 (clipped to 1e-15)
    assert m["log_loss"] == pytest.approx((math.log(2) + math.log(4) - math.log(1e-15)) / 3)
    assert m["accuracy"] == pytest.approx(1 / 3)  # argmax 0, 2, 0
    assert m["mae"] == pytest.approx((0 + 1 + 1) / 3)


def test_running_state_matches_per_image_metrics():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=g)
    targets = torch.randint(0, 3, (50,), generator=g)
    state = MetricState(3)
    for chunk in range(0, 50, 7):  # in batches, as evaluation sees them
        state.update(logits[chunk:chunk + 7], targets[chunk:chunk + 7])
    running = state.compute(LABELS, COUNTS)
    direct = compute_metrics(targets.numpy(), torch.softmax(logits, 1).double().numpy(), LABELS, COUNTS)
    assert running["confusion_matrix"] == direct["confusion_matrix"]
    for key in ("accuracy", "log_loss", "rmse", "mae"):
        assert running[key] == pytest.approx(direct[key], rel=1e-6)


def test_baseline_predicts_the_commonest_training_class():
    b = baseline_metrics([1, 1, 1, 0], [0, 1, 2, 1], LABELS, COUNTS)
    assert b["predicted_label"] == "2"
    assert b["accuracy"] == pytest.approx(0.5)
    assert b["mae"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    # prior 0.25, 0.75, 0 -> the unseen class costs -log(1e-15)
    assert b["log_loss"] == pytest.approx((-math.log(0.25) - 2 * math.log(0.75) - math.log(1e-15)) / 4)


def test_empty_class_has_no_accuracy_and_summary_keeps_the_headline():
    m = metrics_from_confusion(np.array([[2, 0], [0, 0]]), 0.0, ["1", "2"], [1, 2])
    assert m["per_class"]["2"] == {"accuracy": None, "n": 0}
    assert summary(m) == {"n": 2, "accuracy": 1.0, "log_loss": 0.0, "rmse": 0.0, "mae": 0.0}


def test_report_table_and_files(tmp_path):
    m = compute_metrics([0, 1, 2, 2], np.eye(3)[[0, 1, 2, 0]], LABELS, COUNTS)
    m["baseline"] = baseline_metrics([2, 2, 0], [0, 1, 2, 2], LABELS, COUNTS)
    m["split"] = "test"
    m["history"] = [{"epoch": 1, "train_loss": 1.0, "valid_loss": 1.1, "train_acc": 0.4, "valid_acc": 0.3},
                    {"epoch": 2, "train_loss": 0.8, "valid_loss": 0.9, "train_acc": 0.5, "valid_acc": 0.45}]
    console = Console(width=100, record=True)
    console.print(render_metrics_table(m))
    text = console.export_text()
    assert "baseline (always 3)" in text
    assert "accuracy of class 3 (n=2)" in text and "0.750" in text
    paths = write_report(m, tmp_path / "report")
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["accuracy"] == 0.75
    for key in ("confusion_matrix", "learning_curves"):
        with Image.open(paths[key]) as img:
            assert img.format == "PNG" and img.width > 300
