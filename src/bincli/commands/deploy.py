"""`bincli deploy`: a real-time endpoint serving the trained model (local process or SageMaker)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, ModelOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import err


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
    from bincli.backends import get_backend

    finish(get_backend(cfg).deploy(None, update=update, foreground=foreground), json_out, _render)


def _render(result: dict[str, Any]) -> None:
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
