"""The training flags, shared by `train` and `tune` (in tune, a flag given fixes that value for
every trial and takes it out of the search)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _opt(flag: str, help: str, **kw: Any):
    return typer.Option(flag, help=help, show_default=False, rich_help_panel="Training", **kw)


Model = Annotated[str | None, _opt("--model", "resnet18, resnet34 or resnet50 (default resnet18).")]
Epochs = Annotated[int | None, _opt("--epochs", "Epochs in all (default 10).")]
BatchSize = Annotated[int | None, _opt("--batch-size", "Images per step, per process (default 32).")]
Lr = Annotated[float | None, _opt("--lr", "Peak learning rate (default 0.001).")]
ImageSize = Annotated[int | None, _opt("--image-size", "Square input size in pixels (default 224).")]
Pretrained = Annotated[bool | None, _opt("--pretrained/--no-pretrained", "Start from ImageNet weights (default: no).")]
WeightsFile = Annotated[Path | None, _opt("--weights-file", "Local ImageNet weights for --pretrained.", dir_okay=False)]
Freeze = Annotated[str | None, _opt("--freeze", "none, backbone, or layer1..layer4 (default none).")]
Optimizer = Annotated[str | None, _opt("--optimizer", "adamw or sgd (default adamw).")]
Scheduler = Annotated[str | None, _opt("--scheduler", "cosine, step or none after warm-up (default cosine).")]
WarmupEpochs = Annotated[int | None, _opt("--warmup-epochs", "Linear warm-up epochs (default 1).")]
WeightDecay = Annotated[float | None, _opt("--weight-decay", "AdamW/SGD weight decay (default 1e-4).")]
LabelSmoothing = Annotated[float | None, _opt("--label-smoothing", "0 to 1 (default 0).")]
Patience = Annotated[int | None, _opt("--patience", "Early stop after N epochs without a lower valid loss "
                                                    "(default 0: off).")]
Workers = Annotated[int | None, _opt("--workers", "DataLoader processes (default 2).")]
NprocPerNode = Annotated[int | None, _opt("--nproc-per-node", "Data-parallel processes via torchrun (default 1).")]
Seed = Annotated[int | None, _opt("--seed", "Seed (default 0).")]
Cache = Annotated[bool | None, _opt("--cache/--no-cache", "Cache pre-resized images (default: on).")]
Device = Annotated[str | None, _opt("--device", "auto, cpu or cuda (default auto).")]


def train_flags(section: str = "train", **values: Any) -> dict[str, tuple[str, Any]]:
    """{"train.lr": ("--lr", 0.01), ...} for commands.common.load, from the flag values by config name."""
    return {f"{section}.{key}": (f"--{key.replace('_', '-')}", value) for key, value in values.items()}
