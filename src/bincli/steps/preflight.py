"""`bincli doctor`, and the preflight before a billed step: the backend's checks and cost lines,
said the same way for both. A failed check stops the step before it creates anything; a cost line
is asked about on a terminal (--yes skips the question; without a terminal, as in CI, none is asked)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bincli.backends.checks import FAIL, OK, Check, raise_on_failure
from bincli.config import Config
from bincli.errors import BincliError

BILLED = ("tune", "train", "deploy")


def check_before(cfg: Config, steps: Sequence[str], *, yes: bool = False, backend: Any = None,
                 console: Any = None) -> list[Check]:
    """Run the backend's preflight for the billed ones among `steps`; print what is not ok and the
    cost lines; raise PreflightFailed on a failed check; ask before going on where there is a cost,
    a terminal and no --yes. Returns the rows."""
    from bincli.console import err

    console = console or err
    billed = [s for s in BILLED if s in steps]
    if not billed:
        return []
    if backend is None:
        from bincli.backends import get_backend

        backend = get_backend(cfg)
    rows = backend.preflight(billed)
    costs = [row for row in rows if row.cost]
    ask = bool(costs) and not yes and sys.stdin.isatty()
    for row in rows:
        if row.cost and not ask:  # a question shows them itself
            console.print(f"cost: {row.name.removesuffix(' cost')}: {row.detail}", markup=False, soft_wrap=True)
        elif not row.cost and row.status not in (OK, FAIL):
            console.print(f"preflight: {row.line} ({row.status})", markup=False, soft_wrap=True)
    raise_on_failure(rows)
    if ask:
        _confirm(costs)
    return rows


def _confirm(costs: list[Check]) -> None:
    # Straight to stderr: -q hides the console's lines, and a question must show what it asks about.
    for row in costs:
        sys.stderr.write(f"cost: {row.name.removesuffix(' cost')}: {row.detail}\n")
    sys.stderr.write("Go ahead? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise BincliError("stopped before creating anything (not confirmed)",
                          hint="--yes skips the question (and CI, with no terminal, is never asked)")


def run_doctor(cfg: Config) -> dict[str, Any]:
    """Every check of the configured backend: {"backend", "ok", "checks": [{name, status, detail, fix, cost}]}."""
    from bincli.backends import get_backend

    backend = get_backend(cfg)
    rows = backend.doctor()
    return {"backend": backend.name, "ok": not any(r.status == FAIL for r in rows),
            "checks": [r.as_dict() for r in rows]}


def write_policies(cfg: Config, folder: Path) -> dict[str, Any]:
    """The IAM policy files for this config (the caller's, the execution role's and its trust) in `folder`."""
    from bincli.backends import get_backend

    return {"policies": [str(p) for p in get_backend(cfg).write_policies(folder)]}
