"""The local backend's runtime client (backends/local/client.py) against a real local server: answers,
refusals and wrong names as boto3 surfaced them, unreachable endpoints, threads, dropped connections,
a busy server, a slow answer."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import serving_support
from bincli.backends.local import client as client_module
from bincli.backends.local.client import LocalEndpointClient
from bincli.backends.local.server import bind
from bincli.backends.runtime import PredictError
from bincli.core import inference
from bincli.errors import BincliError, StateError
from serving_support import ServerThread, held_by, sample_images

model, server = serving_support.model, serving_support.server  # the module's fixtures



@pytest.fixture
def jpegs(abid_sample):
    return [p.read_bytes() for p in sample_images(abid_sample, 4)]


def in_process(model, body: bytes) -> dict:
    return json.loads(inference.handle_request(model, body, "image/jpeg", "application/json")[0])


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_an_image_gets_the_handlers_answer(server, model, jpegs):
    with LocalEndpointClient(server.name, server.url) as client:
        assert client.name == "bincli-test" and client.where == f"'bincli-test' at {server.url}"
        for body in jpegs[:2]:  # the second on the kept-alive connection
            answer = client.invoke(body, "image/jpeg")
            assert answer == in_process(model, body) and isinstance(answer["count"], int)


def test_a_refused_image_is_the_containers_status_and_message(server, jpegs):
    with LocalEndpointClient(server.name, server.url) as client:
        with pytest.raises(PredictError) as exc:
            client.invoke(b"this is not an image", "image/jpeg")
        assert (exc.value.status, exc.value.message) == (400, "request body is not a JPEG or PNG image")
        with pytest.raises(PredictError) as exc:
            client.invoke(jpegs[0], "text/plain")
        assert exc.value.status == 415 and exc.value.message.startswith("unsupported Content-Type")
        assert "count" in client.invoke(jpegs[0], "image/jpeg")  # the connection still serves


def test_an_unknown_endpoint_name_is_a_state_error(server, jpegs):
    with LocalEndpointClient("other", server.url) as client, \
            pytest.raises(StateError, match=r"no endpoint 'other' at .*: Endpoint other not found\.") as exc:
        client.invoke(jpegs[0], "image/jpeg")
    assert "bincli status" in exc.value.hint


def test_a_dead_port_cannot_be_reached(jpegs):
    sock = bind("127.0.0.1", 0)  # a port nobody listens on once closed
    port = sock.getsockname()[1]
    sock.close()
    with LocalEndpointClient("x", f"http://127.0.0.1:{port}") as client, \
            pytest.raises(BincliError, match=rf"cannot reach endpoint 'x' at http://127.0.0.1:{port}: ") as exc:
        client.invoke(jpegs[0], "image/jpeg")
    assert not isinstance(exc.value, StateError) and "bincli deploy" in exc.value.hint


def test_a_url_that_is_not_http_is_refused():
    with pytest.raises(BincliError, match="expected http://host:port"):
        LocalEndpointClient("x", "localhost:8080")


def test_an_ipv6_endpoint_answers(model, jpegs):
    try:
        socket.socket(socket.AF_INET6).close()
        srv = ServerThread(model, name="v6", host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with srv, LocalEndpointClient("v6", srv.url) as client:
        assert srv.url.startswith("http://[::1]:")
        assert client.invoke(jpegs[0], "image/jpeg") == in_process(model, jpegs[0])


def test_eight_threads_share_a_client_on_at_most_eight_connections(model, jpegs):
    want = [in_process(model, body) for body in jpegs]
    with ServerThread(model, name="busy", threads=2) as srv, LocalEndpointClient("busy", srv.url) as client:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: client.invoke(jpegs[i % 4], "image/jpeg"), range(48)))
        assert got == [want[i % 4] for i in range(48)]
        assert 1 <= len(srv.server.server_state.connections) <= 8  # kept alive, at most one per request at once
        client.close()
        wait_for(lambda: not srv.server.server_state.connections, 10, "close() to close every connection")
        assert client.invoke(jpegs[0], "image/jpeg") == want[0]  # a closed client opens a new one


@pytest.mark.parametrize("race", [False, True], ids=["closed-while-idle", "closed-as-it-is-sent"])
def test_a_restarted_server_is_reached_on_a_new_connection(model, jpegs, monkeypatch, race):
    """The kept-alive connection dies with the first server. The client sees that before it reuses it; or,
    when the close comes too late to be seen (`race`: the check is blinded), it sends again on a new one."""
    if race:
        monkeypatch.setattr(client_module, "_closed_by_server", lambda conn: conn.sock is None)
    with ServerThread(model, name="again") as first:
        port = first.port
        client = LocalEndpointClient("again", first.url)
        assert client.invoke(jpegs[0], "image/jpeg") == in_process(model, jpegs[0])
    with ServerThread(model, name="again", port=port) as second, client:
        assert client.invoke(jpegs[1], "image/jpeg") == in_process(model, jpegs[1])
        assert client.invoke(jpegs[2], "image/jpeg") == in_process(model, jpegs[2])
        assert second.app.state.stats.by_status == {200: 2}
        assert len(second.server.server_state.connections) == 1  # the new connection is kept alive


def test_a_connection_the_server_closed_when_idle_is_replaced(model, jpegs):
    with ServerThread(model, name="idle", keep_alive_timeout=0.3) as srv, \
            LocalEndpointClient("idle", srv.url) as client:
        client.invoke(jpegs[0], "image/jpeg")
        wait_for(lambda: not srv.server.server_state.connections, 10, "the server to close the idle connection")
        assert client.invoke(jpegs[1], "image/jpeg") == in_process(model, jpegs[1])


def test_threads_that_end_leave_no_connection_behind(model, jpegs):
    """loadtest starts new client threads at each step: their requests reuse the pool's connections."""
    with ServerThread(model, name="steps", threads=2) as srv, LocalEndpointClient("steps", srv.url) as client:
        for clients in (1, 2, 4):
            threads = [threading.Thread(target=client.invoke, args=(jpegs[0], "image/jpeg")) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert srv.app.state.stats.by_status == {200: 7}
        assert 1 <= len(srv.server.server_state.connections) <= 4  # not 1 + 2 + 4


def test_an_endpoint_busy_after_a_retry_says_why(model, jpegs):
    with ServerThread(model, name="full", max_connections=1, body_timeout=60) as srv:
        held = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        try:  # a request whose body never comes holds the one connection allowed
            held.sendall(b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 1000\r\n\r\n")
            wait_for(lambda: srv.app.state.stats.in_flight == 1, 30, "the held request")
            with LocalEndpointClient("full", srv.url) as client, \
                    pytest.raises(BincliError, match=r"endpoint 'full' at .*: 503: endpoint busy: over 1 connections"):
                client.invoke(jpegs[0], "image/jpeg")
        finally:
            held.close()


def test_a_slow_answer_is_a_timeout_of_that_image(model, jpegs):
    gate = threading.Event()
    slow = held_by(gate, model)
    with ServerThread(slow, name="slow", threads=1) as srv, LocalEndpointClient("slow", srv.url, timeout=0.5) as client:
        try:
            with pytest.raises(PredictError) as exc:
                client.invoke(jpegs[0], "image/jpeg")
            assert (exc.value.status, exc.value.message) == (None, "no answer within the timeout (predict.timeout)")
        finally:
            gate.set()
