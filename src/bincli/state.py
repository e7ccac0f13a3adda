"""The workspace state: what each step produced, in `<workdir>/state.json`.

A step records its outputs (paths, counts, URIs, job names, endpoints) and the config section
that produced them; a later step reads them from here instead of being told where. Writes are
atomic and serialised with a lock file, so two bincli processes never lose each other's record.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bincli import __version__
from bincli.core.fileio import atomic_write_json
from bincli.errors import StateError

STATE_FILE = "state.json"

# The order of the pipeline, and which step must have run before each.
STEP_ORDER = ("download", "split", "upload", "tune", "train", "deploy", "evaluate")
PREREQUISITE = {"split": "download", "upload": "split", "tune": "split", "train": "split", "deploy": "train"}


class State:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / STATE_FILE

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {"version": 1, "steps": {}}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.path}: unreadable state file ({exc})",
                             hint="delete it to start over, or restore it") from None
        data.setdefault("steps", {})
        return data

    def step(self, name: str) -> dict[str, Any] | None:
        """The record of a finished step (outputs, config, finished_at), or None."""
        return self.read()["steps"].get(name)

    def outputs(self, name: str) -> dict[str, Any] | None:
        record = self.step(name)
        return record["outputs"] if record else None

    def require(self, name: str, needed_by: str | None = None) -> dict[str, Any]:
        """Outputs of an earlier step, or a StateError saying which command to run first."""
        outputs = self.outputs(name)
        if outputs is None:
            who = f"'bincli {needed_by}' needs its output" if needed_by else "its output is needed"
            raise StateError(f"step '{name}' has not run in {self.workdir} ({who})",
                             hint=f"run 'bincli {name}' first")
        return outputs

    def record(self, name: str, outputs: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        with self._locked() as data:
            data["steps"][name] = {
                "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "bincli_version": __version__,
                "outputs": outputs,
                "config": config or {},
            }

    def forget(self, name: str) -> bool:
        with self._locked() as data:
            return data["steps"].pop(name, None) is not None

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / ".state.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            atomic_write_json(self.path, data)
