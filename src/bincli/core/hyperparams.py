"""The training hyperparameters, declared once: name, type, choices, bounds, default and help.

Everything else is built from TRAIN_PARAMS: the entry point's argparse flags (core/train.py),
contract.HYPERPARAMETERS, the train section of the config (bincli.config.TrainConfig) and the
training flags of `bincli train` / `bincli tune` (bincli.commands.train_options).

Stdlib only: the CLI imports it without torch, and it ships with the core into SageMaker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Choices the core's factories implement (model.ARCHITECTURES, engine.OPTIMIZERS/SCHEDULES keep
# the same keys; tests check it). Here because config and CLI must know them without torch.
MODEL_CHOICES = ("resnet18", "resnet34", "resnet50")
FREEZE_CHOICES = ("none", "backbone", "layer1", "layer2", "layer3", "layer4")
OPTIMIZER_CHOICES = ("adamw", "sgd")
SCHEDULER_CHOICES = ("cosine", "step", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
LOSS_CHOICES = ("ce", "soft-ordinal")  # engine.LOSSES keeps the same keys

TYPES = (int, float, bool, str, Path)


@dataclass(frozen=True)
class Param:
    """One training setting.

    name: the config key (batch_size); the flag and the hyperparameter name is `flag` (batch-size).
    help: one line for both CLIs; `{default}` is replaced by the default, and for a bool
        `{default:off/on}` picks the word for False/True.
    entry: an entry-point hyperparameter (contract.HYPERPARAMETERS, SageMaker's `--name value`).
    config: a key of the train config section (classes is not: it comes from the split).
        config and not entry: a launch key (how the run is launched, e.g. nproc_per_node).
    locked: a resumed run must keep the value its checkpoint was made with.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    optional: bool = False  # None is a valid value ("not set")
    entry: bool = True
    config: bool = True
    locked: bool = False

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise TypeError(f"{self.name}: type must be one of {', '.join(t.__name__ for t in TYPES)}, "
                            f"got {self.type!r}")

    @property
    def flag(self) -> str:
        """Flag and hyperparameter name: batch_size -> batch-size (as contract.hyperparameter_name)."""
        return self.name.replace("_", "-")

    @property
    def bounds(self) -> dict[str, float]:
        """The set ones of ge/gt/le/lt (pydantic Field keywords)."""
        return {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt))
                if v is not None}

    def describe(self) -> str:
        """The help line with the default filled in."""
        return re.sub(r"\{default(?::([^}]*))?\}", lambda m: show_value(self.default, m.group(1)), self.help)


def show_value(value: Any, words: str | None = None) -> str:
    """A default as people write it: 10, 0.001, 1e-4, 0 (not 0.0), off/on for bools."""
    if isinstance(value, bool):
        no, yes = (words or "off/on").split("/")
        return yes if value else no
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        if abs(value) < 1e-3:  # 1e-4, not 0.0001
            mantissa, exponent = f"{value:.0e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return repr(value)
    return str(value)


def _or(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


TRAIN_PARAMS: tuple[Param, ...] = (
    Param("model", str, "resnet18", f"{_or(MODEL_CHOICES)} (default {{default}}).", choices=MODEL_CHOICES,
          locked=True),
    Param("epochs", int, 10, "Epochs in all (default {default}).", ge=1, le=1000),
    Param("batch_size", int, 32, "Images per step, per process (default {default}).", ge=1, le=4096),
    Param("lr", float, 1e-3, "Peak learning rate (default {default}).", gt=0, lt=10, locked=True),
    Param("image_size", int, 224, "Square input size in pixels (default {default}).", ge=32, le=1024,
          locked=True),
    Param("pretrained", bool, False, "Start from ImageNet weights (default: {default:no/yes}).", locked=True),
    Param("weights_file", Path, None, "Local ImageNet weights for --pretrained.", optional=True),
    Param("freeze", str, "none", "none, backbone, or layer1..layer4 (default {default}).",
          choices=FREEZE_CHOICES, locked=True),
    Param("optimizer", str, "adamw", f"{_or(OPTIMIZER_CHOICES)} (default {{default}}).",
          choices=OPTIMIZER_CHOICES, locked=True),
    Param("scheduler", str, "cosine", f"{_or(SCHEDULER_CHOICES)} after warm-up (default {{default}}).",
          choices=SCHEDULER_CHOICES, locked=True),
    Param("warmup_epochs", float, 1.0, "Linear warm-up epochs (default {default}).", ge=0, locked=True),
    Param("weight_decay", float, 1e-4, "AdamW/SGD weight decay (default {default}).", ge=0, locked=True),
    Param("label_smoothing", float, 0.0, "0 to 1 (default {default}).", ge=0, lt=1, locked=True),
    Param("loss", str, "ce", "ce (cross-entropy) or soft-ordinal (targets spread onto neighbouring counts) "
          "(default {default}).", choices=LOSS_CHOICES, locked=True),
    Param("patience", int, 0, "Early stop after N epochs without a lower valid loss (default {default}: off).",
          ge=0),
    Param("workers", int, 2, "DataLoader processes (default {default}).", ge=0, le=64),
    Param("nproc_per_node", int, 1, "Data-parallel processes via torchrun (default {default}).", ge=1, le=64,
          entry=False),
    Param("seed", int, 0, "Seed (default {default}).", locked=True),
    Param("cache", bool, True, "Cache pre-resized images (default: {default:off/on})."),
    Param("device", str, "auto", f"{_or(DEVICE_CHOICES)} (default {{default}}).", choices=DEVICE_CHOICES,
          entry=False),
    Param("classes", str, "1-5", "Count classes: '1-5', or '0-5+' (5+ = five or more) (default {default}).",
          config=False, locked=True),
)

PARAMS_BY_NAME = {p.name: p for p in TRAIN_PARAMS}
ENTRY_PARAMS = tuple(p for p in TRAIN_PARAMS if p.entry)
CONFIG_PARAMS = tuple(p for p in TRAIN_PARAMS if p.config)
LAUNCH_KEYS = tuple(p.name for p in TRAIN_PARAMS if p.config and not p.entry)
RESUME_LOCKED = tuple(p.name for p in TRAIN_PARAMS if p.locked)
