"""Native work (a model's load, its forward passes) with a time bound and a Ctrl-C that works.

A forward pass runs in C (ONNX Runtime, torch) where Python's signal handler cannot run: a graph that
loops spun at full CPU and only SIGKILL stopped it. Here the work runs in a daemon thread and the
main thread waits for it, so Ctrl-C and the deadline both end the wait at once; the thread is left to
the process's exit (nothing in Python can stop native code)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from bincli.errors import BincliError

T = TypeVar("T")
_abandoned: list[threading.Thread] = []  # still running native work nothing can stop


def bounded(fn: Callable[[], T], timeout: float, what: str, hint: str | None = None) -> T:
    """fn()'s result, its exception, or a BincliError naming `what` when `timeout` seconds pass."""
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run, name=f"bounded: {what}", daemon=True)
    thread.start()
    try:
        finished = done.wait(timeout)  # a lock wait: Ctrl-C interrupts it
    except BaseException:
        _abandoned.append(thread)
        raise
    if not finished:
        _abandoned.append(thread)
        raise BincliError(f"{what}: not done within {timeout:g} s; stopped", hint=hint)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def exit_if_abandoned(code: object) -> None:
    """End the process now, with `code`, when native work was left running: the interpreter's normal
    exit would tear down the native library under that thread (ONNX Runtime aborted: SIGABRT)."""
    if not any(t.is_alive() for t in _abandoned):
        return
    import contextlib
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))
