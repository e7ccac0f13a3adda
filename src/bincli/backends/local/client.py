"""The local backend's runtime client: invoke_endpoint's request over the standard library's http.client.

The local server answers SageMaker's runtime API path (POST <url>/endpoints/<name>/invocations, server.py),
so this client sends what boto3's `sagemaker-runtime` invoke_endpoint sends there (Content-Type, Accept:
application/json) and reads the answers as boto3 surfaces them: a 424 ModelError is the image's own refusal
(its OriginalStatusCode and OriginalMessage), a 400 ValidationError "Endpoint X not found." is a wrong name.
No boto3: importing it and loading its service model took 0.47 s of a cold `bincli predict`.

Thread-safe, with a pool of keep-alive connections as boto3 had: a request takes an idle one (or opens
one) and gives it back, so N threads at once hold N connections, and threads that end (a loadtest's
clients, step after step) leave none behind to count against deploy.max_connections. An idle connection
the server has closed (keep_alive_timeout, a restart) is dropped before use; one closed while the request
went out is sent again on a new connection, and a 503 (over deploy.max_connections) is tried once more,
as boto3's two attempts did. close() closes them all.
"""

from __future__ import annotations

import http.client
import json
import random
import select
import threading
import time
import urllib.parse
from typing import Any

from bincli.backends.runtime import PredictError, decode_answer, read_answer, runtime_error
from bincli.core.contract import JSON_CONTENT_TYPE
from bincli.errors import BincliError

CONNECT_TIMEOUT_S = 10.0  # as the boto3 client had: min(predict.timeout, 10 s) to connect
BUSY_WAIT_S = (0.1, 0.5)  # before retrying a 503: the server says retry-after 1, a jittered wait spreads clients
ERROR_TYPE_HEADER = "x-amzn-ErrorType"  # "<Code>:<namespace>", as SageMaker's runtime names an error
# The server closed a kept-alive connection before (or while) reading the request: send it again on a new one.
_DROPPED = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_UNREACHABLE_HINT = "is it running? 'bincli status' shows it; 'bincli deploy' starts it"


class LocalEndpointClient:
    """invoke(body, content_type) -> the answer dict, over a pool of keep-alive connections."""

    def __init__(self, name: str, url: str, timeout: float = 30.0):
        self.name, self.url = name, url
        self.where = f"'{name}' at {url}"
        parts = urllib.parse.urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise BincliError(f"endpoint url {url!r}: expected http://host:port (IPv6: http://[::1]:port)")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, port
        self._path = f"{parts.path.rstrip('/')}/endpoints/{urllib.parse.quote(name, safe='')}/invocations"
        self._timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []  # last in, first out: the warmest first
        self._generation = 0  # close() starts a new one: connections of an older one are not kept

    # ---------------------------------------------------------------- connections
    def _take(self, fresh: bool) -> tuple[http.client.HTTPConnection, int]:
        """(an idle connection that is still open, else a new unconnected one; the pool's generation)."""
        with self._lock:
            generation = self._generation
            while self._idle and not fresh:
                conn = self._idle.pop()
                if not _closed_by_server(conn):
                    return conn, generation
                conn.close()
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=min(self._timeout, CONNECT_TIMEOUT_S)), generation

    def _give_back(self, conn: http.client.HTTPConnection, generation: int) -> None:
        with self._lock:
            if conn.sock is not None and generation == self._generation:  # not closed ("connection: close")
                self._idle.append(conn)
                return
        conn.close()

    def _send(self, body: bytes, content_type: str) -> tuple[int, http.client.HTTPResponse, bytes]:
        """(status, response, body) for one request; a dropped reused connection or a 503 is tried twice."""
        fresh = False
        for attempt in (1, 2):
            conn, generation = self._take(fresh)
            reused = conn.sock is not None
            connected = reused
            resp = None
            try:
                if not reused:  # a timeout here is "cannot reach", not a slow answer
                    conn.connect()
                    conn.sock.settimeout(self._timeout)  # connect within 10 s, then wait predict.timeout
                    connected = True
                conn.request("POST", self._path, body=body,
                             headers={"Content-Type": content_type, "Accept": JSON_CONTENT_TYPE})
                resp = conn.getresponse()
                payload = read_answer(resp.read1, time.monotonic() + self._timeout)  # read1: what has come
                resp.close()  # read1 leaves a read-out response open, and the connection would refuse the next
            except BaseException as exc:
                if resp is not None:
                    resp.close()  # it holds the socket open after conn.close()
                conn.close()  # half a request or answer on it: never reuse
                if isinstance(exc, _DROPPED) and reused and attempt == 1:
                    fresh = True  # the server went away between requests (a restart): not another idle one
                    continue
                if isinstance(exc, TimeoutError) and connected:
                    raise PredictError(None, "no answer within the timeout (predict.timeout)") from None
                raise
            self._give_back(conn, generation)
            if resp.status == 503 and attempt == 1:
                time.sleep(random.uniform(*BUSY_WAIT_S))
                continue
            return resp.status, resp, payload
        raise AssertionError("unreachable: the second attempt returns or raises")

    # ---------------------------------------------------------------- the runtime API
    def invoke(self, body: bytes, content_type: str) -> dict[str, Any]:
        try:
            status, resp, payload = self._send(body, content_type)
        except (OSError, http.client.HTTPException) as exc:  # refused, unknown host, dropped, timed out connecting
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise BincliError(f"cannot reach endpoint {self.where}: {reason}", hint=_UNREACHABLE_HINT) from None
        if status == 200:
            return decode_answer(payload, resp.getheader("Content-Type"))
        raise self._error(status, resp, payload)

    def _error(self, status: int, resp: http.client.HTTPResponse, payload: bytes) -> Exception:
        """The error an answer other than 200 means, as boto3 surfaced it (code, message, modeled fields)."""
        try:
            error = json.loads(payload)
        except (ValueError, RecursionError):
            error = None
        if not isinstance(error, dict):
            error = {}
        code = (resp.getheader(ERROR_TYPE_HEADER) or "").split(":")[0] \
            or str(error.get("code") or error.get("__type") or status)
        # boto3 showed only "message"; the server's own refusals (503, 408) say why in "error"
        message = str(error.get("message") or error.get("Message") or error.get("error") or "") \
            or payload.decode("utf-8", "replace").strip()[:200]
        return runtime_error(self.where, code, message, error.get("OriginalStatusCode"), error.get("OriginalMessage"))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1  # connections in use now are closed when their request ends
        for conn in idle:
            conn.close()

    def __enter__(self) -> LocalEndpointClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()



def _closed_by_server(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection with something to read has been closed by the server (an EOF):
    the check urllib3 makes before it reuses a connection."""
    if conn.sock is None:
        return True
    try:
        if hasattr(select, "poll"):  # any descriptor number (select() stops at 1024)
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([conn.sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True
