"""`bincli train`: fine-tune a ResNet on the split, evaluate it on the test split, package model.tar.gz."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands import train_options as t
from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import err


def train(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    model: t.Model = None,
    epochs: t.Epochs = None,
    batch_size: t.BatchSize = None,
    lr: t.Lr = None,
    image_size: t.ImageSize = None,
    pretrained: t.Pretrained = None,
    weights_file: t.WeightsFile = None,
    freeze: t.Freeze = None,
    optimizer: t.Optimizer = None,
    scheduler: t.Scheduler = None,
    warmup_epochs: t.WarmupEpochs = None,
    weight_decay: t.WeightDecay = None,
    label_smoothing: t.LabelSmoothing = None,
    patience: t.Patience = None,
    workers: t.Workers = None,
    nproc_per_node: t.NprocPerNode = None,
    seed: t.Seed = None,
    cache: t.Cache = None,
    device: t.Device = None,
    from_tune: Annotated[bool, typer.Option("--from-tune", help="Use the best hyperparameters of 'bincli tune'."
                                            )] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard the checkpoint and start over.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Backend sagemaker: wait for the training job "
                                       "(default), or start it and return; 'bincli train' again attaches.")] = True,
) -> None:
    """Train a ResNet to count items on the split, resuming from its checkpoint if there is one.

    Runs the core entry point under SageMaker's contract (torchrun with --nproc-per-node > 1),
    shows progress per epoch, then evaluates the best epoch on the test split, writes
    <workdir>/report/ (metrics.json, confusion matrix, learning curves) and <workdir>/model/model.tar.gz.
    Ctrl-C stops after saving a checkpoint; run the same command again to resume.
    With backend sagemaker it runs as a SageMaker training job on the uploaded split (spot,
    S3 checkpoints) and fetches its model and metrics; a rerun attaches to the running job.

    Example: bincli train --epochs 3 --image-size 128 --no-pretrained
    """
    flags = t.train_flags(
        model=model, epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size, pretrained=pretrained,
        weights_file=weights_file, freeze=freeze, optimizer=optimizer, scheduler=scheduler,
        warmup_epochs=warmup_epochs, weight_decay=weight_decay, label_smoothing=label_smoothing, patience=patience,
        workers=workers, nproc_per_node=nproc_per_node, seed=seed, cache=cache, device=device)
    loaded = load(config, workdir, sets, flags)
    from bincli.steps.train import run_train

    finish(run_train(loaded.config, from_tune=from_tune, fresh=fresh, wait=wait), json_out, _render)


def _render(result: dict[str, Any]) -> None:
    from bincli.steps.report import render_metrics_table

    if not result.get("waiting", True):
        err.print(f"training job {result['job_name']}: {result['status']}; 'bincli train' again waits for it",
                  markup=False, soft_wrap=True)
        return
    err.print(render_metrics_table(result["report"], title=f"best epoch ({result['best_epoch']}) on the "
                                                           f"{result['split']} split"))
    err.print(f"model: {result['model']}", markup=False)
    err.print(f"report: {result['report_dir']}", markup=False)
