"""`bincli deploy` / `teardown` for the local backend: the endpoint as a background process.

deploy starts `python -m bincli.backends.local.server` in its own session (it outlives the shell that started it),
records it under state "deploy" at once ({"name", "pid", "model", ..., "url": null, "starting": true}, with
the process's start time and command line), waits until /ping answers, then records its "url" and "port".
Interrupted (Ctrl-C) or failed while waiting, it stops the server and clears the record; killed, it leaves
a record that teardown acts on, never a server that nothing knows of. teardown stops that process only if
it is still the one deploy started (same pid, start time and command line: a reused pid is never
signalled), removes `<workdir>/endpoints/<name>/` (its log, its extracted model) and the state record. A
second teardown finds nothing to remove. One endpoint per workspace.

deploy.instances N > 1 runs N server processes on one port, each with its share of the cores
(OMP_NUM_THREADS = cores // N): the local analogue of an endpoint's instance count. They share the
port through SO_REUSEPORT (Linux): the kernel spreads incoming connections over the N listening
sockets by a hash of each connection, so no front process sits in the way (no extra hop, nothing
to fail for all of them) and one busy server does not take every new connection, as a single
shared accept queue lets it do (asyncio accepts a whole burst in one wake-up). The record keeps
the first server's identity at its top level (as with one server) and all of them under "servers";
teardown stops each one that is still the process deploy started.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bincli.backends.records import nothing_to_remove, recorded_endpoint
from bincli.config import Config
from bincli.console import err
from bincli.core.fileio import file_sha256
from bincli.errors import BincliError, StateError, UsageError
from bincli.layout import ENDPOINTS_DIR
from bincli.state import State

LOG_FILE = "server.log"
RUNTIME_FILE = "runtime-{}.json"  # one per server process
STOP_TIMEOUT = 15.0

# Servers this process started, so stopping one also reaps it (no zombie, no ResourceWarning).
_CHILDREN: dict[int, subprocess.Popen] = {}


def endpoint_dir(workdir: Path, name: str) -> Path:
    return Path(workdir).resolve() / ENDPOINTS_DIR / name


# ---------------------------------------------------------------- deploy
def deploy(cfg: Config, model: Path | None = None, update: bool = False, foreground: bool = False) -> dict[str, Any]:
    """Start the endpoint (or replace its model with update=True); returns what state records."""
    d = cfg.deploy
    _check_instances(d.instances, foreground)
    state = State(cfg.workdir)
    model_tar = _model_path(cfg, state, model)

    from bincli.artifacts.modeltar import read_model_info

    model_info = read_model_info(model_tar)  # checks the archive before anything starts
    host, port, replaced = d.host, d.port, None
    existing = settle_starting(cfg, state)
    if existing is not None:
        if is_running(existing):
            if existing.get("url") is None:
                raise BincliError(f"endpoint '{existing['name']}' (pid {existing['pid']}) is starting, or was "
                                  f"left starting by a deploy that was killed",
                                  hint="wait for that deploy, or run 'bincli teardown' to stop it")
            if existing["name"] != d.name:
                raise BincliError(f"endpoint '{existing['name']}' is already running at {existing['url']} "
                                  f"in {cfg.workdir} (one endpoint per workspace)",
                                  hint="run 'bincli teardown' first, or use another --workdir")
            if not update:
                raise BincliError(f"endpoint '{d.name}' already exists at {existing['url']} "
                                  f"(pid {existing['pid']}, model {existing['model']})",
                                  hint="pass --update to replace its model, or run 'bincli teardown' first")
            # Same name, same URL: stop the old server, start the new one on its port.
            host, port, replaced = existing["host"], existing["port"], existing["model"]
            pids = ", ".join(str(server["pid"]) for server in servers_of(existing))
            info(f"updating endpoint '{d.name}': stopping pid {pids} (model {replaced})")
            _stop(existing)
        else:
            info(f"endpoint '{existing['name']}' in state is not running (pid {existing['pid']}); replacing it")
        state.forget("deploy")
    elif update:
        info(f"--update: no endpoint '{d.name}' is running; starting one")

    _warn_if_exposed(host)
    if port != 0:
        _check_port_free(host, port)
    ep_dir = endpoint_dir(cfg.workdir, d.name)
    ep_dir.mkdir(parents=True, exist_ok=True)
    sha256 = file_sha256(model_tar)  # the record names the exact model served
    base = {"backend": "local", "name": d.name, "model": str(model_tar), "model_sha256": sha256,
            "host": host, "threads": d.threads,
            "classes": str(model_info.get("classes")), "log": str(ep_dir / LOG_FILE), "instances": d.instances}
    if foreground:
        return _run_foreground(cfg, state, base, port)
    try:
        record = _start_background(cfg, state, base, port, ep_dir)
    except BincliError as exc:
        if replaced:
            exc.message += f" (the previous server, model {replaced}, was already stopped)"
        raise
    record["action"] = "updated" if replaced else "created"
    record["replaced_model"] = replaced
    state.record("deploy", record, cfg.deploy.model_dump(mode="json"))
    return record


def _model_path(cfg: Config, state: State, model: Path | None) -> Path:
    chosen = model or cfg.deploy.model
    if chosen is None:
        outputs = state.require("train", needed_by="deploy")
        if not outputs.get("model"):
            raise StateError(f"state 'train' in {cfg.workdir} records no model archive",
                             hint="run 'bincli train' again, or pass --model path/to/model.tar.gz")
        chosen = Path(outputs["model"])
    path = Path(chosen).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"{path}: model archive not found", hint="pass --model path/to/model.tar.gz")
    return path


def _warn_if_exposed(host: str) -> None:
    """One warning when the endpoint listens beyond this machine: it has no authentication."""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False  # a host name: it may resolve to anything
    if not local:
        # Straight to stderr, not through the -q-able console: a security warning is not progress chatter.
        sys.stderr.write(f"warning: deploy.host {host}: the endpoint has no authentication and answers anyone who "
                         f"can reach this machine; use 127.0.0.1 unless that is intended\n")


def _check_port_free(host: str, port: int) -> None:
    from bincli.backends.local.server import bind

    try:
        bind(host, port).close()
    except OSError as exc:
        raise UsageError(f"deploy.port: {exc.strerror}",
                         hint="pick another port with --port, or --port 0 for a free one") from None


def _check_instances(instances: int, foreground: bool) -> None:
    """Several servers need a background deploy and SO_REUSEPORT's load spreading (Linux)."""
    if instances == 1:
        return
    if foreground:
        raise UsageError(f"--foreground serves one process in this terminal; deploy.instances is {instances}",
                         hint="drop --foreground, or pass --instances 1")
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise UsageError(f"deploy.instances {instances}: several servers on one port need Linux's SO_REUSEPORT "
                         f"(this is {sys.platform})", hint="pass --instances 1")


def torch_threads(instances: int) -> int:
    """Each server's share of the cores this process may use (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // instances)


def _start_background(cfg: Config, state: State, base: dict[str, Any], port: int, ep_dir: Path) -> dict[str, Any]:
    d = cfg.deploy
    n = d.instances
    log_path = ep_dir / LOG_FILE
    runtime_files = [ep_dir / RUNTIME_FILE.format(i) for i in range(n)]
    for f in runtime_files:
        f.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reserved = None
    if n > 1:
        from bincli.backends.local.server import bind

        # Holds the port (port 0: picks it) until every server has bound it too; never listens itself,
        # so the kernel gives it no connection.
        reserved = bind(base["host"], port, reuse_port=True)
        port = reserved.getsockname()[1]
        env.setdefault("OMP_NUM_THREADS", str(torch_threads(n)))  # a caller's explicit setting wins
    cmd = [sys.executable, "-m", "bincli.backends.local.server", "--model", base["model"], "--name", base["name"],
           "--host", base["host"], "--port", str(port), "--threads", str(base["threads"]),
           "--body-timeout", str(d.body_timeout), "--keep-alive-timeout", str(d.keep_alive_timeout),
           "--max-connections", str(d.max_connections), "--extract-dir", str(ep_dir),
           "--max-batch-size", str(d.max_batch_size), "--max-batch-delay-ms", str(d.max_batch_delay_ms)]
    cmd += ["--reuse-port"] if n > 1 else []
    procs: list[subprocess.Popen] = []
    try:
        with open(log_path, "ab") as log:
            log.write(f"---- {_now()} bincli deploy ({n} server(s)): {' '.join(cmd)}\n".encode())
            log.flush()
            attempt_starts = log.tell()  # the log is appended to: report only this attempt's lines
            for f in runtime_files:
                proc = subprocess.Popen([*cmd, "--runtime-file", str(f)], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True)
                _CHILDREN[proc.pid] = proc
                procs.append(proc)
        # Recorded before waiting: a deploy killed while it waits leaves a record teardown acts on.
        servers = [_identity_if_alive(p.pid) for p in procs]
        started = {**base, **servers[0], "servers": servers, "port": port, "url": None, "starting": True,
                   "foreground": False}
        if n > 1:
            threads = env["OMP_NUM_THREADS"]
            started["torch_threads"] = int(threads) if threads.isdigit() else threads
        state.record("deploy", started, d.model_dump(mode="json"))
        info(f"starting endpoint '{base['name']}' (pid {', '.join(str(p.pid) for p in procs)}); log: {log_path}")
        deadline = time.monotonic() + d.startup_timeout
        runtimes = [_wait_until_up(p, f, log_path, attempt_starts, base["name"], deadline, d.startup_timeout)
                    for p, f in zip(procs, runtime_files, strict=True)]
    except BaseException:  # Ctrl-C included: no server may outlive this deploy unrecorded
        for p in procs:
            _terminate(p)
        current = state.outputs("deploy")
        if procs and current is not None and current.get("pid") == procs[0].pid:
            state.forget("deploy")
        raise
    finally:
        if reserved is not None:
            reserved.close()
    started.pop("starting")
    return {**started, "port": runtimes[0]["port"], "url": runtimes[0]["url"]}


def _wait_until_up(proc: subprocess.Popen, runtime_file: Path, log_path: Path, attempt_starts: int, name: str,
                   deadline: float, timeout: float) -> dict[str, Any]:
    """The server's runtime file once /ping answers; BincliError if it exits or is not up by `deadline`."""
    while True:
        rc = proc.poll()
        if rc is not None:
            _CHILDREN.pop(proc.pid, None)
            how = f"exit {rc}" if rc >= 0 else f"killed by {signal.Signals(-rc).name}"
            raise BincliError(f"endpoint '{name}' exited while starting ({how}): "
                              f"{_last_error(log_path, attempt_starts)}", hint=f"full log: {log_path}")
        if runtime_file.is_file():
            runtime = json.loads(runtime_file.read_text())
            if ping(runtime["url"]):
                return runtime
        if time.monotonic() > deadline:
            raise BincliError(f"endpoint '{name}' did not answer /ping within {timeout:g}s; stopped it",
                              hint=f"see {log_path}; a slow machine may need --set deploy.startup_timeout=300")
        time.sleep(0.1)


def _run_foreground(cfg: Config, state: State, base: dict[str, Any], port: int) -> dict[str, Any]:
    """Serve in this process until Ctrl-C / SIGTERM; state holds the record while it serves."""
    from bincli.backends.local.server import serve

    record: dict[str, Any] = {}

    def on_ready(runtime: dict[str, Any]) -> None:
        record.update({**base, **_identity(os.getpid()), "port": runtime["port"], "url": runtime["url"],
                       "foreground": True, "action": "created", "replaced_model": None})
        state.record("deploy", record, cfg.deploy.model_dump(mode="json"))
        # Recorded: other steps (evaluate, teardown from another shell) may use the workdir now.
        from bincli.lock import end_command

        end_command()
        info(f"endpoint '{base['name']}' serving at {runtime['url']} (Ctrl-C to stop)")

    deploy = cfg.deploy.model_copy(update={"host": base["host"], "port": port})
    try:
        serve(Path(base["model"]), deploy, on_ready=on_ready, extract_dir=endpoint_dir(cfg.workdir, base["name"]))
    except OSError as exc:
        raise BincliError(f"endpoint '{base['name']}': {exc.strerror or exc}") from None
    finally:
        current = state.outputs("deploy")
        if current and current.get("pid") == os.getpid():
            state.forget("deploy")
    return {**record, "stopped": True}


# ---------------------------------------------------------------- teardown
def teardown(cfg: Config, name: str | None = None) -> dict[str, Any]:
    """Stop and remove what deploy recorded; a no-op (with a message) when there is nothing."""
    state = State(cfg.workdir)
    record = recorded_endpoint(state, name, backend="local")
    if record is None:
        return {**nothing_to_remove(cfg.workdir, name), "stopped": False}
    outcome = [(server["pid"], _stop_one(server)) for server in servers_of(record)]
    removed = [f"process {pid}" for pid, ok in outcome if ok]
    stopped = any(ok for _, ok in outcome)
    left = [str(pid) for pid, ok in outcome if not ok]
    ep_dir = endpoint_dir(cfg.workdir, record["name"])
    if ep_dir.is_dir():
        import shutil

        shutil.rmtree(ep_dir, ignore_errors=True)
        removed.append(str(ep_dir))
        with contextlib.suppress(OSError):
            ep_dir.parent.rmdir()  # <workdir>/endpoints, if now empty
    state.forget("deploy")
    removed.append("state record 'deploy'")
    note = (f" (pid {', '.join(left)} {'was' if len(left) == 1 else 'were'} no longer this endpoint's server: "
            f"left alone)") if left else ""
    return {"name": record["name"], "url": record.get("url"), "pid": record["pid"],
            "pids": [pid for pid, _ in outcome], "stopped": stopped, "removed": removed,
            "message": f"removed endpoint '{record['name']}'{note}"}


# ---------------------------------------------------------------- for predict / evaluate
def settle_starting(cfg: Config, state: State) -> dict[str, Any] | None:
    """The deploy record, with one left "starting" by a deploy that was killed while it waited settled:
    completed when every server it started answers /ping at the URL its runtime file gives, forgotten
    when none of them runs any more; left as it is while a server runs but does not answer yet."""
    record = state.outputs("deploy")
    if record is None or not record.get("starting") or record.get("url") is not None:
        return record
    if not is_running(record):
        state.forget("deploy")
        info(f"endpoint '{record['name']}': its deploy was stopped while it started and no server of it runs; "
             "cleared its record")
        return None
    ep_dir = endpoint_dir(cfg.workdir, record["name"])
    runtimes = []
    for i in range(len(servers_of(record))):
        try:
            runtime = json.loads((ep_dir / RUNTIME_FILE.format(i)).read_text())
        except (OSError, ValueError):
            return record
        if not isinstance(runtime, dict) or not ping(str(runtime.get("url") or "")):
            return record
        runtimes.append(runtime)
    done = {k: v for k, v in record.items() if k != "starting"}
    done.update(port=runtimes[0]["port"], url=runtimes[0]["url"])
    state.record("deploy", done, (state.step("deploy") or {}).get("config"))
    info(f"endpoint '{record['name']}' is up at {done['url']} (its deploy was stopped before it saw that); "
         "recorded it")
    return done


def running_endpoint(cfg: Config, name: str | None = None) -> dict[str, Any]:
    """The state record of the endpoint to call, checked to be up; StateError if there is none."""
    record = settle_starting(cfg, State(cfg.workdir))
    if record is None:
        raise StateError(f"no endpoint: none is deployed in {cfg.workdir}",
                         hint="run 'bincli deploy' first, or pass --model model.tar.gz to predict in-process")
    if name is not None and record["name"] != name:
        raise StateError(f"no endpoint '{name}' in {cfg.workdir} (the deployed one is '{record['name']}')",
                         hint="pass --endpoint-url to call an endpoint of another workspace")
    if not is_running(record):
        raise StateError(f"no endpoint: '{record['name']}' is recorded at {record['url']} but its server "
                         f"(pid {record['pid']}) is not running",
                         hint="run 'bincli deploy' to start it again, or 'bincli teardown' to clear the record")
    if record.get("url") is None:
        raise StateError(f"no endpoint yet: '{record['name']}' (pid {record['pid']}) is still starting",
                         hint="wait for 'bincli deploy' to finish, or run 'bincli teardown' if it was killed")
    return record


def is_running(record: dict[str, Any]) -> bool:
    """True while any of the endpoint's servers is still the process deploy started (it answers)."""
    return running_servers(record) > 0


def running_servers(record: dict[str, Any]) -> int:
    return sum(_our_process(server) is not None for server in servers_of(record))


def servers_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each server process's identity (pid, start time, command line): "servers", or the record itself
    (a foreground server, records made before deploy.instances)."""
    return record.get("servers") or [record]


def ping(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


# ---------------------------------------------------------------- processes
def _identity(pid: int) -> dict[str, Any]:
    import psutil

    proc = psutil.Process(pid)
    return {"pid": pid, "pid_started": proc.create_time(), "cmdline": proc.cmdline(), "started_at": _now()}


def _identity_if_alive(pid: int) -> dict[str, Any]:
    import psutil

    try:
        return _identity(pid)
    except psutil.Error:
        return {"pid": pid}  # it exited at once: the wait that follows says why


def _our_process(record: dict[str, Any]):
    """The psutil.Process of the recorded server if it is still that process, else None."""
    import psutil

    try:
        proc = psutil.Process(int(record["pid"]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            child = _CHILDREN.pop(proc.pid, None)
            if child is not None:
                child.wait()
            return None
        # psutil's start time is boot time + ticks, and the kernel's boot time (wall clock - uptime, whole
        # seconds) moves by a second when the clock is adjusted: within 2 s, with the same command line
        # (its own port and extract folder), it is the same process, never a reused pid.
        same_start = abs(proc.create_time() - float(record.get("pid_started", -1))) < 2.0
        if same_start and proc.cmdline() == record.get("cmdline"):
            return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        pass
    return None


def _stop(record: dict[str, Any]) -> bool:
    """Stop every server of the record that is still ours; True if any was stopped."""
    return any([_stop_one(server) for server in servers_of(record)])  # a list: stop all, not the first only


def _stop_one(record: dict[str, Any]) -> bool:
    """SIGTERM (then SIGKILL) the recorded server if it is still ours; True if it was stopped."""
    import psutil

    proc = _our_process(record)
    if proc is None:
        return False
    child = _CHILDREN.pop(proc.pid, None)
    if child is not None:  # started by this process: stop and reap it through its Popen
        _terminate(child)
        return True
    try:
        proc.terminate()
        proc.resume()  # a stopped process (Ctrl-Z, SIGSTOP) acts on SIGTERM only once continued
        if not _exits(proc, STOP_TIMEOUT):
            proc.kill()
            _exits(proc, 5)
    except psutil.NoSuchProcess:
        pass
    return True


def _exits(proc, timeout: float) -> bool:
    """Wait until `proc` (not our child) has exited: gone, or a zombie its own parent has yet to reap
    (another bincli process that started it and still runs); psutil's wait() would wait for that
    parent."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _terminate(proc: subprocess.Popen) -> None:
    proc.terminate()
    with contextlib.suppress(ProcessLookupError):
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _CHILDREN.pop(proc.pid, None)


def _last_error(log_path: Path, start: int = 0) -> str:
    """The last "error: ..." line (else the last line) the server wrote to the log from byte `start` on."""
    try:
        with open(log_path, "rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
    except OSError:
        return "no log"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors[-1].removeprefix("error:").strip() if errors else lines[-1]) if lines else "no output"


def info(message: str) -> None:
    err.print(message, markup=False, soft_wrap=True)  # paths: no markup, no wrapping


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
