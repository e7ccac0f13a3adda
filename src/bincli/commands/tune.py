"""`bincli tune`: hyperparameter search over the ResNet fine-tune (Optuna trials locally, a SageMaker
hyperparameter tuning job on backend sagemaker)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands import train_options as t
from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.commands.preflight_options import SkipPreflightOpt, YesOpt, preflight_flags
from bincli.console import err, out


@t.with_training_flags(exclude=("epochs", "patience", "nproc_per_node"))  # trials: tune.epochs, 1 process
def tune(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    max_jobs: Annotated[int | None, typer.Option("--max-jobs", help="Trials in all (default 8).",
                                                 show_default=False)] = None,
    max_parallel: Annotated[int | None, typer.Option("--max-parallel", help="Trials at once (default 1).",
                                                     show_default=False)] = None,
    objective: Annotated[str | None, typer.Option("--objective", help="valid_loss (default) or valid_acc.",
                                                  show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs per trial (default 3).",
                                               show_default=False, rich_help_panel="Optimisation")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Start the tuning job (or find it running) and "
                                          "return at once; 'bincli tune' again attaches. Backend sagemaker.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the tuning job this workdir started; finished "
                                       "trials are kept. Backend sagemaker.")] = False,
    skip_preflight: SkipPreflightOpt = False,
    yes: YesOpt = False,
    training: dict[str, Any] | None = None,
) -> None:
    """Search learning rate, batch size and weight decay (configurable in tune.search_space).

    Each trial is the training entry point run for --epochs epochs and scored on the valid split;
    weak trials are pruned early. Training flags given here are fixed for every trial. Writes
    <workdir>/tune/tune-results.csv; 'bincli train --from-tune' then uses the best trial.
    On backend sagemaker the trials are a hyperparameter tuning job's training jobs: Ctrl-C leaves
    it running, a rerun with the same settings attaches to it, --stop stops it.

    Example: bincli tune --max-jobs 8 --max-parallel 2 --epochs 2 --image-size 128
    """
    fixed = training or {}
    flags = t.train_flags(**fixed)
    flags.update({"tune.max_jobs": ("--max-jobs", max_jobs), "tune.max_parallel": ("--max-parallel", max_parallel),
                  "tune.objective": ("--objective", objective), "tune.epochs": ("--epochs", epochs)})
    loaded = load(config, workdir, sets, {**flags, **preflight_flags(skip_preflight)})
    if loaded.config.tune.max_jobs == 0:  # allowed in the config: the pipeline's "no tuning"
        from bincli.errors import UsageError

        raise UsageError("tune.max_jobs: 0 means no tuning; give 1 or more trials, e.g. --max-jobs 8")
    from bincli.steps.preflight import check_before
    from bincli.steps.tune import run_tune

    if not stop:  # --stop creates nothing
        check_before(loaded.config, ["tune"], yes=yes)

    options: dict[str, Any] = {"fixed": {key for key, value in fixed.items() if value is not None}}
    if no_wait:
        options["wait"] = False
    if stop:
        options["stop"] = True
    finish(run_tune(loaded.config, **options), json_out, _render)


def _render(result: dict[str, Any]) -> None:
    if "best_hyperparameters" not in result:  # --no-wait or --stop: a tuning job still running
        out.print(f"tuning job {result['tuning_job']}: {result['status']}", markup=False)
        if result.get("waiting") is False:
            err.print("next: 'bincli tune' again (same settings) waits for it and records the best trial",
                      markup=False)
        return
    out.print(f"{result['complete']} trial(s) complete, {result['pruned']} pruned, {result['failed']} failed",
              markup=False)
    # Rounded for people (lr=0.001958, not 0.0019578897201213002); --json and the state keep every digit.
    best = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in result["best_hyperparameters"].items())
    out.print(f"best: trial {result['best_trial']} {result['objective']}={result['best_value']:.4f} {best}",
              markup=False)
    out.print(f"results: {result['results']}", markup=False, soft_wrap=True)
    err.print("next: bincli train --from-tune", markup=False)
