"""Count-classification metrics: ONE definition used by training, evaluation and reports.

Every metric comes from the confusion matrix (rows: true class, columns: predicted class) plus
the summed negative log-likelihood of the true class, so partial results from several
processes (DDP ranks, evaluation workers) add up exactly before the metrics are computed:

    accuracy        share of images whose predicted class is the true class
    log_loss        mean cross-entropy of the true class (natural log; probabilities clipped at 1e-15)
    rmse, mae       error of the predicted COUNT (the count each class stands for, e.g. "5+" -> 5),
                    so predicting 2 for a bin of 3 costs less than predicting 5
    per_class       per true class: accuracy (recall) and n; accuracy is None for a class with no image
    confusion_matrix
From per-image probabilities (compute_metrics, baseline_metrics) also the count-aware ones
(definitions in core/counting.py):
    count_errors    {"argmax"|"median"|"expected": {"mae", "rmse"}}: the count read three ways
    ece             expected calibration error of the top probability; "reliability": its bins
    coverage        accuracy of the k% most confident images, k = 10%..100%
    total_count     sum of expected counts vs the true sum over the split
The baseline always predicts the commonest class of the training set (and the training prior
as its probabilities): a model must beat it to have learnt anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used, so evaluation clients need only numpy
    import torch

EPS = 1e-15
SUMMARY = ("accuracy", "log_loss", "rmse", "mae")


def confusion_matrix(targets: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """int64 (num_classes, num_classes): [i, j] = images of true class i predicted as j."""
    t = np.asarray(targets, dtype=np.int64).ravel()
    p = np.asarray(preds, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"targets and predictions differ in length: {t.size} vs {p.size}")
    for name, v in (("target", t), ("prediction", p)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} class index out of range 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(cm: np.ndarray, nll_sum: float, labels: Sequence[str],
                           counts: Sequence[int]) -> dict[str, Any]:
    """The metrics dict from a confusion matrix and the summed NLL of the true classes."""
    cm = np.asarray(cm, dtype=np.int64)
    k = len(labels)
    if cm.shape != (k, k) or len(counts) != k:
        raise ValueError(f"confusion matrix {cm.shape} does not fit {k} labels / {len(counts)} counts")
    n = int(cm.sum())
    c = np.asarray(counts, dtype=np.float64)
    err = c[None, :] - c[:, None]  # predicted count - true count, per cell
    rows = cm.sum(axis=1)
    per_class = {
        label: {"accuracy": (float(cm[i, i] / rows[i]) if rows[i] else None), "n": int(rows[i])}
        for i, label in enumerate(labels)
    }
    nan = float("nan")
    return {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else nan,
        "log_loss": float(nll_sum / n) if n else nan,
        "rmse": float(math.sqrt((cm * err**2).sum() / n)) if n else nan,
        "mae": float((cm * np.abs(err)).sum() / n) if n else nan,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
        "counts": [int(x) for x in counts],
    }


def compute_metrics(targets: Sequence[int] | np.ndarray, probabilities: np.ndarray, labels: Sequence[str],
                    counts: Sequence[int]) -> dict[str, Any]:
    """Metrics from per-image class probabilities (N, C), e.g. answers of an endpoint."""
    probs = np.asarray(probabilities, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64).ravel()
    if probs.ndim != 2 or probs.shape[0] != t.size or probs.shape[1] != len(labels):
        raise ValueError(f"probabilities must be (n={t.size}, classes={len(labels)}), got {probs.shape}")
    cm = confusion_matrix(t, probs.argmax(axis=1), len(labels))
    p_true = np.clip(probs[np.arange(t.size), t], EPS, 1.0)
    out = metrics_from_confusion(cm, float(-np.log(p_true).sum()), labels, counts)
    return out | count_aware_metrics(t, probs, counts)


def count_aware_metrics(targets: Sequence[int] | np.ndarray, probabilities: np.ndarray,
                        counts: Sequence[int]) -> dict[str, Any]:
    """count_errors, ece + reliability, coverage and total_count (see the module doc)."""
    from .counting import count_errors, coverage_curve, reliability, total_count

    rel = reliability(probabilities, targets)
    return {"count_errors": count_errors(probabilities, targets, counts), "ece": rel["ece"],
            "reliability": rel["bins"], "coverage": coverage_curve(probabilities, targets),
            "total_count": total_count(probabilities, targets, counts)}


def baseline_metrics(train_targets: Sequence[int] | np.ndarray, targets: Sequence[int] | np.ndarray,
                     labels: Sequence[str], counts: Sequence[int]) -> dict[str, Any]:
    """Always predict the commonest training class, with the training prior as probabilities."""
    k = len(labels)
    hist = np.bincount(np.asarray(train_targets, dtype=np.int64), minlength=k).astype(np.float64)
    if hist.sum() == 0:
        raise ValueError("the baseline needs at least one training image")
    prior = hist / hist.sum()
    majority = int(hist.argmax())
    t = np.asarray(targets, dtype=np.int64).ravel()
    cm = confusion_matrix(t, np.full_like(t, majority), k)
    nll = float(-np.log(np.clip(prior[t], EPS, 1.0)).sum())
    out = metrics_from_confusion(cm, nll, labels, counts)
    # the prior read as a distribution: its median/expectation/calibration, like the model's
    out |= count_aware_metrics(t, np.broadcast_to(prior, (t.size, k)), counts)
    out["predicted_label"] = labels[majority]
    return out


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """accuracy, log_loss, rmse, mae (and n) only: for model_info.json and one-line logs."""
    return {key: metrics[key] for key in ("n", *SUMMARY) if key in metrics}


class MetricState:
    """Running sums for evaluation: confusion matrix + NLL sum, on the model's device.

    `update` takes logits; `all_reduce` sums across DDP ranks (each rank sees a disjoint shard);
    `compute` turns the sums into the metrics dict.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        import torch

        self.num_classes = num_classes
        self.cm = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
        self.nll_sum = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        import torch

        with torch.no_grad():
            logits = logits.float()
            self.nll_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double()
            idx = targets * self.num_classes + logits.argmax(dim=1)
            self.cm += torch.bincount(idx, minlength=self.num_classes**2)

    def all_reduce(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.cm)
            dist.all_reduce(self.nll_sum)

    def compute(self, labels: Sequence[str], counts: Sequence[int]) -> dict[str, Any]:
        cm = self.cm.cpu().numpy().reshape(self.num_classes, self.num_classes)
        return metrics_from_confusion(cm, float(self.nll_sum.item()), labels, counts)
