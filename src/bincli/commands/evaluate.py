"""`bincli evaluate`: a split's metrics through the endpoint (or the model in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.commands.common import (
    ConfigOpt,
    EndpointOpt,
    EndpointUrlOpt,
    JsonOpt,
    SetOpt,
    WorkdirOpt,
    finish,
    load,
)
from bincli.console import out


def evaluate(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    split: Annotated[str, typer.Option("--split", help="Which split manifest: test, valid or train.")] = "test",
    endpoint: EndpointOpt = None,
    endpoint_url: EndpointUrlOpt = None,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Evaluate this model.tar.gz in-process instead of the endpoint.", dir_okay=False,
        show_default=False)] = None,
    run: Annotated[str | None, typer.Option(
        "--run", metavar="NAME", show_default=False,
        help="Evaluate the model of training run NAME (<workdir>/runs/NAME) in-process.")] = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Evaluate the trained model in this process "
                                             "instead of the endpoint.")] = False,
    local: Annotated[bool, typer.Option("--local", hidden=True, help="Old name of --in-process.")] = False,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", help="Requests in flight to the endpoint (default 8).", show_default=False)] = None,
) -> None:
    """Measure the model on a split: through the deployed endpoint, or in-process (--in-process, --run, --model).

    Prints the table 'bincli train' prints (accuracy, log-loss, RMSE, MAE, per class, against the
    majority-class baseline) and writes evaluate-<split>/ (metrics.json with the model's sha256,
    confusion-matrix.png, predictions.csv) into the model's run folder <workdir>/runs/<run>/
    (a model of no run here: <workdir>/report/). Both paths give the same numbers.

    Example: bincli evaluate --split test;  bincli evaluate --in-process;  bincli evaluate --run train2
    """
    cfg = load(config, workdir, sets, {
        "predict.endpoint": ("--endpoint", endpoint), "predict.endpoint_url": ("--endpoint-url", endpoint_url),
        "predict.concurrency": ("--concurrency", concurrency),
    }).config
    from bincli.progress import Progress
    from bincli.steps.evaluate import outcome_error, run_evaluate

    with Progress(f"evaluating the {split} split", unit="images", show_bytes=False) as bar:

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.set_total(total)
            bar.advance(1)

        result = run_evaluate(cfg, split, endpoint=endpoint, endpoint_url=endpoint_url, model=model,
                              in_process=in_process or local, progress=progress, run=run)
    finish(result, json_out, _render)
    problem = outcome_error(result)
    if problem is not None:
        raise problem


def _render(result: dict[str, Any]) -> None:
    from bincli.steps.report import render_metrics_table

    out.print(render_metrics_table(result["report"], title=f"{result['split']} split through {result['source']}"))
    if result.get("model_sha256"):
        out.print(f"model: sha256 {result['model_sha256'][:12]}" + (f" (run {result['run']})" if result.get("run")
                                                                     else ""), markup=False)
    out.print(f"report: {result['report_dir']}", markup=False, soft_wrap=True)
