"""`bincli pipeline`: every step in order with one config, rerunning only what changed."""

from __future__ import annotations

import signal
from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.commands.preflight_options import SkipPreflightOpt, YesOpt, preflight_flags
from bincli.console import err, out


def pipeline(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    start: Annotated[str | None, typer.Option(
        "--from", metavar="STEP", show_default=False,
        help="First step to consider; earlier ones are left as they are.")] = None,
    stop: Annotated[str | None, typer.Option(
        "--to", metavar="STEP", show_default=False,
        help="Last step to consider; later ones are left as they are.")] = None,
    force: Annotated[list[str] | None, typer.Option(
        "--force", metavar="STEP", show_default=False,
        help="Rerun STEP (and so every step after it) even if nothing changed (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say per step whether it would run and why; run nothing, write nothing.")] = False,
    teardown: Annotated[bool, typer.Option(
        "--teardown", help="After evaluate, remove the endpoint deploy made (stops what bills while idle).")] = False,
    skip_preflight: SkipPreflightOpt = False,
    yes: YesOpt = False,
) -> None:
    """Run download, inspect, split, upload, tune, train, deploy and evaluate in order, skipping each
    step whose record is current (same settings, same inputs) and rerunning a changed one and every
    step after it. Steps the config leaves out (tune.max_jobs: 0, no upload.s3_uri) show as "not
    configured". A failed or interrupted run resumes where it stopped when run again.

    Ends with a summary: per step its status, time and key outputs, and the test metrics next to
    the majority-class baseline.

    Example: bincli pipeline -c configs/demo.yaml;  bincli pipeline --dry-run --set train.epochs=5
    """
    if dry_run:
        from bincli import lock

        lock.begin_command("pipeline --dry-run")  # reads only, like status: no workdir lock (it would write)
    cfg = load(config, workdir, sets, preflight_flags(skip_preflight)).config
    from bincli.steps.pipeline import outcome_error, plan, run_pipeline

    if not dry_run:  # the checks of every billed step it will run, before the first step runs
        from bincli.steps.preflight import check_before

        planned = plan(cfg, start=start, stop=stop, force=force, teardown=teardown)
        check_before(cfg, [p.step for p in planned if p.action == "run"], yes=yes)

    previous = signal.signal(signal.SIGTERM, _terminate)  # `kill` stops it as Ctrl-C does: a rerun resumes
    try:
        result = run_pipeline(cfg, start=start, stop=stop, force=force, teardown=teardown, dry_run=dry_run)
    finally:
        signal.signal(signal.SIGTERM, previous)
    finish(result, json_out, _render)
    problem = outcome_error(result)
    if problem is not None:
        raise problem
    if not dry_run and not teardown and any(r["step"] == "deploy" and r["status"] in ("ran", "skipped")
                                            for r in result["steps"]):
        err.print("next: bincli predict bin.jpg   |   bincli teardown (the endpoint runs until then)", markup=False)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


_PATHS = {"page", "model", "data_dir"}  # in --json; too long for the table (status shows them too)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _render(result: dict[str, Any]) -> None:
    from rich.table import Table

    dry = result["dry_run"]
    table = Table(title=f"bincli pipeline{' --dry-run' if dry else ''} in {result['workdir']}")
    for col in ("step", "plan" if dry else "status", "why") + (() if dry else ("time", "outputs")):
        table.add_column(col, overflow="fold")
    for row in result["steps"]:
        cells = [row["step"], row["status"], "; ".join(row["reasons"])]
        if not dry:
            cells += ["" if row["seconds"] is None else f"{row['seconds']:.1f} s",
                      "  ".join(f"{k}={_short(v)}" for k, v in (row.get("outputs") or {}).items() if k not in _PATHS)]
        table.add_row(*cells, style="bold red" if row["status"] == "failed" else None)
    out.print(table)
    metrics = result.get("metrics")
    if metrics:
        source = "through the endpoint" if metrics["source"] == "evaluate" else "at the end of training"
        mt = Table(title=f"{metrics['split']} split ({metrics.get('n')} images), {source}")
        mt.add_column("metric")
        mt.add_column("model", justify="right")
        mt.add_column(f"baseline (always {metrics.get('baseline_label') or 'the majority class'})", justify="right")
        for key in ("accuracy", "log_loss", "rmse", "mae"):
            if metrics.get(key) is None:
                continue
            base = (metrics.get("baseline") or {}).get(key)
            mt.add_row(key.replace("_", "-"), f"{metrics[key]:.3f}", "-" if base is None else f"{base:.3f}")
        out.print(mt)
