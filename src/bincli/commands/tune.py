"""`bincli tune`: hyperparameter search over the ResNet fine-tune (Optuna trials locally)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands import train_options as t
from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import err


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
                                               show_default=False, rich_help_panel="Training")] = None,
    training: dict[str, Any] | None = None,
) -> None:
    """Search learning rate, batch size and weight decay (configurable in tune.search_space).

    Each trial is the training entry point run for --epochs epochs and scored on the valid split;
    weak trials are pruned early. Training flags given here are fixed for every trial. Writes
    <workdir>/tune/tune-results.csv; 'bincli train --from-tune' then uses the best trial.

    Example: bincli tune --max-jobs 8 --max-parallel 2 --epochs 2 --image-size 128
    """
    fixed = training or {}
    flags = t.train_flags(**fixed)
    flags.update({"tune.max_jobs": ("--max-jobs", max_jobs), "tune.max_parallel": ("--max-parallel", max_parallel),
                  "tune.objective": ("--objective", objective), "tune.epochs": ("--epochs", epochs)})
    loaded = load(config, workdir, sets, flags)
    from bincli.steps.tune import run_tune

    result = run_tune(loaded.config, fixed={key for key, value in fixed.items() if value is not None})
    finish(result, json_out, _render)


def _render(result: dict[str, Any]) -> None:
    err.print(f"{result['complete']} trial(s) complete, {result['pruned']} pruned, {result['failed']} failed",
              markup=False)
    best = " ".join(f"{k}={v}" for k, v in result["best_hyperparameters"].items())
    err.print(f"best: trial {result['best_trial']} {result['objective']}={result['best_value']:.4f} {best}",
              markup=False)
    err.print(f"results: {result['results']}  (next: bincli train --from-tune)", markup=False)
