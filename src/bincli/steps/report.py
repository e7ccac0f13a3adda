"""The metrics report of a model on a split: a table for people, and `report/` on disk.

`metrics` is the dict of bincli.core.metrics (accuracy, log_loss, rmse, mae, per_class,
confusion_matrix, labels, counts, n), optionally with:
    "split":    which split it was measured on ("test")
    "baseline": the same dict for the majority-class baseline (core.metrics.baseline_metrics)
    "history":  per-epoch rows (epoch, train_loss, valid_loss, train_acc, valid_acc, ...) for the curves
and, from per-image probabilities, the count-aware ones (count_errors, ece, reliability, coverage,
total_count: see core/metrics.py), drawn as reliability.png and accuracy-coverage.png.
`bincli train` and `bincli evaluate` both render and write it with these two functions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bincli.core.contract import CONFUSION_PNG, COVERAGE_PNG, CURVES_PNG, METRICS_FILE, RELIABILITY_PNG
from bincli.core.fileio import atomic_write_json

_ROWS = (("accuracy", "accuracy", "{:.3f}"), ("log_loss", "log-loss", "{:.3f}"), ("rmse", "RMSE (count)", "{:.3f}"),
         ("mae", "MAE (count)", "{:.3f}"), ("count_errors.median.mae", "MAE (median count)", "{:.3f}"),
         ("count_errors.median.rmse", "RMSE (median count)", "{:.3f}"),
         ("count_errors.expected.mae", "MAE (expected count)", "{:.3f}"),
         ("count_errors.expected.rmse", "RMSE (expected count)", "{:.3f}"),
         ("ece", "calibration error (ECE)", "{:.3f}"),
         ("coverage.4.accuracy", "accuracy of the 50% most confident", "{:.3f}"),
         ("total_count.error", "total count error (sum of expected)", "{:+.1f}"))


def _get(metrics: dict[str, Any], path: str) -> Any:
    """metrics["a"]["b"] for "a.b" (a digit indexes a list); None where it is absent."""
    value: Any = metrics
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict):
            value = value.get(part)
        else:
            return None
    return value


def _fmt(value: Any, pattern: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def render_metrics_table(metrics: dict[str, Any], title: str | None = None):
    """A rich Table: each metric for the model and the baseline, then per-class accuracy."""
    from rich.table import Table

    baseline = metrics.get("baseline") or {}
    split = metrics.get("split")
    table = Table(title=title or f"{split + ' split, ' if split else ''}{metrics.get('n', '?')} images")
    table.add_column("metric")
    table.add_column("model", justify="right")
    if baseline:
        table.add_column(f"baseline (always {baseline.get('predicted_label', '?')})", justify="right")
    for key, name, pattern in _ROWS:
        if _get(metrics, key) is None:
            continue  # metrics without per-image probabilities (older reports) have no count-aware rows
        row = [name, _fmt(_get(metrics, key), pattern)]
        if baseline:
            row.append(_fmt(_get(baseline, key), pattern))
        table.add_row(*row)
    base_pc = baseline.get("per_class", {})
    for label, pc in metrics.get("per_class", {}).items():
        row = [f"accuracy of class {label} (n={pc['n']})", _fmt(pc["accuracy"])]
        if baseline:
            row.append(_fmt(base_pc.get(label, {}).get("accuracy")))
        table.add_row(*row, style="dim" if not pc["n"] else None)
    return table


def write_report(metrics: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write metrics.json, confusion-matrix.png and (with a history) learning-curves.png to out_dir.

    The figures are drawn by the core (Pillow), so the training job and the CLI draw the same ones.

    Returns {"metrics": path, "confusion_matrix": path, "learning_curves": path (if written),
    "reliability": path, "coverage": path (with per-image metrics)}."""
    from bincli.core.plots import write_confusion_png, write_coverage_png, write_curves_png, write_reliability_png

    out = Path(out_dir)
    paths = {"metrics": str(atomic_write_json(out / METRICS_FILE, metrics))}
    split = metrics.get("split")
    paths["confusion_matrix"] = str(write_confusion_png(
        out / CONFUSION_PNG, metrics, f"confusion matrix ({split} split)" if split else "confusion matrix"))
    where = f" ({split} split)" if split else ""
    if metrics.get("reliability"):
        paths["reliability"] = str(write_reliability_png(out / RELIABILITY_PNG, metrics, f"reliability{where}"))
    if metrics.get("coverage"):
        paths["coverage"] = str(write_coverage_png(out / COVERAGE_PNG, metrics, metrics.get("baseline"),
                                                   f"accuracy vs coverage{where}"))
    if metrics.get("history"):
        paths["learning_curves"] = str(write_curves_png(out / CURVES_PNG, metrics["history"]))
    return paths
