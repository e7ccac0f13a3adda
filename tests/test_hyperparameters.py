"""The training hyperparameters are declared once (core/hyperparams.py); the entry point's argparse
flags, the config's TrainConfig and the `train`/`tune` flags are built from it and must agree."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.main import get_command
from typer.testing import CliRunner

from bincli.cli import app
from bincli.commands.train import train as train_command
from bincli.commands.tune import tune as tune_command
from bincli.config import TrainConfig
from bincli.core.contract import HYPERPARAMETERS
from bincli.core.engine import LOSSES, OPTIMIZERS, SCHEDULES
from bincli.core.hyperparams import (
    CONFIG_PARAMS,
    DEVICE_CHOICES,
    ENTRY_PARAMS,
    FREEZE_CHOICES,
    LAUNCH_KEYS,
    LOSS_CHOICES,
    MODEL_CHOICES,
    OPTIMIZER_CHOICES,
    PARAMS_BY_NAME,
    RESUME_LOCKED,
    SCHEDULER_CHOICES,
    TRAIN_PARAMS,
    show_value,
)
from bincli.core.model import ARCHITECTURES
from bincli.core.train import get_args_parser
from bincli.hyperparameters import hyperparameters_from

runner = CliRunner()


def _entry_actions() -> dict[str, argparse.Action]:
    """The entry point's flags by dest (the hyperparameter group and --device)."""
    return {a.dest: a for a in get_args_parser()._actions if a.option_strings}


def _training_options(command: str) -> dict[str, typing.Any]:
    """The click options of a command in the training panels (Model, Optimisation, ...), by parameter name."""
    from bincli.commands.train_options import PANELS

    params = get_command(app).commands[command].params
    return {p.name: p for p in params if getattr(p, "rich_help_panel", None) in PANELS}


def _value_type(function, name: str) -> type:
    """X of a signature's `Annotated[X | None, typer.Option(...)]`."""
    hint = typing.get_type_hints(function, include_extras=True)[name]
    base = typing.get_args(hint)[0]
    return next(t for t in typing.get_args(base) if t is not type(None))


def test_one_declaration_gives_every_name():
    names = [p.name for p in TRAIN_PARAMS]
    assert len(names) == len(set(names))
    assert tuple(p.name.replace("_", "-") for p in ENTRY_PARAMS) == HYPERPARAMETERS
    assert list(TrainConfig.model_fields) == [p.name for p in CONFIG_PARAMS]
    assert LAUNCH_KEYS == ("nproc_per_node", "device")
    assert set(_entry_actions()) >= {p.name for p in ENTRY_PARAMS} | {"device"}
    assert not {"nproc_per_node"} & set(_entry_actions())  # launch only: the launcher runs torchrun
    assert list(_training_options("train")) == [p.name for p in CONFIG_PARAMS]
    # tune: no patience, one process per trial, and its own --epochs (tune.epochs: epochs per trial)
    tune_options = _training_options("tune")
    assert set(tune_options) == {p.name for p in CONFIG_PARAMS} - {"patience", "nproc_per_node"}
    assert tune_options["epochs"].help == "Epochs per trial (default 3)."
    # resume: what shapes a run is locked; epochs, batch size, workers, patience, cache may change
    assert set(RESUME_LOCKED) == {p.name for p in ENTRY_PARAMS} - {"epochs", "batch_size", "weights_file", "patience",
                                                                   "workers", "cache"}


def test_entry_point_defaults_are_the_config_defaults():
    parsed = vars(get_args_parser().parse_args([]))
    config = TrainConfig().model_dump()
    for p in TRAIN_PARAMS:
        if p.entry or p.name == "device":
            assert parsed[p.name] == p.default, p.name
        if p.config:
            assert config[p.name] == p.default, p.name
    for name in set(config) & set(parsed):
        assert parsed[name] == config[name] and type(parsed[name]) is type(config[name]), name
    assert parsed["workers"] == config["workers"] == 2  # was min(8, cpus) in the entry point
    assert isinstance(parsed["warmup_epochs"], float) and isinstance(config["warmup_epochs"], float)
    hp = hyperparameters_from(TrainConfig())
    assert set(hp) == set(HYPERPARAMETERS) - {"classes", "weights-file"}  # classes: from the split; None: left out


def test_types_agree_and_values_parse_the_same():
    actions = _entry_actions()
    samples = {int: "64", float: "0.5", bool: "false", str: None, Path: "w.pth"}
    for p in TRAIN_PARAMS:
        if p.config:
            field = TrainConfig.model_fields[p.name]
            assert _value_type(train_command, p.name) is p.type, p.name
            declared = (p.type | None) if p.optional else p.type
            assert field.annotation == (typing.Literal[p.choices] if p.choices else declared), p.name
        text = samples[p.type] if not p.choices else p.choices[-1]
        if p.name in actions and text is not None:
            value = get_args_parser().parse_args([f"--{p.flag}", text]).__dict__[p.name]
            expected = TrainConfig.model_validate({p.name: text}).model_dump()[p.name] if p.config else text
            assert value == (str(expected) if p.type is Path else expected), p.name
    for name in set(_training_options("tune")) - {"epochs"}:
        assert _value_type(tune_command, name) is PARAMS_BY_NAME[name].type, name
    assert get_args_parser().parse_args(["--warmup-epochs", "0.5"]).warmup_epochs == 0.5


def test_choices_agree_with_the_factories():
    actions = _entry_actions()
    for p in TRAIN_PARAMS:
        if p.choices and p.name in actions:
            assert actions[p.name].choices == list(p.choices), p.name
        if p.choices and p.config:
            assert typing.get_args(TrainConfig.model_fields[p.name].annotation) == p.choices, p.name
    assert tuple(ARCHITECTURES) == MODEL_CHOICES == PARAMS_BY_NAME["model"].choices
    assert tuple(OPTIMIZERS) == OPTIMIZER_CHOICES and tuple(SCHEDULES) == SCHEDULER_CHOICES
    assert tuple(LOSSES) == LOSS_CHOICES == PARAMS_BY_NAME["loss"].choices
    assert PARAMS_BY_NAME["freeze"].choices == FREEZE_CHOICES
    assert PARAMS_BY_NAME["device"].choices == DEVICE_CHOICES
    with pytest.raises(ValidationError, match="Input should be 'resnet18', 'resnet34' or 'resnet50'"):
        TrainConfig(model="resnet9")


@pytest.mark.parametrize("param", [p for p in CONFIG_PARAMS if p.bounds], ids=lambda p: p.name)
def test_config_enforces_the_declared_bounds(param):
    step = 1 if param.type is int else 1e-9
    for kind, limit in param.bounds.items():
        inside = {"ge": limit, "gt": limit + step, "le": limit, "lt": limit - step}[kind]
        outside = {"ge": limit - step, "gt": limit, "le": limit + step, "lt": limit}[kind]
        assert getattr(TrainConfig(**{param.name: inside}), param.name) == inside
        with pytest.raises(ValidationError, match=param.name):
            TrainConfig(**{param.name: outside})


def test_help_comes_from_the_declaration_and_states_the_default():
    train_options = _training_options("train")
    actions = _entry_actions()
    for p in CONFIG_PARAMS:  # the declaration's line, defaults written "(default X)" as on every flag
        if p.name not in ("weights_file", "model", "freeze", "optimizer", "scheduler", "device"):  # say more
            assert train_options[p.name].help == p.describe().replace("(default: ", "(default "), p.name
    for p in ENTRY_PARAMS:
        assert actions[p.name].help == p.describe(), p.name
    # the flags and their help as users know them
    assert train_options["pretrained"].opts == ["--pretrained"]
    assert train_options["pretrained"].secondary_opts == ["--no-pretrained"]
    assert train_options["cache"].secondary_opts == ["--no-cache"]
    assert train_options["batch_size"].opts == ["--batch-size"]
    assert train_options["weight_decay"].help == "AdamW/SGD weight decay (default 1e-4)."
    assert train_options["pretrained"].help == "Start from ImageNet weights (default no)."
    assert train_options["cache"].help == "Cache pre-resized images (default on)."
    assert train_options["model"].help == "Architecture to fine-tune, not a model file (default resnet18)."
    assert train_options["warmup_epochs"].help == "Linear warm-up epochs (default 1)."
    assert [show_value(v) for v in (0.001, 1e-4, 0.0, 10, True)] == ["0.001", "1e-4", "0", "10", "on"]
    text = get_args_parser().format_help()
    assert "(default: 1e-4)" not in text and text.count("AdamW/SGD weight decay (default 1e-4).") == 1


def test_train_flags_reach_the_config(in_tmp, monkeypatch):
    seen = {}

    def fake_run_train(cfg, **kwargs):
        seen["train"] = cfg.train
        return {"waiting": False, "job_name": "j", "status": "x"}

    monkeypatch.setattr("bincli.steps.train.run_train", fake_run_train)
    result = runner.invoke(app, ["train", "--warmup-epochs", "0.5", "--workers", "3", "--no-cache", "--pretrained",
                                 "--optimizer", "sgd", "--json"])
    assert result.exit_code == 0, result.output
    cfg = seen["train"]
    assert (cfg.warmup_epochs, cfg.workers, cfg.cache, cfg.pretrained, cfg.optimizer) == (0.5, 3, False, True, "sgd")
    result = runner.invoke(app, ["train", "--optimizer", "adam"])
    assert result.exit_code != 0 and "train.optimizer: Input should be 'adamw' or 'sgd', got 'adam'" in result.output
