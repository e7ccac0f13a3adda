"""`bincli train`: fine-tune a ResNet on the split, evaluate it on the test split, package model.tar.gz."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands import train_options as t
from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import out


@t.with_training_flags()
def train(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    from_tune: Annotated[bool, typer.Option("--from-tune", help="Use the best hyperparameters of 'bincli tune'."
                                            )] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Discard the checkpoint and start over.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Backend sagemaker: wait for the training job "
                                       "(default), or start it and return; 'bincli train' again attaches.")] = True,
    training: dict[str, Any] | None = None,
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
    flags = t.train_flags(**(training or {}))
    loaded = load(config, workdir, sets, flags)
    from bincli.steps.train import run_train

    finish(run_train(loaded.config, from_tune=from_tune, fresh=fresh, wait=wait), json_out, _render)


def _render(result: dict[str, Any]) -> None:
    from bincli.steps.report import render_metrics_table

    if not result.get("waiting", True):
        out.print(f"training job {result['job_name']}: {result['status']}; 'bincli train' again waits for it",
                  markup=False, soft_wrap=True)
        return
    out.print(render_metrics_table(result["report"], title=f"best epoch ({result['best_epoch']}) on the "
                                                           f"{result['split']} split"))
    out.print(f"model: {result['model']}", markup=False)
    out.print(f"report: {result['report_dir']}", markup=False)
