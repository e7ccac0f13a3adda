"""The metrics report of a model on a split: a table for people, and `report/` on disk.

`metrics` is the dict of bincli.core.metrics (accuracy, log_loss, rmse, mae, per_class,
confusion_matrix, labels, counts, n), optionally with:
    "split":    which split it was measured on ("test")
    "baseline": the same dict for the majority-class baseline (core.metrics.baseline_metrics)
    "history":  per-epoch rows (epoch, train_loss, valid_loss, train_acc, valid_acc, ...) for the curves
`bincli train` and `bincli evaluate` both render and write it with these two functions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bincli.core.contract import CONFUSION_PNG, CURVES_PNG, METRICS_FILE
from bincli.core.fileio import atomic_write_json

_ROWS = (("accuracy", "accuracy", "{:.3f}"), ("log_loss", "log-loss", "{:.3f}"), ("rmse", "RMSE (count)", "{:.3f}"),
         ("mae", "MAE (count)", "{:.3f}"))


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
        row = [name, _fmt(metrics.get(key), pattern)]
        if baseline:
            row.append(_fmt(baseline.get(key), pattern))
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

    Returns {"metrics": path, "confusion_matrix": path, "learning_curves": path (if written)}."""
    from bincli.core.plots import write_confusion_png, write_curves_png

    out = Path(out_dir)
    paths = {"metrics": str(atomic_write_json(out / METRICS_FILE, metrics))}
    split = metrics.get("split")
    paths["confusion_matrix"] = str(write_confusion_png(
        out / CONFUSION_PNG, metrics, f"confusion matrix ({split} split)" if split else "confusion matrix"))
    if metrics.get("history"):
        paths["learning_curves"] = str(write_curves_png(out / CURVES_PNG, metrics["history"]))
    return paths
