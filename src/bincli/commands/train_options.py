"""The training flags, shared by `train` and `tune` (in tune, a flag given fixes that value for
every trial and takes it out of the search).

Built from the one declaration of the hyperparameters (bincli.core.hyperparams): flag name, type
and help come from there. Every option defaults to None, so an unset flag never overrides the config.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.core.hyperparams import CONFIG_PARAMS, Param

# Typer-only settings that the declaration does not carry.
_EXTRA: dict[str, dict[str, Any]] = {"weights_file": {"dir_okay": False}}


def _option(p: Param) -> Any:
    flag = f"--{p.flag}/--no-{p.flag}" if p.type is bool else f"--{p.flag}"
    info = typer.Option(flag, help=p.describe(), show_default=False, rich_help_panel="Training",
                        **_EXTRA.get(p.name, {}))
    return Annotated[p.type | None, info]


# Annotated types by config key, for a command's signature (`epochs: t.Epochs = None`).
OPTIONS: dict[str, Any] = {p.name: _option(p) for p in CONFIG_PARAMS}

Model = OPTIONS["model"]
Epochs = OPTIONS["epochs"]
BatchSize = OPTIONS["batch_size"]
Lr = OPTIONS["lr"]
ImageSize = OPTIONS["image_size"]
Pretrained = OPTIONS["pretrained"]
WeightsFile = OPTIONS["weights_file"]
Freeze = OPTIONS["freeze"]
Optimizer = OPTIONS["optimizer"]
Scheduler = OPTIONS["scheduler"]
WarmupEpochs = OPTIONS["warmup_epochs"]
WeightDecay = OPTIONS["weight_decay"]
LabelSmoothing = OPTIONS["label_smoothing"]
Patience = OPTIONS["patience"]
Workers = OPTIONS["workers"]
NprocPerNode = OPTIONS["nproc_per_node"]
Seed = OPTIONS["seed"]
Cache = OPTIONS["cache"]
Device = OPTIONS["device"]


def train_flags(section: str = "train", **values: Any) -> dict[str, tuple[str, Any]]:
    """{"train.lr": ("--lr", 0.01), ...} for commands.common.load, from the flag values by config name."""
    return {f"{section}.{key}": (f"--{key.replace('_', '-')}", value) for key, value in values.items()}

