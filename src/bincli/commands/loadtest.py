"""`bincli loadtest`: the endpoint's throughput within a latency SLO, and the autoscaling target that follows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, EndpointOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import err, out


def loadtest(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    endpoint: EndpointOpt = None,
    images: Annotated[Path | None, typer.Option(
        "--images", help="Folder of bin photos to send (default the photos 'bincli download' fetched).",
        file_okay=False, show_default=False)] = None,
    slo_p95_ms: Annotated[float, typer.Option("--slo-p95-ms", help="Latency SLO: p95 in milliseconds.",
                                              min=1)] = 200.0,
    max_clients: Annotated[int, typer.Option("--max-clients", help="Top concurrency (steps 1, 2, 4, ... up to it).",
                                             min=1, max=256)] = 32,
    duration: Annotated[str, typer.Option("--duration", help="Time per step: 20s, 1m, or plain seconds.")] = "20s",
    max_requests: Annotated[int, typer.Option("--max-requests", help="Requests per step at most.", min=1)] = 2000,
    instances: Annotated[int | None, typer.Option(
        "--instances", help="Instances behind the endpoint (default what its status says).", min=1,
        show_default=False)] = None,
    safety: Annotated[float, typer.Option("--safety", help="Share of the measured maximum to target (AWS: 0.5).",
                                          min=0.01, max=1.0)] = 0.5,
) -> None:
    """Drive the endpoint with real photos at rising concurrency; find the throughput that holds the SLO.

    Prints per step: clients, requests/s, p50/p95/p99 latency, errors and the load generator's CPU
    per request. The highest throughput per instance with p95 within the SLO gives the autoscaling
    target (max_rps x 60 x safety invocations per instance per minute), recorded in state
    'loadtest'. Writes <workdir>/report/loadtest-<name>/ (steps.csv, latency-throughput.png).
    Exits 1 when not even the first step holds the SLO.

    Example: bincli deploy --instances 2 && bincli loadtest --images photos/ --duration 10s
    """
    cfg = load(config, workdir, sets, {"predict.endpoint": ("--endpoint", endpoint)}).config
    from bincli.steps.loadtest import outcome_error, run_loadtest

    def progress(step: dict[str, Any]) -> None:
        err.print(f"  {step['clients']:>3} client(s): {step['rps']:.1f} req/s, p95 {step['p95_ms']} ms, "
                  f"{step['errors']} error(s)", markup=False, soft_wrap=True)

    err.print(f"load test: steps of {duration} (at most {max_requests} requests), SLO p95 <= {slo_p95_ms:g} ms",
              markup=False, soft_wrap=True)
    result = run_loadtest(cfg, endpoint=endpoint, images=images, slo_p95_ms=slo_p95_ms, max_clients=max_clients,
                          duration=duration, max_requests=max_requests, instances=instances, safety=safety,
                          progress=progress)
    finish(result, json_out, _render)
    problem = outcome_error(result)
    if problem is not None:
        raise problem


def _render(result: dict[str, Any]) -> None:
    """The table and the recommendation on stdout (they are the result); paths on stderr."""
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [f"load test of endpoint {result['source']} ({result['instances']} instance(s)):",
             f"{'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6} "
             f"{'client CPU ms/req':>17}  SLO"]
    for s in result["steps"]:
        lines.append(f"{s['clients']:>7} {s['rps']:>8.1f} {ms(s['p50_ms']):>8} {ms(s['p95_ms']):>8} "
                     f"{ms(s['p99_ms']):>8} {s['errors']:>6} {ms(s['client_cpu_ms_per_request']):>17}  "
                     f"{'held' if s['holds_slo'] else 'missed'}")
    if result["stopped"]:
        lines.append(result["stopped"])
    if result["recommended_target"] is not None:
        lines.append(f"max throughput within p95 <= {result['slo_p95_ms']:g} ms: {result['max_rps']:g} req/s at "
                     f"{result['best_clients']} client(s) = {result['max_rps_per_instance']:g} req/s per instance")
        lines.append(f"autoscaling target: {result['recommended_target']} invocations per instance per minute "
                     f"(= {result['max_rps_per_instance']:g} x 60 x {result['safety']:g} safety)")
    typer.echo("\n".join(lines))
    out.print(f"report: {result['report_dir']}", markup=False, soft_wrap=True)
