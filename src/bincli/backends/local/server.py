"""The local endpoint: SageMaker's container API and runtime API over one loaded model.

    GET  /ping                          200 {"status": "Healthy"} once the model is loaded
    POST /invocations                   the container API: image bytes in, JSON answer out
    POST /endpoints/<name>/invocations  the runtime API path, so boto3's `sagemaker-runtime`
                                        invoke_endpoint works with endpoint_url=<this server>
    GET  /metrics                       requests, errors, statuses, latency p50/p95 (JSON)
    GET  /info                          name, pid, model and its classes

Every answer comes from bincli.core.inference's model_fn/input_fn/predict_fn/output_fn, the
functions SageMaker's container runs, so local answers are SageMaker's answers. A refused
request gets the handler's 4xx and the body {"error": message}; on the runtime path it is
wrapped the way SageMaker does it (424 ModelError with OriginalStatusCode), which boto3 parses.

The model is loaded once, before the port answers. Inference runs in a pool of `threads`
worker threads (torch releases the GIL), so /ping and /metrics answer while requests run.

Run: python -m bincli.backends.local.server --model model.tar.gz [--name N] [--host H] [--port P] [--threads T]
     [--runtime-file F]   (port 0 picks a free port; F receives {"pid", "port", "url", ...} when ready)
"""

import argparse
import asyncio
import collections
import contextlib
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
from typing import Any

from bincli.artifacts.loader import load_model, warm_up
from bincli.core.contract import JSON_CONTENT_TYPE, MAX_PAYLOAD_BYTES

log = logging.getLogger("bincli.backends.local.server")

DEFAULT_NAME = "bincli-local"
# A body announced above the limit is still read (and dropped) up to this size, so that the client,
# which is busy sending it, reads our 413 instead of a reset connection. Beyond it we hang up.
_DRAIN_LIMIT = 64 * 1024 * 1024


class Stats:
    """Request counters and recent latencies. Touched only from the event loop thread."""

    def __init__(self, keep: int = 10_000):
        self.started = time.time()
        self.requests = 0
        self.errors = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=keep)
        self.in_flight = 0

    def record(self, status: int, ms: float) -> None:
        self.requests += 1
        self.errors += status >= 400
        self.by_status[status] += 1
        self.latencies_ms.append(ms)

    def snapshot(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def q(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

        return {
            "requests": self.requests, "errors": self.errors, "in_flight": self.in_flight,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "latency_ms": {"p50": q(0.50), "p95": q(0.95), "max": round(lat[-1], 3) if lat else None,
                           "mean": round(sum(lat) / len(lat), 3) if lat else None, "window": len(lat)},
            "uptime_s": round(time.time() - self.started, 1),
        }


def create_app(model: Any, name: str = DEFAULT_NAME, threads: int = 4, model_path: str | None = None):
    """The FastAPI app serving `model` (what inference.model_fn returned)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from bincli.core import inference

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="infer")
    stats = Stats()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"bincli endpoint {name}", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.stats = stats

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    async def read_body(request: Request) -> bytes:
        """The body, or InferenceError(413) once it is over the payload limit."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > _DRAIN_LIMIT:
            inference.check_payload_size(int(declared))  # raises 413 without reading
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= MAX_PAYLOAD_BYTES:
                chunks.append(chunk)
            elif size > _DRAIN_LIMIT:
                break
        if size > MAX_PAYLOAD_BYTES:
            inference.check_payload_size(size)  # raises 413
        return b"".join(chunks)

    async def invoke(request: Request) -> tuple[int, bytes, str]:
        """(status, body, content type) for one invocation; never raises."""
        stats.in_flight += 1
        t0 = time.perf_counter()
        content_type = request.headers.get("content-type")
        accept = request.headers.get("accept")
        if not accept or accept.strip() == "*/*":  # as SageMaker's toolkit does
            accept = JSON_CONTENT_TYPE
        try:
            body = await read_body(request)
            loop = asyncio.get_running_loop()
            text, out_type = await loop.run_in_executor(pool, inference.handle_request, model, body,
                                                        content_type, accept)
            status, payload = 200, text.encode("utf-8")
        except inference.InferenceError as exc:
            status, out_type = exc.status_code, JSON_CONTENT_TYPE
            payload = json.dumps({"error": exc.message}).encode("utf-8")
        except Exception:
            log.exception("inference failed")
            status, out_type = 500, JSON_CONTENT_TYPE
            payload = json.dumps({"error": "internal error while predicting; see the endpoint log"}).encode()
        finally:
            stats.in_flight -= 1
        ms = (time.perf_counter() - t0) * 1000
        stats.record(status, ms)
        log.info("%s %s %s %.1fms", request.method, request.url.path, status, ms)
        return status, payload, out_type

    @app.get("/ping")
    async def ping():
        return {"status": "Healthy", "endpoint": name}

    @app.post("/invocations")
    async def invocations(request: Request):
        status, payload, out_type = await invoke(request)
        return Response(payload, status_code=status, media_type=out_type)

    @app.post("/endpoints/{endpoint_name}/invocations")
    async def runtime_invocations(endpoint_name: str, request: Request):
        if endpoint_name != name:
            return _aws_error(400, "ValidationError", f"Endpoint {endpoint_name} not found.")
        status, payload, out_type = await invoke(request)
        if status == 200:
            return Response(payload, status_code=200, media_type=out_type,
                            headers={"x-Amzn-Invoked-Production-Variant": "AllTraffic"})
        # What SageMaker's runtime does with a container's error answer.
        try:
            message = json.loads(payload)["error"]
        except (ValueError, KeyError):
            message = payload.decode("utf-8", "replace")
        kind = "client" if status < 500 else "server"
        return _aws_error(424, "ModelError",
                          f'Received {kind} error ({status}) from primary with message "{message}". '
                          f"See the endpoint log for more information.",
                          OriginalStatusCode=status, OriginalMessage=message)

    @app.get("/metrics")
    async def metrics():
        return stats.snapshot()

    @app.get("/info")
    async def info():
        return {"name": name, "pid": os.getpid(), "model": model_path, "arch": model.info.get("arch"),
                "classes": str(model.classes), "labels": model.labels, "image_size": model.image_size,
                "threads": threads}

    return app


def _aws_error(status: int, code: str, message: str, **fields: Any):
    from fastapi.responses import JSONResponse

    return JSONResponse({"message": message, **fields}, status_code=status,
                        headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.sagemaker/"})


def bind(host: str, port: int) -> socket.socket:
    """A bound socket (port 0: a free one). OSError with a readable message if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only when it sees it. Without
    # NODELAY, Nagle holds a response's second write until the client's delayed ACK: +40 ms per keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model_tar: Path, name: str = DEFAULT_NAME, host: str = "127.0.0.1", port: int = 0, threads: int = 4,
          runtime_file: Path | None = None, on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Load the model, bind, announce (runtime file, on_ready) and serve until SIGTERM/SIGINT."""
    import uvicorn

    model_tar = Path(model_tar).resolve()
    sock = bind(host, port)  # fail fast on a taken port, before the slow model load
    model, tmp = None, None
    try:
        t0 = time.perf_counter()
        model, tmp = load_model(model_tar)
        warm_up(model)
        port = sock.getsockname()[1]
        runtime = {"pid": os.getpid(), "name": name, "host": host, "port": port, "url": url_of(host, port),
                   "model": str(model_tar), "threads": threads}
        log.info("model %s loaded in %.1fs; endpoint %s on %s (%d inference threads)", model_tar,
                 time.perf_counter() - t0, name, runtime["url"], threads)
        app = create_app(model, name, threads, model_path=str(model_tar))
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=5, timeout_keep_alive=30)
        server = _server_class()(config)
        sock.listen(128)
        if runtime_file is not None:
            from bincli.core.fileio import atomic_write_json

            atomic_write_json(runtime_file, runtime)
        if on_ready is not None:
            on_ready(runtime)
        server.run(sockets=[sock])
        log.info("endpoint %s stopped", name)
    finally:
        sock.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if runtime_file is not None:
            _remove_if_ours(Path(runtime_file))


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after a graceful stop, which would kill the process before
        serve()'s cleanup (temp model dir, runtime file) runs. Stop gracefully and return instead."""

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
    p = argparse.ArgumentParser(prog="python -m bincli.backends.local.server",
                                description="bincli's local endpoint server.")
    p.add_argument("--model", required=True, type=Path, help="model.tar.gz to serve")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"endpoint name (default {DEFAULT_NAME})")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one (default 8080)")
    p.add_argument("--threads", type=int, default=4, help="requests predicted at once (default 4)")
    p.add_argument("--runtime-file", type=Path, default=None,
                   help="write {pid, port, url, ...} here once serving (removed on exit)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from bincli.errors import BincliError

    try:
        serve(args.model, args.name, args.host, args.port, args.threads, args.runtime_file)
    except (BincliError, OSError, ValueError) as exc:
        # One line a caller (bincli deploy) can show: "error: ..." is the last line of the log.
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        sys.stderr.write(f"error: {message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
