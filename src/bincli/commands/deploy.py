"""`bincli deploy`: a real-time endpoint serving the trained model (local process or SageMaker)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, ModelOpt, SetOpt, WorkdirOpt, finish, load, renamed
from bincli.commands.preflight_options import SkipPreflightOpt, YesOpt, preflight_flags
from bincli.console import err, out


def deploy(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    model: ModelOpt = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", "-e", help="Endpoint name (default bincli-local).",
                                                 show_default=False, metavar="NAME")] = None,
    name: Annotated[str | None, typer.Option("--name", hidden=True, help="Old name of --endpoint.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Bind address (default 127.0.0.1).",
                                             show_default=False, metavar="HOST")] = None,
    port: Annotated[int | None, typer.Option("--port", "-p", help="Port; 0 picks a free one (default 8080).",
                                             show_default=False)] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="Requests predicted at once (default 4).",
                                                show_default=False)] = None,
    instances: Annotated[int | None, typer.Option("--instances", help="Local: server processes on one port, "
                                                  "each with cores/N threads (default 1).", show_default=False)] = None,
    update: Annotated[bool, typer.Option("--update", help="Replace the model of the running endpoint, "
                                         "keeping its name and URL (SageMaker: UpdateEndpoint, no downtime).")] = False,
    foreground: Annotated[bool, typer.Option("--foreground", help="Serve in this terminal until Ctrl-C.")] = False,
    target_from_loadtest: Annotated[bool, typer.Option(
        "--autoscaling-target-from-loadtest",
        help="Set deploy.autoscaling's target to what 'bincli loadtest' measured for this endpoint.")] = False,
    skip_preflight: SkipPreflightOpt = False,
    yes: YesOpt = False,
) -> None:
    """Start the local endpoint with the trained model; wait until it answers /ping.

    The server runs in the background (GET /ping, POST /invocations and the SageMaker runtime path
    POST /endpoints/<name>/invocations); state records its name, URL, pid and model. With backend
    sagemaker it creates a SageMaker model, endpoint config and real-time endpoint instead.

    Example: bincli deploy --port 0 && bincli predict bin.jpg && bincli teardown
    """
    endpoint = renamed(endpoint, name, "--endpoint", "--name")
    cfg = load(config, workdir, sets, {
        "deploy.model": ("--model", model), "deploy.name": ("--endpoint", endpoint), "deploy.host": ("--host", host),
        "deploy.port": ("--port", port), "deploy.threads": ("--threads", threads),
        "deploy.instances": ("--instances", instances), **preflight_flags(skip_preflight),
    }).config
    if target_from_loadtest:
        cfg = _target_from_loadtest(cfg)
    from bincli.backends import get_backend
    from bincli.steps.preflight import check_before

    backend = get_backend(cfg)
    if not foreground:  # serving in this terminal bills nothing (and only the local backend does it)
        check_before(cfg, ["deploy"], yes=yes, backend=backend)
    finish(backend.deploy(None, update=update, foreground=foreground), json_out, _render)


def _target_from_loadtest(cfg: Any) -> Any:
    """The config with deploy.autoscaling.target_invocations_per_instance from the endpoint's last loadtest."""
    from bincli.errors import UsageError
    from bincli.state import State
    from bincli.steps.loadtest import recommended_target

    scaling = cfg.deploy.autoscaling
    if scaling is None:
        raise UsageError("--autoscaling-target-from-loadtest: deploy.autoscaling is not set",
                         hint="set deploy.autoscaling (min_instances, max_instances) in the config")
    target = recommended_target(State(cfg.workdir), cfg.deploy.name)
    if not target:
        raise UsageError(f"--autoscaling-target-from-loadtest: no loadtest of endpoint '{cfg.deploy.name}' "
                         "held its latency SLO", hint=f"run 'bincli loadtest --endpoint {cfg.deploy.name}' first")
    err.print(f"autoscaling target: {target} invocations/instance/min (from the last loadtest)", markup=False)
    scaling = scaling.model_copy(update={"target_invocations_per_instance": float(target)})
    return cfg.model_copy(update={"deploy": cfg.deploy.model_copy(update={"autoscaling": scaling})})


def _render(result: dict[str, Any]) -> None:
    if result.get("stopped"):
        out.print(f"endpoint '{result.get('name')}' stopped", markup=False, soft_wrap=True)
        return
    if result.get("backend") == "sagemaker":
        verb = "updated: now serving" if result.get("action") == "updated" else f"{result['status']}:"
        out.print(f"SageMaker endpoint '{result['name']}' {verb} {result['model_s3']}", markup=False, soft_wrap=True)
        if result.get("serverless"):
            s = result["serverless"]
            where = f"serverless ({s['MemorySizeInMB']} MB, up to {s['MaxConcurrency']} requests at once)"
        else:
            where = f"{result['instance_count']} x {result['instance_type']}"
        a = result.get("autoscaling")
        if a:
            where += (f", autoscaling {a['min_instances']}-{a['max_instances']} instances at "
                      f"{a['target_invocations_per_instance']:g} invocations/instance/min")
        out.print(f"  {where} in {result['region']}", markup=False, soft_wrap=True)
        err.print("  next: bincli predict bin.jpg   |   bincli status   |   bincli teardown", markup=False,
                  soft_wrap=True)
        return
    verb = "updated: now serving" if result.get("action") == "updated" else "serving"
    out.print(f"endpoint '{result['name']}' {verb} {result['model']}", markup=False, soft_wrap=True)
    out.print(f"  url: {result['url']}  pid: {result['pid']}  log: {result['log']}", markup=False, soft_wrap=True)
    err.print("  next: bincli predict bin.jpg   |   bincli teardown", markup=False, soft_wrap=True)
