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

# The metric rows of every rendering (the terminal table, the run page): (key path, name, format).
METRIC_ROWS = (("accuracy", "accuracy", "{:.3f}"), ("log_loss", "log-loss", "{:.3f}"),
               ("rmse", "RMSE (count)", "{:.3f}"), ("mae", "MAE (count)", "{:.3f}"),
               ("count_errors.median.mae", "MAE (median count)", "{:.3f}"),
               ("count_errors.median.rmse", "RMSE (median count)", "{:.3f}"),
               ("count_errors.expected.mae", "MAE (expected count)", "{:.3f}"),
               ("count_errors.expected.rmse", "RMSE (expected count)", "{:.3f}"),
               ("ece", "calibration error (ECE)", "{:.3f}"),
               ("coverage.4.accuracy", "accuracy of the 50% most confident", "{:.3f}"),
               ("total_count.error", "total count error (sum of expected)", "{:+.1f}"))


def metric_value(metrics: dict[str, Any], path: str) -> Any:
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


def fmt_metric(value: Any, pattern: str = "{:.3f}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def baseline_header(metrics: dict[str, Any]) -> str | None:
    """The baseline column's header ("baseline (always 3)"), or None when the metrics have no baseline."""
    baseline = metrics.get("baseline") or {}
    return f"baseline (always {baseline.get('predicted_label', '?')})" if baseline else None


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(name, model, baseline or None without one) for each metric the dict has, formatted."""
    baseline = metrics.get("baseline") or {}
    rows = []
    for key, name, pattern in METRIC_ROWS:
        if metric_value(metrics, key) is None:
            continue  # metrics without per-image probabilities (older reports) have no count-aware rows
        rows.append((name, fmt_metric(metric_value(metrics, key), pattern),
                     fmt_metric(metric_value(baseline, key), pattern) if baseline else None))
    return rows


def per_class_rows(metrics: dict[str, Any]) -> list[tuple[str, int, str, str | None]]:
    """(class label, images, model accuracy, baseline accuracy or None without one) per class."""
    baseline = metrics.get("baseline") or {}
    base_pc = baseline.get("per_class", {})
    return [(label, pc["n"], fmt_metric(pc["accuracy"]),
             fmt_metric(base_pc.get(label, {}).get("accuracy")) if baseline else None)
            for label, pc in metrics.get("per_class", {}).items()]


def render_metrics_table(metrics: dict[str, Any], title: str | None = None):
    """A rich Table: each metric for the model and the baseline, then per-class accuracy."""
    from rich.table import Table

    header = baseline_header(metrics)
    split = metrics.get("split")
    table = Table(title=title or f"{split + ' split, ' if split else ''}{metrics.get('n', '?')} images")
    table.add_column("metric")
    table.add_column("model", justify="right")
    if header:
        table.add_column(header, justify="right")
    for name, model, base in metric_rows(metrics):
        table.add_row(*([name, model] if base is None else [name, model, base]))
    for label, n, model, base in per_class_rows(metrics):
        row = [f"accuracy of class {label} (n={n})", model] + ([] if base is None else [base])
        table.add_row(*row, style="dim" if not n else None)
    return table


def write_report(metrics: dict[str, Any], out_dir: str | Path, source: str | None = None) -> dict[str, str]:
    """Write metrics.json, confusion-matrix.png and (with a history) learning-curves.png to out_dir.

    The figures are drawn by the core (Pillow), so the training job and the CLI draw the same ones.
    `source` ("train run", "evaluate") starts the figures' titles, so a confusion matrix of the train
    run's test split is not taken for one of `bincli evaluate`'s. The learning curves mark
    metrics["best_epoch"] when it is there.

    Returns {"metrics": path, "confusion_matrix": path, "learning_curves": path (if written),
    "reliability": path, "coverage": path (with per-image metrics)}."""
    from bincli.core.plots import write_confusion_png, write_coverage_png, write_curves_png, write_reliability_png

    out = Path(out_dir)
    paths = {"metrics": str(atomic_write_json(out / METRICS_FILE, metrics))}
    split = metrics.get("split")
    where = f" ({split} split)" if split else ""
    lead = f"{source}: " if source else ""
    paths["confusion_matrix"] = str(write_confusion_png(out / CONFUSION_PNG, metrics,
                                                        f"{lead}confusion matrix{where}"))
    if metrics.get("reliability"):
        paths["reliability"] = str(write_reliability_png(out / RELIABILITY_PNG, metrics, f"{lead}reliability{where}"))
    if metrics.get("coverage"):
        paths["coverage"] = str(write_coverage_png(out / COVERAGE_PNG, metrics, metrics.get("baseline"),
                                                   f"{lead}accuracy vs coverage{where}"))
    if metrics.get("history"):
        paths["learning_curves"] = str(write_curves_png(out / CURVES_PNG, metrics["history"],
                                                        metrics.get("best_epoch")))
    return paths
