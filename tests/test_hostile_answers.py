"""`bincli predict` against an endpoint that answers what no bincli handler would (issue 28, items
8-10): a small real HTTP server on 127.0.0.1 playing the hostile endpoint, since bincli's own server
cannot be made to send these answers. Each test runs in-process (CliRunner) in about a second."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from bincli.cli import app

runner = CliRunner()


class HostileEndpoint:
    """Answers every POST with `answer(handler)`; counts the requests it got."""

    def __init__(self, answer):
        outer = self
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.requests += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client hung up: as it should
                    answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostileEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def body(payload: bytes, content_type: str = "application/json"):
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    return answer


def endless(content_length: int | None = None, pause: float = 0.0):
    """A 200 whose body never ends (or claims `content_length`), written until the client hangs up."""
    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if content_length is not None:
            h.send_header("Content-Length", str(content_length))
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b"[" * (1 if pause else 65536)
        deadline = time.monotonic() + 60  # a bound on the server thread, far past the client's
        while time.monotonic() < deadline:
            h.wfile.write(chunk)
            h.wfile.flush()
            if pause:
                time.sleep(pause)  # a slow sender, not synchronisation

    return answer


def _predict(tmp_path, url, *extra):
    photo = tmp_path / "bin.jpg"
    if not photo.exists():
        photo.write_bytes(b"\xff\xd8\xff" + b"\0" * 100)
    return runner.invoke(app, ["predict", str(photo), "-w", str(tmp_path / "work"), "--endpoint", "bincli-test",
                               "--endpoint-url", url, "--json", *extra])


@pytest.mark.parametrize(("payload", "why"), [
    (b"{}", "expected 'probabilities'"),
    (b"[]", "expected a JSON object, got list"),
    (b'"3"', "expected a JSON object, got str"),
    (b'{"count": 3, "probabilities": {"3": "high"}}', "expected a number in [0, 1]"),
    (b'{"count": 3, "probabilities": {"1": NaN, "3": 0.5}}', "probabilities['1'] is nan"),
    (b'{"count": "3", "probabilities": {"3": 1.0}}', "expected a whole number >= 0"),
    (b'{"count": 3, "probabilities": {"<script>": 1.0}}', "is not a count"),
    (b"[" * 200_000 + b"]" * 200_000, "not JSON"),
])
def test_an_answer_that_is_not_the_handlers_shape_fails_that_photo_with_one_line(tmp_path, in_tmp, payload, why):
    with HostileEndpoint(body(payload)) as srv:
        result = _predict(tmp_path, srv.url)
    assert result.exit_code == 1, result.output
    [answer] = [json.loads(line) for line in result.stdout.splitlines()]
    assert why in answer["error"], answer
    assert "Traceback" not in result.output and "1 of 1 image(s) failed" in result.stderr


@pytest.mark.parametrize("content_length", [None, 10**15])
def test_an_endless_or_huge_answer_is_cut_at_the_answer_limit(tmp_path, in_tmp, content_length):
    with HostileEndpoint(endless(content_length)) as srv:
        t0 = time.monotonic()
        result = _predict(tmp_path, srv.url)
    assert result.exit_code == 1, result.output
    [answer] = [json.loads(line) for line in result.stdout.splitlines()]
    assert "answer is over 1024 KB" in answer["error"]
    assert time.monotonic() - t0 < 20


def test_a_trickling_answer_ends_at_the_timeout(tmp_path, in_tmp):
    with HostileEndpoint(endless(pause=0.05)) as srv:
        t0 = time.monotonic()
        result = _predict(tmp_path, srv.url, "--timeout", "1")
        took = time.monotonic() - t0
    assert result.exit_code == 1, result.output
    [answer] = [json.loads(line) for line in result.stdout.splitlines()]
    assert "did not end within the timeout" in answer["error"]
    assert took < 10  # each byte came well within the socket timeout: only the whole-answer bound stops it


def test_a_photo_over_the_request_limit_is_refused_before_it_is_read_or_sent(tmp_path, in_tmp):
    big = tmp_path / "big.jpg"
    with big.open("wb") as f:  # sparse: 1 GiB on the file system, no disk and no memory
        f.truncate(2**30)
    with HostileEndpoint(body(b'{"count": 1, "probabilities": {"1": 1.0}}')) as srv:
        result = runner.invoke(app, ["predict", str(big), "-w", str(tmp_path / "work"), "--endpoint", "bincli-test",
                                     "--endpoint-url", srv.url, "--json"])
        assert srv.requests == 0
    assert result.exit_code == 1, result.output
    [answer] = [json.loads(line) for line in result.stdout.splitlines()]
    assert answer["status"] == 413 and "1024.0 MB is over the 6 MB per request" in answer["error"]


def refusal(status: int, error: dict, error_type: str | None = None):
    def answer(h: BaseHTTPRequestHandler) -> None:
        payload = json.dumps(error).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        if error_type:
            h.send_header("x-amzn-ErrorType", error_type)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    return answer


@pytest.mark.parametrize("answer", [
    refusal(424, {"OriginalStatusCode": 415, "OriginalMessage": "\x1b[2J\x1b[31mpwned\r\u202eok\x07"},
            "ModelError:http://internal.amazon.com/coral/com.amazon.sagemaker/"),
    refusal(500, {"message": "\x1b[2J\x1b[31mpwned\r\u202eok\x07"}),
], ids=["photo refused", "endpoint error"])
def test_text_an_endpoint_wrote_reaches_the_terminal_without_control_characters(tmp_path, in_tmp, answer):
    with HostileEndpoint(answer) as srv:
        result = _predict(tmp_path, srv.url)
    assert result.exit_code == 1, result.output
    for raw in ("\x1b", "\r", "\u202e", "\x07"):
        assert raw not in result.output
    shown = result.output.replace("\\\\", "\\")  # --json doubles the backslashes of its lines
    assert "\\x1b[2J\\x1b[31mpwned\\x0d\\u202eok\\x07" in shown
