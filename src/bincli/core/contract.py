"""Names shared by training, tuning, packaging and serving: defined once, imported everywhere.

Stdlib only, so the CLI can import it without torch.
"""

from __future__ import annotations

import re

from .hyperparams import ENTRY_PARAMS

# ---- files in the model dir / model.tar.gz (SageMaker layout)
WEIGHTS_FILE = "model.pth"          # state_dict, loaded with torch.load(weights_only=True)
MODEL_INFO_FILE = "model_info.json"  # arch, classes, image_size, mean, std, metrics
MODEL_INFO_KEYS = ("arch", "classes", "image_size")  # what a model_info.json must hold to be served
GRAPH_KEY = "graph"                  # model_info.json, optional: the inference graph packaged beside model.pth,
GRAPH_FORMATS = ("onnx",)            # {"format": "onnx", "file": "model.onnx", "opset": 17, "input", "output"}
ONNX_INPUT, ONNX_OUTPUT = "input", "logits"  # the graph's tensor names: (N, 3, S, S) float -> (N, classes)
CODE_DIR = "code"                    # code/inference.py + the core package it imports
INFERENCE_SCRIPT = "inference.py"
TRAIN_SCRIPT = "train.py"

# ---- the split names, which are also the channel names a training job gets (in this order)
SPLITS = ("train", "valid", "test")
# ---- the channel that carries --weights-file into a training job (a local path means nothing in
# the container): its one file is the entry point's default --weights-file (SM_CHANNEL_WEIGHTS)
WEIGHTS_CHANNEL = "weights"
MANIFEST_HEADER = ("id", "path", "count")  # the header of each split's <split>.csv (id stays a string)

# ---- files the training entry point writes
CHECKPOINT_LAST = "last.pt"          # checkpoint dir: the latest state (resume from here)
CHECKPOINT_BEST = "best.pt"          # checkpoint dir: the state with the best valid loss
METRICS_FILE = "metrics.json"        # output dir: valid/test/baseline metrics + per-epoch history
HISTORY_FILE = "history.jsonl"       # output dir: one JSON row per epoch, appended as epochs finish
CONFUSION_PNG = "confusion-matrix.png"  # output dir and report/: the confusion matrix
CURVES_PNG = "learning-curves.png"      # output dir and report/: loss and accuracy per epoch
RELIABILITY_PNG = "reliability.png"     # output dir and report/: accuracy against confidence (calibration)
COVERAGE_PNG = "accuracy-coverage.png"  # output dir and report/: accuracy of the k% most confident photos

# ---- inference content types
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image")
JSON_CONTENT_TYPE = "application/json"
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # SageMaker real-time endpoint limit (6 MB)

# ---- normalisation (ImageNet statistics: torchvision's pretrained weights expect them)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---- hyperparameters: the entry point's flags, also the tuner's parameter names (declared in
# hyperparams.py). SageMaker passes them as `--name value`; names use hyphens like the SageMaker examples.
HYPERPARAMETERS = tuple(p.flag for p in ENTRY_PARAMS)


def hyperparameter_name(config_key: str) -> str:
    """train config key (batch_size) -> entry-point flag name (batch-size)."""
    return config_key.replace("_", "-")


# ---- the per-epoch metric line, printed by the entry point and parsed by the tuner/SageMaker.
# Example: "epoch=3 train_loss=1.234500 train_acc=0.410000 valid_loss=1.301200 valid_acc=0.390000
#           valid_rmse=0.912000 valid_mae=0.700000 lr=0.000900 train_img_s=35.200000" (one line)
# Epochs count from 1. valid_* are absent when there is no valid channel.
EPOCH_METRICS = ("train_loss", "train_acc", "valid_loss", "valid_acc", "valid_rmse", "valid_mae", "lr",
                 "train_img_s")


def format_epoch_line(epoch: int, metrics: dict[str, float]) -> str:
    parts = [f"epoch={epoch}"] + [f"{name}={metrics[name]:.6f}" for name in EPOCH_METRICS if name in metrics]
    return " ".join(parts)


_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

# ---- the best-so-far line, printed after each epoch line: "best_valid_loss=0.912000 best_valid_acc=0.410000"
# (the lowest valid loss and the highest valid accuracy of the epochs so far). A trial's score on
# both tuners: SageMaker keeps the LAST value its regex finds, the local tuner reads the last line;
# printed every epoch (not only at the end) so SageMaker's early stopping sees intermediate values.
BEST_METRICS = {"best_valid_loss": ("valid_loss", min), "best_valid_acc": ("valid_acc", max)}
BEST_LINE = re.compile(rf"^best_valid_loss={_NUMBER} best_valid_acc={_NUMBER}\s*$")


def best_metric(objective: str) -> str:
    """The best-so-far metric a tuner scores a trial by, for an epoch metric (valid_loss -> best_valid_loss)."""
    return f"best_{objective}"


def format_best_line(history: list[dict[str, float]]) -> str | None:
    """The best-so-far line for the epoch rows so far, or None without valid metrics."""
    values = {}
    for name, (column, pick) in BEST_METRICS.items():
        seen = [row[column] for row in history if column in row]
        if not seen:
            return None
        values[name] = pick(seen)
    return " ".join(f"{name}={value:.6f}" for name, value in values.items())


def parse_best_line(line: str) -> dict[str, float] | None:
    m = BEST_LINE.match(line.strip())
    return {"best_valid_loss": float(m.group(1)), "best_valid_acc": float(m.group(2))} if m else None


# SageMaker metric_definitions: one regex per metric, the first group is the value.
# \b keeps `lr=` from matching inside another name (and valid_loss= inside best_valid_loss=);
# progress lines use other names (step_loss...).
METRIC_REGEX = {name: rf"\b{name}={_NUMBER}" for name in (*EPOCH_METRICS, *BEST_METRICS)}
EPOCH_LINE = re.compile(rf"^epoch=(\d+)((?: [a-z_]+={_NUMBER})+)\s*$")


def parse_epoch_line(line: str) -> dict[str, float] | None:
    """The metrics of one epoch line (with 'epoch'), or None if the line is something else."""
    m = EPOCH_LINE.match(line.strip())
    if not m:
        return None
    out: dict[str, float] = {"epoch": int(m.group(1))}
    for name, pattern in METRIC_REGEX.items():
        found = re.search(pattern, line)
        if found:
            out[name] = float(found.group(1))
    return out


def metric_definitions() -> list[dict[str, str]]:
    """SageMaker's metric_definitions for training and tuning jobs."""
    return [{"Name": name, "Regex": regex} for name, regex in METRIC_REGEX.items()]


# ---- progress within an epoch (for live progress bars; not metrics: SageMaker's regexes skip them).
# Example: "progress epoch=2 step=13/50 step_loss=1.234500 step_acc=0.410000 step_img_s=35.2"
PROGRESS_LINE = re.compile(rf"^progress epoch=(\d+) step=(\d+)/(\d+) step_loss={_NUMBER} step_acc={_NUMBER} "
                           rf"step_img_s={_NUMBER}\s*$")


def format_progress_line(epoch: int, step: int, steps: int, loss: float, acc: float, img_s: float) -> str:
    return f"progress epoch={epoch} step={step}/{steps} step_loss={loss:.6f} step_acc={acc:.6f} step_img_s={img_s:.1f}"


def parse_progress_line(line: str) -> dict[str, float] | None:
    """{"epoch", "step", "steps", "loss", "acc", "img_s"} (running means over the epoch so far), or None."""
    m = PROGRESS_LINE.match(line.strip())
    if not m:
        return None
    return {"epoch": int(m.group(1)), "step": int(m.group(2)), "steps": int(m.group(3)),
            "loss": float(m.group(4)), "acc": float(m.group(5)), "img_s": float(m.group(6))}
