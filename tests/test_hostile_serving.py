"""Hostile clients against the real endpoint server, and deploy's hostile moments.

Clients: a body that never comes (408), more connections than allowed (503), connections that sit idle or
trickle their headers (closed), a client that hangs up mid-request (one log line). Deploy: Ctrl-C while it
waits for /ping, a log holding an older attempt's error, a SIGKILLed server's extracted model, and an
endpoint bound to every interface (a warning).
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from bincli.artifacts.loader import load_model
from bincli.backends.local.server import bind, sweep_extractions
from bincli.state import State
from serving_support import ServerThread, model_tar

SIX_MB = 6_000_000


@pytest.fixture(scope="module")
def tar(tmp_path_factory):
    return model_tar(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def model(tar):
    loaded, tmp = load_model(tar)
    yield loaded
    shutil.rmtree(tmp, ignore_errors=True)


def wait_for(condition, timeout: float, what: str):
    """condition()'s first truthy value, polled until `timeout` s have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def stalled_post(port: int, path: str = "/invocations", sent: bytes = b"", timeout: float = 30) -> socket.socket:
    """A connection that announces a 6 MB image, sends `sent` of it, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
                 f"Content-Length: {SIX_MB}\r\n\r\n".encode() + sent)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, http.client.HTTPMessage, bytes]:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, resp.headers, resp.read()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed `sock` (blocks up to the socket's timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# ---------------------------------------------------------------- hostile clients
@pytest.mark.parametrize("sent", [b"", b"\xff\xd8" + b"\0" * 1_000_000], ids=["nothing", "one-mb"])
@pytest.mark.parametrize("runtime_path", [False, True], ids=["container", "runtime"])
def test_a_stalled_body_gets_408_within_the_timeout(model, sent, runtime_path):
    with ServerThread(model, name="stalled", body_timeout=1.0, keep_alive_timeout=30) as srv:
        path = f"/endpoints/{srv.name}/invocations" if runtime_path else "/invocations"
        # The socket's own timeout bounds the wait: no answer within it fails the test.
        with stalled_post(srv.port, path, sent, timeout=srv.settings.body_timeout + 20) as sock:
            status, headers, body = read_answer(sock)
            assert headers["connection"] == "close"
            assert closed_by_server(sock)  # the rest of that body is never read as a next request
        answer = json.loads(body)
        if runtime_path:  # wrapped the way SageMaker's runtime wraps a container's 4xx
            assert status == 424 and answer["OriginalStatusCode"] == 408
            message = answer["OriginalMessage"]
        else:
            assert status == 408
            message = answer["error"]
        assert message == (f"request body not received within 1s (deploy.body_timeout): "
                           f"got {len(sent)} of {SIX_MB} bytes")
        assert httpx.get(f"{srv.url}/ping").status_code == 200
        assert httpx.get(f"{srv.url}/metrics").json()["by_status"]["408"] == 1


def test_connections_beyond_the_limit_get_503_and_the_server_recovers(model):
    with ServerThread(model, name="limited", max_connections=3, body_timeout=120, keep_alive_timeout=120) as srv:
        stalled = [stalled_post(srv.port) for _ in range(3)]
        try:
            wait_for(lambda: srv.app.state.stats.in_flight == 3, 30, "3 requests in flight")
            for method, path in (("GET", "/ping"), ("POST", "/invocations")):
                r = httpx.request(method, f"{srv.url}{path}", content=b"x" if method == "POST" else None)
                assert r.status_code == 503, (path, r.text)
                assert r.json() == {"error": "endpoint busy: over 3 connections (deploy.max_connections); retry later"}
                assert r.headers["retry-after"] == "1"
        finally:
            for sock in stalled:
                sock.close()
        connections = srv.server.server_state.connections
        wait_for(lambda: srv.app.state.stats.in_flight == 0 and not connections, 30, "the stalled clients to go")
        assert httpx.get(f"{srv.url}/ping").status_code == 200
        assert httpx.get(f"{srv.url}/metrics").json()["by_status"] == {"499": 3}  # they hung up mid-body


def test_idle_and_header_trickling_connections_are_closed(model):
    with ServerThread(model, name="idle", keep_alive_timeout=0.5) as srv:
        limit = srv.settings.keep_alive_timeout + 20  # bounds each wait; the server must close well before
        with socket.create_connection(("127.0.0.1", srv.port), timeout=limit) as silent:
            assert closed_by_server(silent)  # connected, never sent a byte
        with socket.create_connection(("127.0.0.1", srv.port)) as slow:
            slow.sendall(b"GET /ping HTTP/1.1\r\nHost: test\r\n")
            slow.settimeout(0.2)  # one more header line each time the server has not closed within 0.2 s
            deadline = time.monotonic() + limit
            while True:
                try:
                    if closed_by_server(slow):
                        break
                except TimeoutError:
                    slow.sendall(b"X-Trickle: 1\r\n")
                assert time.monotonic() < deadline, "a connection that never finishes its headers stayed open"
        with httpx.Client(base_url=srv.url) as client:  # a keep-alive client is served as before
            assert [client.get("/ping").status_code for _ in range(3)] == [200, 200, 200]


# ---------------------------------------------------------------- the server process
def start_server(tar: Path, tmp: Path, tag: str, *flags: str) -> tuple[subprocess.Popen, Path, Path]:
    """`python -m bincli.backends.local.server` as deploy runs it; (process, runtime file, log)."""
    runtime, log = tmp / f"{tag}.json", tmp / f"{tag}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bincli.backends.local.server", "--model", str(tar),
                                 "--port", "0", "--runtime-file", str(runtime), *flags],
                                stdout=out, stderr=subprocess.STDOUT)
    return proc, runtime, log


def url_when_ready(proc: subprocess.Popen, runtime: Path, log: Path) -> str:
    def ready():
        assert proc.poll() is None, log.read_text()
        return runtime.is_file() and json.loads(runtime.read_text())["url"]

    return wait_for(ready, 120, "the server to be ready")


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.terminate()
    return proc.wait(30)


@pytest.mark.slow
def test_a_client_that_hangs_up_mid_request_is_one_log_line(tar, tmp_path):
    proc, runtime, log = start_server(tar, tmp_path, "server", "--body-timeout", "120",
                                      "--extract-dir", str(tmp_path / "ep"))
    try:
        url = url_when_ready(proc, runtime, log)
        port = json.loads(runtime.read_text())["port"]
        with stalled_post(port, sent=b"\xff\xd8" + b"\0" * 100_000):
            wait_for(lambda: httpx.get(f"{url}/metrics").json()["in_flight"] == 1, 30, "the request in flight")
        wait_for(lambda: httpx.get(f"{url}/metrics").json()["by_status"].get("499") == 1, 30, "the 499")
        assert httpx.get(f"{url}/ping").status_code == 200
    finally:
        assert stop(proc) == 0
    text = log.read_text()
    hang_ups = [line for line in text.splitlines() if " 499 " in line]
    assert len(hang_ups) == 1, text
    assert "POST /invocations 499 " in hang_ups[0]
    assert f"went away before sending its whole request (announced {SIX_MB} bytes)" in hang_ups[0]
    assert "Traceback" not in text and " 500 " not in text
    assert not list((tmp_path / "ep").glob("model-*"))  # a clean stop removes the extracted model


@pytest.mark.slow
def test_a_killed_servers_extracted_model_is_removed_at_the_next_start(tar, tmp_path):
    extract = tmp_path / "endpoints" / "ep"
    first, runtime, log = start_server(tar, tmp_path, "first", "--extract-dir", str(extract))
    try:
        url_when_ready(first, runtime, log)
        leftover = extract / f"model-{first.pid}"
        assert list(leftover.glob("*/model.pth"))  # extracted under the workdir, not the system temp folder
    finally:
        first.kill()  # SIGKILL: no cleanup runs
        first.wait()
    assert leftover.is_dir()
    second, runtime, log = start_server(tar, tmp_path, "second", "--extract-dir", str(extract))
    try:
        url_when_ready(second, runtime, log)
        assert not leftover.exists()
        assert f"removed {leftover}, the extracted model of a server that is gone" in log.read_text()
        assert sweep_extractions(extract) == []  # a live server's folder is never swept
        assert list((extract / f"model-{second.pid}").glob("*/model.pth"))
    finally:
        assert stop(second) == 0
    assert not list(extract.glob("model-*"))


# ---------------------------------------------------------------- deploy
def bincli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bincli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def server_child(parent: subprocess.Popen) -> psutil.Process | None:
    try:
        for child in psutil.Process(parent.pid).children():
            if "bincli.backends.local.server" in child.cmdline():  # exec'd: the server itself
                return child
    except psutil.Error:
        pass
    return None


def test_ctrl_c_while_deploy_waits_stops_the_server_and_clears_the_record(tar, tmp_path):
    work = tmp_path / "work"
    deploy = bincli("deploy", "--model", tar, "--port", 0, "-w", work)
    server = None
    try:
        server = wait_for(lambda: server_child(deploy), 60, "the server process")
        server.suspend()  # frozen: it cannot answer /ping, however fast this machine is
        record = wait_for(lambda: State(work).outputs("deploy"), 60, "deploy's record of the server")
        assert record["pid"] == server.pid and record["url"] is None  # recorded before it is up
        deploy.send_signal(signal.SIGINT)
        _, err = deploy.communicate(timeout=60)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.communicate()
        if server is not None and server.is_running():
            server.kill()
    assert deploy.returncode == 130 and "interrupted" in err, err
    assert "warning" not in err  # 127.0.0.1: nothing to warn about
    assert not server.is_running()
    assert State(work).outputs("deploy") is None
    assert not list((work / "endpoints" / "bincli-local").glob("model-*"))


def test_deploy_reports_only_this_attempts_error(tar, tmp_path):
    work = tmp_path / "work"
    log = work / "endpoints" / "bincli-local" / "server.log"
    log.parent.mkdir(parents=True)
    log.write_text("---- an earlier attempt\nerror: cannot listen on 127.0.0.1:8080: Address already in use\n")
    deploy = bincli("deploy", "--model", tar, "--port", 0, "-w", work)
    try:
        server = wait_for(lambda: server_child(deploy), 60, "the server process")
        server.kill()  # dies without a word: this attempt's log has no error line
        _, err = deploy.communicate(timeout=60)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.communicate()
    assert deploy.returncode == 1
    assert "error: endpoint 'bincli-local' exited while starting (killed by SIGKILL): " in err, err
    assert "Address already in use" not in err
    assert "an earlier attempt" in log.read_text()  # the log keeps every attempt
    assert State(work).outputs("deploy") is None


def test_deploy_on_every_interface_warns_once(tar, tmp_path):
    taken = bind("0.0.0.0", 0)
    taken.listen(1)
    try:
        proc = bincli("deploy", "--model", tar, "--host", "0.0.0.0", "--port", taken.getsockname()[1],
                      "-w", tmp_path / "work")
        _, err = proc.communicate(timeout=120)
    finally:
        taken.close()
    assert err.count("warning: deploy.host 0.0.0.0: the endpoint has no authentication") == 1, err
    assert proc.returncode != 0 and "cannot listen" in err  # then the taken port stops it: no server started


def test_a_request_with_both_content_length_and_transfer_encoding_is_refused_and_closed(model):
    """RFC 9112 6.1: the smuggled second request behind it never gets an answer."""
    smuggled = b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n"
    chunked = b"0\r\n\r\n" + smuggled
    with ServerThread(model, name="smuggle") as srv, \
            socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: " + str(len(chunked)).encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + chunked)
        status, headers, body = read_answer(sock)
        assert status == 400 and headers["connection"] == "close"
        assert "both Content-Length and Transfer-Encoding" in json.loads(body)["error"]
        assert closed_by_server(sock)  # no second answer (to the smuggled GET) comes
        assert httpx.get(f"{srv.url}/ping").status_code == 200  # the server goes on
