"""`bincli train`: fine-tune a ResNet on the split, evaluate it on the test split, package model.tar.gz."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands import train_options as t
from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.commands.preflight_options import SkipPreflightOpt, YesOpt, preflight_flags
from bincli.console import out


@t.with_training_flags()
def train(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    from_tune: Annotated[bool, typer.Option("--from-tune", help="Use the best hyperparameters of 'bincli tune'."
                                            )] = False,
    run_name: Annotated[str | None, typer.Option(
        "--run-name", metavar="NAME", show_default=False,
        help="Train into <workdir>/runs/NAME (default: the run with these settings, else the next trainN).")] = None,
    resume: Annotated[str | None, typer.Option(
        "--resume", metavar="RUN", show_default=False,
        help="Continue run RUN ('last': the latest) with the settings it was started with.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start the run over: discard its checkpoint.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Backend sagemaker: wait for the training job "
                                       "(default), or start it and return; 'bincli train' again attaches.")] = True,
    skip_preflight: SkipPreflightOpt = False,
    yes: YesOpt = False,
    training: dict[str, Any] | None = None,
) -> None:
    """Train a ResNet to count items on the split: each set of settings is one run in <workdir>/runs/.

    Runs the core entry point under SageMaker's contract (torchrun with --nproc-per-node > 1),
    shows progress per epoch, then evaluates the best epoch on the test split, writes the run's
    report/ (metrics.json, confusion matrix, learning curves) and model.tar.gz, and copies them to
    <workdir>/report/ and <workdir>/model/model.tar.gz (the latest finished run).
    Other settings than the earlier runs': a new run (train2, train3...). Ctrl-C stops after saving
    a checkpoint; the same command again resumes that run.
    With backend sagemaker it runs as a SageMaker training job on the uploaded split (spot,
    S3 checkpoints) and fetches its model and metrics; a rerun attaches to the running job.

    Example: bincli train --epochs 3 --image-size 128 --no-pretrained
    """
    flags = t.train_flags(**(training or {}))
    given = [key.split(".", 1)[1] for key, (_, value) in flags.items() if value is not None]
    loaded = load(config, workdir, sets, {**flags, **preflight_flags(skip_preflight)})
    from bincli.steps.preflight import check_before
    from bincli.steps.train import run_train

    check_before(loaded.config, ["train"], yes=yes)

    resumed = {"flags_given": given} if resume else {}  # only a resumed run compares them with its own
    finish(run_train(loaded.config, from_tune=from_tune, fresh=fresh, wait=wait, run_name=run_name, resume=resume,
                     **resumed), json_out, _render)


def _render(result: dict[str, Any]) -> None:
    from bincli.steps.report import render_metrics_table

    if not result.get("waiting", True):
        out.print(f"run {result['run']}: training job {result['job_name']}: {result['status']}; "
                  f"'bincli train' again waits for it", markup=False, soft_wrap=True)
        return
    out.print(render_metrics_table(result["report"], title=f"best epoch ({result['best_epoch']}) on the "
                                                           f"{result['split']} split"))
    out.print(f"run: {result['run']} ({result['run_dir']})", markup=False, soft_wrap=True)
    out.print(f"model: {result['model']} (sha256 {result['model_sha256'][:12]}; latest: {result['latest_model']})",
              markup=False, soft_wrap=True)
    out.print(f"report: {result['report_dir']}", markup=False, soft_wrap=True)
