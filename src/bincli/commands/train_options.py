"""The training flags, shared by `train` and `tune` (in tune, a flag given fixes that value for
every trial and takes it out of the search).

Built from the one declaration of the hyperparameters (bincli.core.hyperparams): flag name, type
and help come from there. Every option defaults to None, so an unset flag never overrides the config.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from bincli.commands.common import with_signature
from bincli.core.hyperparams import CONFIG_PARAMS, Param, show_value

# Typer-only settings that the declaration does not carry.
_EXTRA: dict[str, dict[str, Any]] = {"weights_file": {"dir_okay": False, "metavar": "FILE"}}

# The help sections of `train --help` / `tune --help`, by meaning; a new hyperparameter must pick one
# (tests/test_cli_habits.py checks every training flag has a section).
PANELS: dict[str, tuple[str, ...]] = {
    "Model": ("model", "pretrained", "weights_file", "freeze", "loss"),
    "Optimisation": ("epochs", "batch_size", "lr", "optimizer", "scheduler", "warmup_epochs", "weight_decay",
                     "label_smoothing", "patience"),
    "Data": ("image_size", "workers", "cache"),
    "Run and hardware": ("device", "nproc_per_node", "seed"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}

# What a choice flag sets: its metavar lists the choices ([adamw|sgd]), so the help says the meaning.
_MEANING = {
    "model": "Architecture to fine-tune, not a model file",
    "freeze": "Layers to freeze: the backbone, or the stem and layers up to layerN",
    "optimizer": "Optimiser",
    "scheduler": "Learning-rate schedule after warm-up",
    "device": "Where to train",
}

# Help that says more here than the declaration's one line does.
_HELP = {"weights_file": "Local ImageNet weights for --pretrained: a torchvision state_dict (.pth) of the same "
                         "architecture, not a model.tar.gz."}


def _help(p: Param) -> str:
    if p.name in _HELP:
        return _HELP[p.name]
    if p.name in _MEANING:
        return f"{_MEANING[p.name]} (default {show_value(p.default)})."
    return p.describe().replace("(default: ", "(default ")  # one way to write defaults, as every other flag


def _option(p: Param) -> Any:
    flag = f"--{p.flag}/--no-{p.flag}" if p.type is bool else f"--{p.flag}"
    extra = dict(_EXTRA.get(p.name, {}))
    if p.choices:
        extra["metavar"] = "[" + "|".join(p.choices) + "]"
    info = typer.Option(flag, help=_help(p), show_default=False, rich_help_panel=PANEL_OF.get(p.name, "Training"),
                        **extra)
    return Annotated[p.type | None, info]


# Annotated types by config key, for a command's signature.
OPTIONS: dict[str, Any] = {p.name: _option(p) for p in CONFIG_PARAMS}


def with_training_flags(*, exclude: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per declared training hyperparameter (less `exclude`), after its
    own parameters; the command receives the values given as `training={"lr": 0.01, ...}` (by
    config key, None where the flag was not given). Typer reads the signature built here."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command, eval_str=True)
        names = [name for name in OPTIONS if name not in exclude]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=OPTIONS[name])
                 for name in names]
        params = [p for p in own.parameters.values() if p.name != "training"]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            training = {name: kwargs.pop(name, None) for name in names}
            return command(*args, training=training, **kwargs)

        return with_signature(wrapper, own, [*(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params),
                                             *added])

    return decorate


def train_flags(section: str = "train", **values: Any) -> dict[str, tuple[str, Any]]:
    """{"train.lr": ("--lr", 0.01), ...} for commands.common.load, from the flag values by config name."""
    return {f"{section}.{key}": (f"--{key.replace('_', '-')}", value) for key, value in values.items()}

