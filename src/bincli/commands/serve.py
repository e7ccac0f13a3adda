"""`bincli deploy | predict | evaluate | teardown`: the endpoint and its clients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import emit_json, err
from bincli.errors import UsageError

ModelOpt = Annotated[Path | None, typer.Option(
    "--model", "-m", help="model.tar.gz to use. Default: what 'bincli train' wrote.", dir_okay=False,
    show_default=False)]
EndpointOpt = Annotated[str | None, typer.Option(
    "--endpoint", "-e", help="Endpoint name. Default: the one 'bincli deploy' recorded.", show_default=False)]
EndpointUrlOpt = Annotated[str | None, typer.Option(
    "--endpoint-url", help="SageMaker runtime URL to call instead (e.g. another workspace's endpoint).",
    show_default=False)]


def deploy(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    model: ModelOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Endpoint name (default bincli-local).",
                                             show_default=False)] = None,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).",
                                             show_default=False)] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="Port; 0 picks a free one (default 8080).",
                                             show_default=False)] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Requests predicted at once (default 4).",
                                                show_default=False)] = None,
    update: Annotated[bool, typer.Option("--update", help="Replace the model of the running endpoint, "
                                         "keeping its name and URL.")] = False,
    foreground: Annotated[bool, typer.Option("--foreground", help="Serve in this terminal until Ctrl-C.")] = False,
) -> None:
    """Start the local endpoint with the trained model; wait until it answers /ping.

    The server runs in the background (GET /ping, POST /invocations and the SageMaker runtime path
    POST /endpoints/<name>/invocations); state records its name, URL, pid and model. With backend
    sagemaker it creates a SageMaker model, endpoint config and real-time endpoint instead.

    Example: bincli deploy --port 0 && bincli predict bin.jpg && bincli teardown
    """
    cfg = load(config, workdir, sets, {
        "deploy.model": ("--model", model), "deploy.name": ("--name", name), "deploy.host": ("--host", host),
        "deploy.port": ("--port", port), "deploy.threads": ("--threads", threads),
    }).config
    if cfg.backend == "sagemaker":
        if foreground:
            raise UsageError("--foreground: only for backend local (a SageMaker endpoint runs on AWS)")
        from bincli.cloud.endpoint import deploy_sagemaker

        result = deploy_sagemaker(cfg, update=update)
    else:
        from bincli.endpoint import deploy as run_deploy

        result = run_deploy(cfg, update=update, foreground=foreground)
    finish(result, json_out, _render_deploy)


def _render_deploy(result: dict[str, Any]) -> None:
    if result.get("stopped"):
        err.print(f"endpoint '{result.get('name')}' stopped", markup=False, soft_wrap=True)
        return
    if result.get("backend") == "sagemaker":
        err.print(f"SageMaker endpoint '{result['name']}' {result['status']}: {result['model_s3']}", markup=False,
                  soft_wrap=True)
        err.print(f"  {result['instance_type']} in {result['region']}; next: bincli predict bin.jpg   |   "
                  "bincli teardown", markup=False, soft_wrap=True)
        return
    verb = "updated: now serving" if result.get("action") == "updated" else "serving"
    err.print(f"endpoint '{result['name']}' {verb} {result['model']}", markup=False, soft_wrap=True)
    err.print(f"  url: {result['url']}  pid: {result['pid']}  log: {result['log']}", markup=False, soft_wrap=True)
    err.print("  next: bincli predict bin.jpg   |   bincli teardown", markup=False, soft_wrap=True)


def predict(
    images: Annotated[list[Path], typer.Argument(help="Images (.jpg, .jpeg, .png) and/or folders of them.",
                                                 show_default=False)],
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout.")] = False,
    sets: SetOpt = None,
    endpoint: EndpointOpt = None,
    endpoint_url: EndpointUrlOpt = None,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Predict in-process with this model.tar.gz instead of an endpoint.",
        dir_okay=False, show_default=False)] = None,
    expected: Annotated[int | None, typer.Option(
        "--expected", help="Exit 1 if any image's count differs from this (a CI gate).", show_default=False)] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", help="Requests in flight (default 8).", show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help="Seconds per request (default 30).", show_default=False)] = None,
) -> None:
    """Count the items in bin photos through the deployed endpoint (or --model, in-process).

    Exits 1 if an image fails or, with --expected N, if a count is not N.

    Example: bincli predict bin.jpg more/ --json;  bincli predict bin.jpg --expected 3
    """
    cfg = load(config, workdir, sets, {
        "predict.endpoint": ("--endpoint", endpoint), "predict.endpoint_url": ("--endpoint-url", endpoint_url),
        "predict.concurrency": ("--concurrency", concurrency), "predict.timeout": ("--timeout", timeout),
    }).config
    from bincli.predict import outcome_error, run_predict

    result = run_predict(cfg, images, endpoint=endpoint, endpoint_url=endpoint_url, model=model, expected=expected)
    if json_out:
        for row in result["results"]:
            emit_json(row)
    else:
        _render_predict(result)
    problem = outcome_error(result)
    if problem is not None:
        raise problem


def _render_predict(result: dict[str, Any]) -> None:
    from rich.table import Table

    rows = result["results"]
    if len(rows) == 1:
        r = rows[0]
        if "error" in r:
            err.print(f"{r['image']}: error {r['status'] or ''} {r['error']}", markup=False, soft_wrap=True)
        else:
            err.print(f"{r['image']}: count {r['label']} (confidence {r['confidence']:.2f})", markup=False,
                      soft_wrap=True)
        return
    table = Table(title=f"predictions from {result['source']}")
    for col, justify in (("image", "left"), ("count", "right"), ("confidence", "right"), ("ms", "right")):
        table.add_column(col, justify=justify)
    for r in rows:
        if "error" in r:
            table.add_row(r["image"], "error", f"{r['status'] or ''} {r['error']}", "")
        else:
            table.add_row(r["image"], r["label"], f"{r['confidence']:.2f}", f"{r['ms']:.0f}")
    err.print(table)
    err.print(f"{result['n']} image(s), {result['failed']} failed", markup=False, soft_wrap=True)


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
    local: Annotated[bool, typer.Option("--local", help="Evaluate the trained model in-process "
                                        "instead of the endpoint.")] = False,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", help="Requests in flight to the endpoint (default 8).", show_default=False)] = None,
) -> None:
    """Measure the model on a split: through the deployed endpoint, or in-process (--local, --model).

    Prints the table 'bincli train' prints (accuracy, log-loss, RMSE, MAE, per class, against the
    majority-class baseline) and writes <workdir>/report/evaluate-<split>/ (metrics.json,
    confusion-matrix.png, predictions.csv). Both paths give the same numbers.

    Example: bincli evaluate --split test;  bincli evaluate --local
    """
    cfg = load(config, workdir, sets, {
        "predict.endpoint": ("--endpoint", endpoint), "predict.endpoint_url": ("--endpoint-url", endpoint_url),
        "predict.concurrency": ("--concurrency", concurrency),
    }).config
    from bincli.evaluate import outcome_error, run_evaluate

    with _progress(f"evaluating the {split} split") as progress:
        result = run_evaluate(cfg, split, endpoint=endpoint, endpoint_url=endpoint_url, model=model, local=local,
                              progress=progress)
    finish(result, json_out, _render_evaluate)
    problem = outcome_error(result)
    if problem is not None:
        raise problem


def _progress(description: str):
    """A context giving progress(done, total) that drives a transient bar on stderr."""
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err, transient=True) as prog:
            task = prog.add_task(description, total=None)

            def update(done: int, total: int) -> None:
                prog.update(task, completed=done, total=total)

            yield update

    return bar()


def _render_evaluate(result: dict[str, Any]) -> None:
    from bincli.report import render_metrics_table

    err.print(render_metrics_table(result["report"], title=f"{result['split']} split through {result['source']}"))
    err.print(f"report: {result['report_dir']}", markup=False, soft_wrap=True)


def teardown(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="Only if the deployed endpoint has this name.",
                                             show_default=False)] = None,
) -> None:
    """Stop the endpoint 'bincli deploy' started and forget it. Safe to run twice.

    Only the process deploy started is stopped (same pid, start time and command line); with
    backend sagemaker, only the endpoint, endpoint config and model deploy created are deleted.

    Example: bincli teardown
    """
    cfg = load(config, workdir, sets).config
    if cfg.backend == "sagemaker":
        from bincli.cloud.endpoint import teardown_sagemaker as run_teardown
    else:
        from bincli.endpoint import teardown as run_teardown
    finish(run_teardown(cfg, name), json_out, _render_teardown)


def _render_teardown(result: dict[str, Any]) -> None:
    err.print(result["message"], markup=False, soft_wrap=True)
    for item in result["removed"]:
        err.print(f"  removed {item}", markup=False, soft_wrap=True)
