"""`bincli loadtest`: how much traffic one endpoint takes within a latency SLO, measured.

What SageMaker Inference Recommender sells as a service, for one endpoint: real photos at rising
concurrency (1, 2, 4, ... max_clients clients), each client a thread sending one request after
another through the backend's runtime client (its keep-alive connection pool: one connection per
client), each step bounded in time and in requests. Per step: requests/s, latency
p50/p95/p99 of the answered requests, errors, and the load generator's own CPU per request
(time.process_time of this process / requests), which shows whether the client or the endpoint is
the bottleneck. Rising stops at the first step over the SLO: more clients only queue longer.

The highest throughput whose p95 holds the SLO (with no errors), divided by the endpoint's
instance count, gives the autoscaling target: max_rps_per_instance * 60 * safety invocations per
instance per minute (SageMakerVariantInvocationsPerInstance counts per minute; AWS's guidance is a
safety factor of 0.5). `recommended_target(state, endpoint)` reads it back for deploy.

Writes <workdir>/report/loadtest-<name>/ (steps.csv, latency-throughput.png) and state 'loadtest':
{"endpoints": {name: {"instances", "max_rps", "max_rps_per_instance", "recommended_target", ...}}}.
"""

from __future__ import annotations

import csv
import io
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bincli.backends.runtime import PredictError
from bincli.config import Config
from bincli.errors import BincliError, UsageError
from bincli.layout import REPORT_DIR, under
from bincli.state import State

SAFETY = 0.5  # AWS's guidance for target tracking: scale out at half the load that still holds the SLO
STEPS_CSV = "steps.csv"
PLOT_PNG = "latency-throughput.png"
MAX_PHOTOS = 200  # held in memory, so the disk is not part of what is measured
WARM_UP = 3  # requests before the first step (the first answers of a fresh server are slow)
MAX_DURATION_S = 3600.0
CSV_COLUMNS = ("clients", "requests", "ok", "errors", "seconds", "rps", "p50_ms", "p95_ms", "p99_ms",
               "client_cpu_ms_per_request", "holds_slo", "first_error")

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


# ---------------------------------------------------------------- pure parts
def parse_duration(text: str | float, what: str = "--duration") -> float:
    """'20s', '1m', '500ms' or plain seconds ('30', 2.5) as seconds; UsageError otherwise."""
    m = _DURATION.fullmatch(str(text).strip().lower())
    if m is None:
        raise UsageError(f"{what} {text!r}: expected a duration such as 20s, 1m, 500ms or plain seconds (30)")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not 0 < seconds <= MAX_DURATION_S:
        raise UsageError(f"{what} {text!r}: must be more than 0 and at most 1h per step")
    return seconds


def client_steps(max_clients: int) -> list[int]:
    """1, 2, 4, ... up to max_clients, which is always the last step."""
    if max_clients < 1:
        raise UsageError(f"--max-clients {max_clients}: must be 1 or more")
    steps = [1 << i for i in range(max_clients.bit_length()) if 1 << i < max_clients]
    return [*steps, max_clients]


def percentile(sorted_ms: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of sorted values; None when there are none."""
    if not sorted_ms:
        return None
    return sorted_ms[max(0, math.ceil(q / 100 * len(sorted_ms)) - 1)]


def holds_slo(step: dict[str, Any], slo_p95_ms: float) -> bool:
    """A step holds the SLO when every request was answered and p95 is within it."""
    return step["ok"] > 0 and step["errors"] == 0 and step["p95_ms"] is not None and step["p95_ms"] <= slo_p95_ms


def target_from(max_rps_per_instance: float, safety: float = SAFETY) -> int:
    """Invocations per instance per minute for target tracking (at least 1)."""
    return max(1, math.floor(max_rps_per_instance * 60 * safety))


def recommend(steps: Sequence[dict[str, Any]], slo_p95_ms: float, instances: int,
              safety: float = SAFETY) -> dict[str, Any]:
    """The highest throughput that holds the SLO and the target that follows (None when none holds)."""
    holding = [s for s in steps if holds_slo(s, slo_p95_ms)]
    if not holding:
        return {"best_clients": None, "max_rps": None, "max_rps_per_instance": None, "recommended_target": None}
    best = max(holding, key=lambda s: s["rps"])
    per_instance = best["rps"] / instances
    return {"best_clients": best["clients"], "max_rps": best["rps"], "max_rps_per_instance": round(per_instance, 3),
            "recommended_target": target_from(per_instance, safety)}


def recommended_target(state: State, endpoint: str) -> int | None:
    """The target-tracking value the last loadtest of `endpoint` recommends, or None."""
    outputs = state.outputs("loadtest") or {}
    return ((outputs.get("endpoints") or {}).get(endpoint) or {}).get("recommended_target")


# ---------------------------------------------------------------- measuring
def run_step(predictor, bodies: Sequence[tuple[bytes, str]], clients: int, duration_s: float,
             max_requests: int) -> dict[str, Any]:
    """`clients` threads send requests back to back until `duration_s` has passed or `max_requests`
    were sent; requests in flight then finish. Returns the step's figures."""
    lock, stop = threading.Lock(), threading.Event()
    sent, latencies, errors = [0], [], []
    deadline = time.monotonic() + duration_s

    def client() -> None:
        while not stop.is_set():
            with lock:
                if sent[0] >= max_requests or time.monotonic() >= deadline:
                    return
                body, content_type = bodies[sent[0] % len(bodies)]
                sent[0] += 1
            t0 = time.perf_counter()
            try:
                predictor.invoke(body, content_type)
            except PredictError as exc:
                failure = f"{exc.status or ''} {exc.message}".strip()
            except BincliError as exc:  # unreachable, refused: counted, the step goes on
                failure = exc.message
            else:
                failure = None
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                (errors.append(failure) if failure else latencies.append(ms))

    threads = [threading.Thread(target=client, name=f"loadtest-{i}", daemon=True) for i in range(clients)]
    cpu0, t0 = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:  # Ctrl-C: no new requests; the ones in flight end with their timeout
        stop.set()
        raise
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    lat = sorted(latencies)
    total = len(lat) + len(errors)

    def rounded(q: float) -> float | None:
        value = percentile(lat, q)
        return None if value is None else round(value, 1)

    return {"clients": clients, "requests": total, "ok": len(lat), "errors": len(errors),
            "seconds": round(seconds, 3), "rps": round(len(lat) / seconds, 2) if seconds > 0 else 0.0,
            "p50_ms": rounded(50), "p95_ms": rounded(95), "p99_ms": rounded(99),
            "client_cpu_ms_per_request": round(cpu * 1000 / total, 3) if total else None,
            "first_error": errors[0] if errors else None}


def load_photos(paths: Sequence[Path], limit: int = MAX_PHOTOS) -> list[tuple[bytes, str]]:
    """(bytes, content type) of up to `limit` photos, read once."""
    from bincli.steps.answering import content_type_for

    out = []
    for path in paths[:limit]:
        try:
            out.append((path.read_bytes(), content_type_for(path)))
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    return out


def _photo_paths(cfg: Config, images: Path | None) -> list[Path]:
    from bincli.data.abid import IMAGES_DIR
    from bincli.steps.predict import collect_images

    if images is None:
        downloaded = State(cfg.workdir).outputs("download")
        if downloaded is None:
            raise UsageError("no photos to send: pass --images DIR (bin photos, .jpg/.png)",
                             hint="or run 'bincli download' first: its photos are the default")
        images = Path(downloaded["data_dir"]) / IMAGES_DIR
    return collect_images([Path(images)])


def _instances(backend, name: str, given: int | None) -> tuple[int, str]:
    """How many instances serve `name` (and where that figure came from)."""
    if given is not None:
        return given, "--instances"
    status = backend.endpoint_status()
    count = (status or {}).get("instances")
    if status and status.get("name") == name and isinstance(count, int) and count >= 1:
        return count, "the endpoint's status"
    return 1, "assumed (no status for this endpoint; pass --instances)"


def run_loadtest(cfg: Config, endpoint: str | None = None, images: Path | None = None, slo_p95_ms: float = 200.0,
                 max_clients: int = 32, duration: str | float = "20s", max_requests: int = 2000,
                 instances: int | None = None, safety: float = SAFETY, clients: Sequence[int] | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Drive the endpoint at rising concurrency; write the report, record state 'loadtest'.

    `clients` replaces the 1, 2, 4 ... max_clients steps (and runs them all, held SLO or not)."""
    if slo_p95_ms <= 0:
        raise UsageError(f"--slo-p95-ms {slo_p95_ms:g}: must be more than 0")
    if not 0 < safety <= 1:
        raise UsageError(f"--safety {safety:g}: must be more than 0 and at most 1")
    if max_requests < 1:
        raise UsageError(f"--max-requests {max_requests}: must be 1 or more")
    duration_s = parse_duration(duration)
    plan = list(clients) if clients else client_steps(max_clients)
    bodies = load_photos(_photo_paths(cfg, images))

    from bincli.backends import get_backend

    # One keep-alive connection per client: the runtime client's pool holds as many as the top step.
    pool = max([*plan, cfg.predict.concurrency])
    run_cfg = cfg.model_copy(update={"predict": cfg.predict.model_copy(update={"concurrency": pool})})
    backend = get_backend(run_cfg)
    predictor = backend.runtime_client(endpoint or cfg.predict.endpoint, cfg.predict.endpoint_url)
    try:
        n_instances, instances_from = _instances(backend, predictor.name, instances)
        warm = run_step(predictor, bodies, 1, duration_s, WARM_UP)
        if warm["ok"] == 0:
            raise BincliError(f"endpoint {predictor.where} answered none of {warm['requests']} warm-up request(s): "
                              f"{warm['first_error']}")
        steps, stopped = [], None
        for n in plan:
            step = run_step(predictor, bodies, n, duration_s, max_requests)
            step["holds_slo"] = holds_slo(step, slo_p95_ms)
            steps.append(step)
            if progress is not None:
                progress(step)
            if not step["holds_slo"] and clients is None:
                stopped = (f"stopped after {n} client(s): " +
                           (f"{step['errors']} error(s)" if step["errors"] else f"p95 {step['p95_ms']} ms") +
                           f" breaks the SLO (p95 <= {slo_p95_ms:g} ms, no errors)")
                break
    finally:
        predictor.close()

    found = recommend(steps, slo_p95_ms, n_instances, safety)
    total_requests = sum(s["requests"] for s in steps)
    cpu = sum((s["client_cpu_ms_per_request"] or 0) * s["requests"] for s in steps)
    result = {
        "endpoint": predictor.name, "source": predictor.where, "instances": n_instances,
        "instances_from": instances_from, "slo_p95_ms": slo_p95_ms, "safety": safety, "duration_s": duration_s,
        "max_requests": max_requests, "photos": len(bodies), "steps": steps, "stopped": stopped, **found,
        "client_cpu_ms_per_request": round(cpu / total_requests, 3) if total_requests else None,
    }
    out_dir = under(cfg.workdir, REPORT_DIR, f"loadtest-{predictor.name}")
    result.update(_write_report(result, out_dir))
    _record(cfg, result)
    return result


# ---------------------------------------------------------------- outputs
def _write_report(result: dict[str, Any], out_dir: Path) -> dict[str, str]:
    from bincli.core.fileio import atomic_write_bytes, atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["steps"])
    png = plot_png(result)  # drawn before anything is written: a failure leaves no half report
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / STEPS_CSV, buf.getvalue())
    atomic_write_bytes(out_dir / PLOT_PNG, png)
    return {"report_dir": str(out_dir), "csv": str(out_dir / STEPS_CSV), "plot": str(out_dir / PLOT_PNG)}


def plot_png(result: dict[str, Any]) -> bytes:
    """Latency against throughput (one point per step, labelled with its clients) and throughput
    against clients, with the SLO and the chosen step marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s in result["steps"] if s["ok"]]
    clients = [s["clients"] for s in steps]
    rps = [s["rps"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    try:
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
            left.plot(rps, [s[key] for s in steps], style, label=key.removesuffix("_ms"))
        for s in steps:
            left.annotate(f"{s['clients']}", (s["rps"], s["p95_ms"]), textcoords="offset points", xytext=(4, 4),
                          fontsize=8)
        left.axhline(result["slo_p95_ms"], color="red", linestyle="--", label=f"SLO p95 {result['slo_p95_ms']:g} ms")
        left.set_xlabel("throughput (requests/s)")
        left.set_ylabel("latency (ms)")
        left.set_title("latency vs throughput (labels: clients)")
        left.legend()
        right.plot(clients, rps, "o-", label="requests/s")
        if result["best_clients"] is not None:
            right.plot([result["best_clients"]], [result["max_rps"]], "r*", markersize=14,
                       label=f"max holding the SLO: {result['max_rps']:g}/s")
        right.set_xscale("log", base=2)
        right.set_xticks(clients, [str(c) for c in clients])
        right.set_xlabel("concurrent clients")
        right.set_ylabel("throughput (requests/s)")
        right.set_title(f"{result['endpoint']}: {result['instances']} instance(s)")
        right.legend()
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.set_ylim(bottom=0)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", dpi=100)
        return out.getvalue()
    finally:
        plt.close(fig)


def _record(cfg: Config, result: dict[str, Any]) -> None:
    """State 'loadtest': the latest result per endpoint (other endpoints' results are kept)."""
    state = State(cfg.workdir)
    endpoints = dict((state.outputs("loadtest") or {}).get("endpoints") or {})
    endpoints[result["endpoint"]] = {
        k: result[k] for k in ("instances", "max_rps", "max_rps_per_instance", "recommended_target", "best_clients",
                               "slo_p95_ms", "safety", "client_cpu_ms_per_request", "report_dir")}
    endpoints[result["endpoint"]]["steps"] = len(result["steps"])
    state.record("loadtest", {"endpoints": endpoints},
                 {"slo_p95_ms": result["slo_p95_ms"], "safety": result["safety"], "duration_s": result["duration_s"],
                  "max_requests": result["max_requests"]})


def outcome_error(result: dict[str, Any]) -> BincliError | None:
    """The error that makes `bincli loadtest` exit 1 (no step held the SLO), or None."""
    if result["recommended_target"] is not None:
        return None
    first = result["steps"][0]
    why = f"{first['errors']} error(s)" if first["errors"] else f"p95 {first['p95_ms']} ms"
    return BincliError(f"no step held the SLO (p95 <= {result['slo_p95_ms']:g} ms, no errors): already at "
                       f"{first['clients']} client(s), {why}; no autoscaling target follows",
                       hint="raise --slo-p95-ms, or serve the model on faster instances")
