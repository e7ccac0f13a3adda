"""`bincli train`: fine-tune a ResNet on the split, evaluate it on the test split, package model.tar.gz."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import err


def _opt(flag: str, help: str, **kw: Any):
    return typer.Option(flag, help=help, show_default=False, **kw)


def train(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    model: Annotated[str | None, _opt("--model", "resnet18, resnet34 or resnet50 (default resnet18).")] = None,
    epochs: Annotated[int | None, _opt("--epochs", "Epochs in all (default 10).")] = None,
    batch_size: Annotated[int | None, _opt("--batch-size", "Images per step, per process (default 32).")] = None,
    lr: Annotated[float | None, _opt("--lr", "Peak learning rate (default 0.001).")] = None,
    image_size: Annotated[int | None, _opt("--image-size", "Square input size in pixels (default 224).")] = None,
    pretrained: Annotated[bool | None, _opt("--pretrained/--no-pretrained",
                                            "Start from ImageNet weights (default: no).")] = None,
    weights_file: Annotated[Path | None, _opt("--weights-file", "Local ImageNet weights for --pretrained.",
                                              dir_okay=False)] = None,
    freeze: Annotated[str | None, _opt("--freeze", "none, backbone, or layer1..layer4 (default none).")] = None,
    optimizer: Annotated[str | None, _opt("--optimizer", "adamw or sgd (default adamw).")] = None,
    scheduler: Annotated[str | None, _opt("--scheduler", "cosine, step or none after warm-up (default cosine).")
                         ] = None,
    warmup_epochs: Annotated[int | None, _opt("--warmup-epochs", "Linear warm-up epochs (default 1).")] = None,
    weight_decay: Annotated[float | None, _opt("--weight-decay", "AdamW/SGD weight decay (default 1e-4).")] = None,
    label_smoothing: Annotated[float | None, _opt("--label-smoothing", "0 to 1 (default 0).")] = None,
    patience: Annotated[int | None, _opt("--patience", "Early stop after N epochs without a lower valid loss "
                                         "(default 0: off).")] = None,
    workers: Annotated[int | None, _opt("--workers", "DataLoader processes (default 2).")] = None,
    nproc_per_node: Annotated[int | None, _opt("--nproc-per-node", "Data-parallel processes via torchrun "
                                               "(default 1).")] = None,
    seed: Annotated[int | None, _opt("--seed", "Seed (default 0).")] = None,
    cache: Annotated[bool | None, _opt("--cache/--no-cache", "Cache pre-resized images (default: on).")] = None,
    device: Annotated[str | None, _opt("--device", "auto, cpu or cuda (default auto).")] = None,
    from_tune: Annotated[bool, typer.Option("--from-tune", help="Use the best hyperparameters of 'bincli tune'."
                                            )] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard the checkpoint and start over.")] = False,
) -> None:
    """Train a ResNet to count items on the split, resuming from its checkpoint if there is one.

    Runs the core entry point under SageMaker's contract (torchrun with --nproc-per-node > 1),
    shows progress per epoch, then evaluates the best epoch on the test split, writes
    <workdir>/report/ (metrics.json, confusion matrix, learning curves) and <workdir>/model/model.tar.gz.
    Ctrl-C stops after saving a checkpoint; run the same command again to resume.

    Example: bincli train --epochs 3 --image-size 128 --no-pretrained
    """
    flags = {
        "model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr, "image_size": image_size,
        "pretrained": pretrained, "weights_file": weights_file, "freeze": freeze, "optimizer": optimizer,
        "scheduler": scheduler, "warmup_epochs": warmup_epochs, "weight_decay": weight_decay,
        "label_smoothing": label_smoothing, "patience": patience, "workers": workers,
        "nproc_per_node": nproc_per_node, "seed": seed, "cache": cache, "device": device,
    }
    loaded = load(config, workdir, sets,
                  {f"train.{key}": (f"--{key.replace('_', '-')}", value) for key, value in flags.items()})
    from bincli.training import run_train

    cfg = loaded.config
    result = run_train(cfg.train, cfg.workdir, from_tune=from_tune, fresh=fresh)
    finish(result, json_out, _render)


def _render(result: dict[str, Any]) -> None:
    from bincli.report import render_metrics_table

    err.print(render_metrics_table(result["report"], title=f"best epoch ({result['best_epoch']}) on the "
                                                           f"{result['split']} split"))
    err.print(f"model: {result['model']}", markup=False)
    err.print(f"report: {result['report_dir']}", markup=False)
