"""The local endpoint: SageMaker's container API and runtime API over one loaded model.

    GET  /ping                          200 {"status": "Healthy"} once the model is loaded
    POST /invocations                   the container API: image bytes in, JSON answer out
    POST /endpoints/<name>/invocations  the runtime API path, so boto3's `sagemaker-runtime`
                                        invoke_endpoint works with endpoint_url=<this server>
    GET  /metrics                       requests, errors, statuses, latency p50/p95, where the time went
                                        (stages_ms: read, prepare, wait, forward, respond), batching (JSON)
    GET  /info                          name, pid, model and its classes

Every answer comes from bincli.core.inference's model_fn/input_fn/predict_fn/output_fn, the
functions SageMaker's container runs, so local answers are SageMaker's answers. A refused
request gets the handler's 4xx and the body {"error": message}; on the runtime path it is
wrapped the way SageMaker does it (424 ModelError with OriginalStatusCode), which boto3 parses.

The model is loaded once, before the port answers, on the fastest runtime that loads (core/runtimes.py,
named by /info). Requests are decoded and resized (the eval preset's first half, model.pixels) in a pool
of `threads` worker threads (Pillow and torch release the GIL), so /ping and /metrics answer while requests
run; the rest of the preset runs inside the forward (core/runtimes.py). With max_batch_size > 1 (8 by
default; 1 = off) the images of concurrent requests then run as one forward, one forward at a time
(batching.py); a lone request waits for nobody and runs its forward on the pool thread that decoded it.
Each answer carries x-bincli-batch-size and /metrics counts the batches.
The routes are plain module functions; what they share (model, pool, stats, settings) is on app.state.

Clients that hold connections without using them are cut off (settings from DeployConfig):
a body not received within body_timeout gets 408; a connection idle (or still sending its request
headers) for keep_alive_timeout is closed; beyond max_connections a request gets 503. A client that
goes away mid-request is one log line (status 499 in /metrics), not an error.

The model is extracted under <extract-dir>/model-<pid>/, locked while this process lives; a start
removes the folders of servers that are gone (killed with SIGKILL, say).

Run: python -m bincli.backends.local.server --model model.tar.gz [--name N] [--host H] [--port P] [--threads T]
     [--runtime-file F] [--extract-dir D] [--body-timeout S] [--keep-alive-timeout S] [--max-connections N]
     [--max-batch-size N] [--max-batch-delay-ms MS]
     (port 0 picks a free port; F receives {"pid", "port", "url", ...} when ready)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bincli.artifacts.loader import load_model, warm_up
from bincli.backends.local.batching import NOT_ALONE, Batcher
from bincli.core.contract import JSON_CONTENT_TYPE, MAX_PAYLOAD_BYTES

if TYPE_CHECKING:
    from bincli.config import DeployConfig

log = logging.getLogger("bincli.backends.local.server")

# A body announced above the limit is still read (and dropped) up to this size, so that the client,
# which is busy sending it, reads our 413 instead of a reset connection. Beyond it we hang up.
_DRAIN_LIMIT = 64 * 1024 * 1024
_EXTRACT_PREFIX = "model-"
_LOCK_FILE = ".lock"


def settings(**values: Any) -> DeployConfig:
    """The server's settings: DeployConfig's defaults (the one place they are written) and `values`."""
    from bincli.config import DeployConfig

    return DeployConfig(**values)


# The stages of an answered request, as /metrics times them: reading the body; decoding and resizing it
# (on a pool thread); waiting for a forward (batching: the batch to form, or the forward before it); the
# forward of the batch it ran in, answers included; and the answer's JSON.
STAGES = ("read", "prepare", "wait", "forward", "respond")


class Stats:
    """Request counters and recent latencies. Touched only from the event loop thread."""

    def __init__(self, keep: int = 10_000):
        self.started = time.time()
        self.requests = 0
        self.errors = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=keep)
        self.stages_ms: dict[str, collections.deque[float]] = {s: collections.deque(maxlen=keep) for s in STAGES}
        self.in_flight = 0

    def record(self, status: int, ms: float, stages: dict[str, float] | None = None) -> None:
        self.requests += 1
        self.errors += status >= 400
        self.by_status[status] += 1
        self.latencies_ms.append(ms)
        if status == 200 and stages:
            for name, seconds in stages.items():
                self.stages_ms[name].append(seconds * 1000)

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "requests": self.requests, "errors": self.errors, "in_flight": self.in_flight,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "latency_ms": {**_quantiles(lat, 0.50, 0.95), "max": round(lat[-1], 3) if lat else None,
                           "mean": round(sum(lat) / len(lat), 3) if lat else None, "window": len(lat)},
            # Where an answered request's time went, server side (p50/p95 over the same window).
            "stages_ms": {name: {**_quantiles(sorted(values), 0.50, 0.95), "window": len(values)}
                          for name, values in self.stages_ms.items()},
            "uptime_s": round(time.time() - self.started, 1),
        }


def _quantiles(ordered: list[float], *ps: float) -> dict[str, float | None]:
    return {f"p{round(p * 100)}": round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3) if ordered else None
            for p in ps}


# ---------------------------------------------------------------- routes
async def ping(request):
    return _json({"status": "Healthy", "endpoint": request.app.state.settings.name})


async def invocations(request):
    status, payload, out_type = await _invoke(request)
    return _response(payload, status, out_type, _batch_header(request))


async def runtime_invocations(request):
    name = request.app.state.settings.name
    endpoint_name = request.path_params["endpoint_name"]
    if endpoint_name != name:
        return _aws_error(400, "ValidationError", f"Endpoint {endpoint_name} not found.")
    status, payload, out_type = await _invoke(request)
    if status == 200:
        return _response(payload, 200, out_type,
                         {"x-Amzn-Invoked-Production-Variant": "AllTraffic", **_batch_header(request)})
    # What SageMaker's runtime does with a container's error answer.
    try:
        message = json.loads(payload)["error"]
    except (ValueError, KeyError):
        message = payload.decode("utf-8", "replace")
    kind = "client" if status < 500 else "server"
    answer = _aws_error(424, "ModelError",
                        f'Received {kind} error ({status}) from primary with message "{message}". '
                        f"See the endpoint log for more information.",
                        OriginalStatusCode=status, OriginalMessage=message)
    if status == 408:
        answer.headers["connection"] = "close"
    return answer


async def metrics(request):
    state = request.app.state
    batching = state.batcher.snapshot() if state.batcher is not None else {"max_batch_size": 1}
    return _json({**state.stats.snapshot(), "batching": batching})


async def info(request):
    state = request.app.state
    model = state.model
    return _json({"name": state.settings.name, "pid": os.getpid(), "model": state.model_path,
                  "arch": model.info.get("arch"), "classes": str(model.classes), "labels": model.labels,
                  "image_size": model.image_size, "threads": state.settings.threads,
                  "runtime": getattr(model.runtime, "name", "eager"),
                  "max_batch_size": state.settings.max_batch_size})


ROUTES = (
    ("/ping", ping, ["GET"]),
    ("/invocations", invocations, ["POST"]),
    ("/endpoints/{endpoint_name}/invocations", runtime_invocations, ["POST"]),
    ("/metrics", metrics, ["GET"]),
    ("/info", info, ["GET"]),
)


def create_app(model: Any, deploy: DeployConfig | None = None, model_path: str | None = None):
    """The FastAPI app serving `model` (what inference.model_fn returned) with `deploy`'s settings."""
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException

    deploy = deploy or settings()
    app = FastAPI(title=f"bincli endpoint {deploy.name}", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=_lifespan, exception_handlers={HTTPException: _http_error})
    for path, route, methods in ROUTES:
        app.add_route(path, route, methods=methods)  # plain functions of the Request: no FastAPI injection
    app.state.model = model
    app.state.model_path = model_path
    app.state.settings = deploy
    app.state.stats = Stats()
    app.state.pool = ThreadPoolExecutor(max_workers=deploy.threads, thread_name_prefix="infer")
    app.state.batcher = (Batcher(functools.partial(_forward, model), deploy.max_batch_size,
                                 deploy.max_batch_delay_ms / 1000) if deploy.max_batch_size > 1 else None)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app):
    yield
    app.state.pool.shutdown(wait=False, cancel_futures=True)
    if app.state.batcher is not None:
        app.state.batcher.close()


async def _http_error(_request, exc):
    return _json({"error": str(exc.detail)}, exc.status_code, exc.headers)


async def _invoke(request) -> tuple[int, bytes, str]:
    """(status, body, content type) for one invocation; never raises."""
    from starlette.requests import ClientDisconnect

    from bincli.core import inference

    state = request.app.state
    state.stats.in_flight += 1
    t0 = time.perf_counter()
    content_type = request.headers.get("content-type")
    accept = request.headers.get("accept")
    if not accept or accept.strip() == "*/*":  # as SageMaker's toolkit does
        accept = JSON_CONTENT_TYPE
    stages: dict[str, float] = {}
    try:
        body = await _read_body(request, state.settings.body_timeout)
        stages["read"] = time.perf_counter() - t0
        loop = asyncio.get_running_loop()
        batcher = state.batcher
        # Decode on a pool thread (a 4xx is this request's alone); the forward there too when batching is off or
        # nobody else is there (batching.py), else with whatever else is waiting.
        forward_alone = (functools.partial(_forward_one, state.model) if batcher is None
                         else functools.partial(batcher.run_alone, loop))
        with batcher.preparing_one() if batcher is not None else contextlib.nullcontext():
            image, answer, timed = await loop.run_in_executor(state.pool, _prepare_then_forward, state.model, body,
                                                              content_type, forward_alone)
        stages.update(timed)
        if answer is NOT_ALONE:
            t_queued = time.perf_counter()
            answer, request.state.batch_size, stages["forward"] = await batcher.submit(image)
            stages["wait"] = time.perf_counter() - t_queued - stages["forward"]
        elif batcher is not None:
            request.state.batch_size = 1
        t_answer = time.perf_counter()
        text, out_type = inference.output_fn(answer, accept)
        stages["respond"] = time.perf_counter() - t_answer
        status, payload = 200, text.encode("utf-8")
    except inference.InferenceError as exc:
        status, out_type = exc.status_code, JSON_CONTENT_TYPE
        payload = json.dumps({"error": exc.message}).encode("utf-8")
    except ClientDisconnect:
        # Nobody to answer: one line, no traceback. 499 is nginx's "client closed request".
        status, out_type, payload = 499, JSON_CONTENT_TYPE, b""
    except Exception:
        log.exception("inference failed")
        status, out_type = 500, JSON_CONTENT_TYPE
        payload = json.dumps({"error": "internal error while predicting; see the endpoint log"}).encode()
    finally:
        state.stats.in_flight -= 1
    ms = (time.perf_counter() - t0) * 1000
    state.stats.record(status, ms, stages)
    if status == 499:
        log.info("%s %s 499 %.1fms: the client went away before sending its whole request (announced %s bytes)",
                 request.method, request.url.path, ms, request.headers.get("content-length", "no length"))
    else:
        log.info("%s %s %s %.1fms", request.method, request.url.path, status, ms)
    return status, payload, out_type


def _prepare(model: Any, body: bytes, content_type: str | None):
    """input_fn and the eval transform's first half: one image's uint8 (3, S, S) pixels, or its InferenceError."""
    from bincli.core import inference

    return model.pixels(inference.input_fn(body, content_type))


def _prepare_then_forward(model: Any, body: bytes, content_type: str | None,
                          forward_alone: Callable[[Any], Any]) -> tuple[Any, Any, dict[str, float]]:
    """(pixels, answer, stage seconds), on a pool thread: the pixels, then `forward_alone(pixels)`, which is
    the answer, or NOT_ALONE when the pixels must join a batch (Batcher.run_alone; then submit them)."""
    t0 = time.perf_counter()
    image = _prepare(model, body, content_type)
    t1 = time.perf_counter()
    answer = forward_alone(image)
    if answer is NOT_ALONE:
        return image, answer, {"prepare": t1 - t0}
    return image, answer, {"prepare": t1 - t0, "wait": 0.0, "forward": time.perf_counter() - t1}


def _forward_one(model: Any, image: Any) -> dict[str, Any]:
    """Batching off: the answer of one image's forward."""
    return _forward(model, [image])[0]


def _forward(model: Any, images: list) -> list[dict[str, Any]]:
    """predict_fn over a batch of transformed images: one answer each."""
    import torch

    from bincli.core import inference

    return inference.predict_fn(torch.stack(images), model)


def _batch_header(request) -> dict[str, str]:
    """x-bincli-batch-size: how many images the forward that answered this request held (batching on)."""
    size = getattr(request.state, "batch_size", None)
    return {"x-bincli-batch-size": str(size)} if size is not None else {}


async def _read_body(request, timeout: float) -> bytes:
    """The body, or InferenceError: 413 once it is over the payload limit, 408 if it takes over `timeout` s."""
    from bincli.core import inference

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _DRAIN_LIMIT:
        inference.check_payload_size(int(declared))  # raises 413 without reading
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size <= MAX_PAYLOAD_BYTES:
                    chunks.append(chunk)
                elif size > _DRAIN_LIMIT:
                    break
    except TimeoutError:
        raise inference.InferenceError(
            408, f"request body not received within {timeout:g}s (deploy.body_timeout): got {size} of "
                 f"{declared or 'an unannounced number of'} bytes") from None
    if size > MAX_PAYLOAD_BYTES:
        inference.check_payload_size(size)  # raises 413
    return b"".join(chunks)


def _response(payload: bytes, status: int, media_type: str, headers: dict[str, str] | None = None):
    from fastapi.responses import Response

    headers = dict(headers or {})
    if status == 408:  # the rest of that body may still come: do not read it as the next request
        headers["connection"] = "close"
    return Response(payload, status_code=status, media_type=media_type, headers=headers)


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(obj, status_code=status, headers=headers)


def _aws_error(status: int, code: str, message: str, **fields: Any):
    return _json({"message": message, **fields}, status,
                 {"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.sagemaker/"})


# ---------------------------------------------------------------- the HTTP server
def make_server(app, deploy: DeployConfig, on_started: Callable[[], None] | None = None):
    """The uvicorn server for `app` with `deploy`'s limits (serve() and the tests both use it);
    on_started runs once it accepts connections and handles SIGTERM."""
    import uvicorn

    config = uvicorn.Config(app, http=_protocol_class(), ws="none", log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5, timeout_keep_alive=deploy.keep_alive_timeout,
                            limit_concurrency=deploy.max_connections)
    server = _server_class()(config)
    server.on_started = on_started
    return server


def _protocol_class():
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        """uvicorn's h11 protocol with two changes.

        uvicorn starts its idle timer only after a response: a client that connects and sends nothing,
        or a header line now and then, held its connection (and a slot of the limit) for ever. Here the
        timer also runs from the connection's start until a request's headers are complete.
        uvicorn answers its concurrency limit with text/plain; here it is JSON like every refusal.
        """

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            # Take over uvicorn's limit check (it counts this connection too, so N allowed N-1).
            self.max_connections, self.limit_concurrency = self.limit_concurrency, None
            self.inner_app, self.app = self.app, self.admit
            self.head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self.arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.arm_head_timer()

        def connection_lost(self, exc):
            if self.head_timer is not None:
                self.head_timer.cancel()
            super().connection_lost(exc)

        def arm_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
            self.head_timer = None
            if not self.transport.is_closing():
                self.head_timer = self.loop.call_later(self.timeout_keep_alive, self.head_timeout)

        def head_timeout(self) -> None:
            self.head_timer = None
            if self.cycle is None or self.cycle.response_complete:  # no request under way
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self.transport.close()

        async def admit(self, scope, receive, send) -> None:
            names = {name.lower() for name, _ in scope.get("headers", ())}
            if b"content-length" in names and b"transfer-encoding" in names:
                # RFC 9112 6.1: the two framings disagree on where this request ends, so what follows
                # it (a smuggled request) must never be read as a next one: refuse and close.
                log.warning("%s %s 400: both Content-Length and Transfer-Encoding", scope.get("method"),
                            scope.get("path"))
                await self.refuse(send, 400, "both Content-Length and Transfer-Encoding: the request's end "
                                             "is ambiguous (RFC 9112 6.1)")
                return
            limit = self.max_connections
            if limit is not None and (len(self.connections) > limit or len(self.tasks) > limit):
                log.warning("%s %s 503: over deploy.max_connections (%d)", scope.get("method"), scope.get("path"),
                            limit)
                await self.refuse(send, 503, f"endpoint busy: over {limit} connections "
                                             f"(deploy.max_connections); retry later", [(b"retry-after", b"1")])
                return
            await self.inner_app(scope, receive, send)

        async def refuse(self, send, status: int, error: str, extra: list | None = None) -> None:
            """A JSON refusal, and the connection closed after it."""
            body = json.dumps({"error": error}).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", JSON_CONTENT_TYPE.encode()),
                                    (b"content-length", str(len(body)).encode()),
                                    *(extra or []), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})

    return Protocol


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A bound socket (port 0: a free one). OSError with a readable message if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only when it sees it. Without
    # NODELAY, Nagle holds a response's second write until the client's delayed ACK: +40 ms per keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # deploy.instances > 1: several servers share the port, the kernel spreads connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model_tar: Path, deploy: DeployConfig | None = None, runtime_file: Path | None = None,
          on_ready: Callable[[dict[str, Any]], None] | None = None, extract_dir: Path | None = None,
          reuse_port: bool = False) -> None:
    """Load the model, bind deploy.host:deploy.port, announce (runtime file, on_ready) and serve until
    SIGTERM/SIGINT. The model is extracted under `extract_dir` (default: the system temp folder)."""
    deploy = deploy or settings()
    model_tar = Path(model_tar).resolve()
    sock = bind(deploy.host, deploy.port, reuse_port)  # fail fast on a taken port, before the slow model load
    mine, lock_fd, tmp = None, None, None
    try:
        t0 = time.perf_counter()
        if extract_dir is not None:
            mine, lock_fd = _claim_extract_dir(Path(extract_dir))
        model, tmp = load_model(model_tar, workdir=mine)
        warm_up(model)
        _one_torch_thread_beside(model)
        port = sock.getsockname()[1]
        runtime = {"pid": os.getpid(), "name": deploy.name, "host": deploy.host, "port": port,
                   "url": url_of(deploy.host, port), "model": str(model_tar), "threads": deploy.threads}
        log.info("model %s loaded in %.1fs; endpoint %s on %s (%d inference threads, %d connections at most)",
                 model_tar, time.perf_counter() - t0, deploy.name, runtime["url"], deploy.threads,
                 deploy.max_connections)

        def announce() -> None:  # only now: a SIGTERM from here on stops the server gracefully
            if runtime_file is not None:
                from bincli.core.fileio import atomic_write_json

                atomic_write_json(runtime_file, runtime)
            if on_ready is not None:
                on_ready(runtime)

        server = make_server(create_app(model, deploy, model_path=str(model_tar)), deploy, on_started=announce)
        sock.listen(128)
        server.run(sockets=[sock])
        log.info("endpoint %s stopped", deploy.name)
    finally:
        sock.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if mine is not None:
            shutil.rmtree(mine, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)
        if runtime_file is not None:
            _remove_if_ours(Path(runtime_file))


def _one_torch_thread_beside(model: Any) -> None:
    """With ONNX Runtime running the forward on its own threads, torch here only decodes and resizes, one
    request per pool thread: let each use one torch thread. Two-thread torch ops on one image's tensors wait
    on each other and on the forward (2 CPUs, loaded machine: the eval transform took 61 ms median with
    2 threads against 5 ms with 1, the same 1.1-1.3 ms at best)."""
    if getattr(model.runtime, "name", None) == "onnxruntime":
        import torch

        torch.set_num_threads(1)
        log.info("torch uses 1 thread for decoding and resizing (ONNX Runtime runs the forward on its own)")


def _claim_extract_dir(root: Path) -> tuple[Path, int]:
    """<root>/model-<pid>/ for this process, with a lock held until it exits (the kernel drops it even
    on SIGKILL); first removes the folders of servers that are gone."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    sweep_extractions(root)
    mine = root / f"{_EXTRACT_PREFIX}{os.getpid()}"
    shutil.rmtree(mine, ignore_errors=True)  # a dead process's, with our pid (containers reuse pids)
    mine.mkdir()
    fd = os.open(mine / _LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return mine, fd


def sweep_extractions(root: Path) -> list[Path]:
    """Remove <root>/model-<pid>/ folders whose server is gone: their lock is free, or (not locked yet)
    their pid is dead. Returns what it removed."""
    import fcntl

    import psutil

    removed = []
    for folder in sorted(root.glob(f"{_EXTRACT_PREFIX}*")):
        pid = folder.name.removeprefix(_EXTRACT_PREFIX)
        if not folder.is_dir() or folder.is_symlink() or not pid.isdigit():
            continue
        try:
            fd = os.open(folder / _LOCK_FILE, os.O_RDWR)
        except FileNotFoundError:
            if psutil.pid_exists(int(pid)):
                continue  # its server is still creating it
            fd = None
        except OSError:
            continue
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # locked: its server is alive
        finally:
            if fd is not None:
                os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        log.info("removed %s, the extracted model of a server that is gone", folder)
        removed.append(folder)
    return removed


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after a graceful stop, which would kill the process before
        serve()'s cleanup (extracted model, runtime file) runs. Stop gracefully and return instead."""

        on_started: Callable[[], None] | None = None

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started and self.on_started is not None:
                self.on_started()

        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


def _remove_if_ours(runtime_file: Path) -> None:
    try:
        if json.loads(runtime_file.read_text()).get("pid") == os.getpid():
            runtime_file.unlink()
    except (OSError, ValueError):
        pass


def get_args_parser() -> argparse.ArgumentParser:
    from bincli.config import DeployConfig

    d = DeployConfig()  # the defaults, written once there
    p = argparse.ArgumentParser(prog="python -m bincli.backends.local.server",
                                description="bincli's local endpoint server.")
    p.add_argument("--model", required=True, type=Path, help="model.tar.gz to serve")
    p.add_argument("--name", default=d.name, help=f"endpoint name (default {d.name})")
    p.add_argument("--host", default=d.host, help=f"bind address (default {d.host})")
    p.add_argument("--port", type=int, default=d.port, help=f"port; 0 picks a free one (default {d.port})")
    p.add_argument("--threads", type=int, default=d.threads, help=f"requests predicted at once (default {d.threads})")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout,
                   help=f"seconds to receive a request body, else 408 (default {d.body_timeout:g})")
    p.add_argument("--keep-alive-timeout", type=float, default=d.keep_alive_timeout,
                   help=f"seconds a connection may sit idle or send headers (default {d.keep_alive_timeout:g})")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"connections served at once, beyond it 503 (default {d.max_connections})")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                   help=f"images of concurrent requests run as one forward, at most this many; 1 = off "
                        f"(default {d.max_batch_size})")
    p.add_argument("--max-batch-delay-ms", type=float, default=d.max_batch_delay_ms,
                   help=f"ms a batch that is not full waits for more requests (default {d.max_batch_delay_ms:g})")
    p.add_argument("--runtime-file", type=Path, default=None,
                   help="write {pid, port, url, ...} here once serving (removed on exit)")
    p.add_argument("--reuse-port", action="store_true",
                   help="share the port with other servers started so (SO_REUSEPORT; deploy.instances > 1)")
    p.add_argument("--extract-dir", type=Path, default=None,
                   help="extract the model under DIR/model-<pid>/ and remove dead servers' folders there "
                        "(default: a temp folder)")
    return p


_SETTINGS = ("name", "host", "port", "threads", "body_timeout", "keep_alive_timeout", "max_connections",
             "max_batch_size", "max_batch_delay_ms")


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pydantic import ValidationError

    from bincli.errors import BincliError

    # SIGTERM while loading (deploy gave up or was interrupted): unwind, so serve() removes what it extracted.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        deploy = settings(**{key: getattr(args, key) for key in _SETTINGS})
        serve(args.model, deploy, args.runtime_file, extract_dir=args.extract_dir, reuse_port=args.reuse_port)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        sys.stderr.write(f"error: {flag} {first['input']}: {first['msg']}\n")
        return 2
    except (BincliError, OSError, ValueError) as exc:
        # One line a caller (bincli deploy) can show: "error: ..." is the last line of the log.
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        sys.stderr.write(f"error: {message}\n")
        return 1
    return 0


def _exit_on_sigterm(signum, _frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
