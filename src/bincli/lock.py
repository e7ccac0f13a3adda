"""One step at a time per workdir: an flock on `<workdir>/.bincli.lock`.

The commands that write to a workdir (download, split, upload, tune, train, deploy, evaluate,
teardown) take it once their config resolves and hold it until the command ends; a second one
fails at once, naming the step that runs, its pid and since when. The kernel drops an flock when
its process dies, so a crashed or killed step never blocks anyone. The file also says who holds
it (pid, command, start time) and is emptied on a clean release: content left in a file we could
lock means the last holder died mid-step, and we say we took over its stale lock.

The file is never deleted or replaced: a process waiting on the old inode and one locking a new
file would both think they hold the lock.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bincli.errors import BincliError

LOCK_FILE = ".bincli.lock"

# Locks this process holds, by lock file path: re-entrant within one process.
_HELD: dict[str, WorkdirLock] = {}
# The CLI command running in this process (set by the CLI's callback), and the locks it took.
_command: str | None = None
_taken: list[WorkdirLock] = []


def begin_command(name: str | None) -> None:
    global _command
    _command = name


def current_command() -> str | None:
    return _command


def end_command() -> None:
    """Release every lock the command took (in-process callers, such as tests, run the next one)."""
    global _command
    _command = None
    while _taken:
        _taken.pop().release()


class WorkdirBusy(BincliError):
    """Another bincli step holds the workdir."""


class WorkdirLock:
    def __init__(self, path: Path, fd: int, holder: dict[str, Any], stale: dict[str, Any] | None):
        self.path = path
        self.holder = holder
        self.stale = stale  # what a dead holder left in the file, if anything
        self._fd: int | None = fd
        self._count = 1
        self._pid = os.getpid()

    def release(self) -> None:
        """Empty the file (a clean release leaves nothing stale) and drop the flock."""
        self._count -= 1
        if self._count > 0 or self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.pop(str(self.path), None)
        try:
            if os.getpid() == self._pid:  # a forked child closes its copy; the holder's record stays
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock


def acquire(workdir: Path, command: str) -> WorkdirLock:
    """Take the workdir lock for `command` or raise WorkdirBusy naming the step that holds it."""
    workdir = Path(workdir)
    path = (workdir / LOCK_FILE).absolute()
    held = _HELD.get(str(path))
    if held is not None:
        held._count += 1
        if _command is not None:
            _taken.append(held)
        return held
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise BincliError(f"{path}: cannot create the workdir lock ({exc.strerror})",
                          hint="check the workdir path and its permissions") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        previous = _read(fd)
        os.close(fd)
        raise WorkdirBusy(f"{workdir} is in use by {_describe(previous)}",
                          hint="wait for it to finish, or use another --workdir") from None
    except OSError as exc:
        os.close(fd)
        raise BincliError(f"{path}: cannot lock the workdir ({exc.strerror})") from None
    previous = _read(fd)
    holder = {"pid": os.getpid(), "command": command, "host": socket.gethostname(),
              "since": datetime.now(UTC).isoformat(timespec="seconds")}
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    lock = WorkdirLock(path, fd, holder, previous or None)
    _HELD[str(path)] = lock
    if _command is not None:
        _taken.append(lock)
    return lock


@atexit.register
def _release_all() -> None:
    # A process that ends normally leaves nothing stale, even if a command did not end (a direct caller).
    for lock in list(_HELD.values()):
        lock._count = 1
        lock.release()


def stale_note(lock: WorkdirLock) -> str | None:
    """One line for a lock taken over from a holder that died without releasing it, or None."""
    if not lock.stale:
        return None
    return f"took over a stale workdir lock: {_describe(lock.stale)} ended without releasing it"


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    """"'bincli train' (pid 123, since 2024-05-01T10:00:00+00:00)", as far as the file says."""
    if "pid" not in holder:
        return "another bincli step (it is starting)"
    where = f" on {holder['host']}" if holder.get("host") not in (None, socket.gethostname()) else ""
    alive = "" if where or pid_alive(holder["pid"]) else ", no longer running"
    command, since = holder.get("command", "?"), holder.get("since", "?")
    return f"'bincli {command}' (pid {holder['pid']}{where}, since {since}{alive})"


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid runs on this machine (someone else's counts too)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
