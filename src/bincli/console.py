"""Where output goes: results (JSON, tables, plain lines) on stdout; progress, logs and hints on stderr.

Rich turns colours off by itself when stderr is not a terminal, and honours NO_COLOR.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False)
# Results (predict lines, tables, metrics) on stdout: never silenced by -q, pipeable, redirectable.
out = Console(highlight=False)

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet
    err.quiet = quiet


def is_quiet() -> bool:
    return _quiet


def info(message: str) -> None:
    """A progress or status line for people (stderr; hidden by -q)."""
    err.print(message)


def emit_json(obj: Any) -> None:
    """One machine-readable JSON document (or line) on stdout."""
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
