"""The workspace state: what each step produced, in `<workdir>/state.json`.

A step records its outputs (paths, counts, URIs, job names, endpoints) and the config section
that produced them; a later step reads them from here instead of being told where. Writes are
atomic and serialised with a lock file, so two bincli processes never lose each other's record.
The file is validated on every read (one pydantic model, `StateFile`): a file of the wrong
shape is one StateError naming the broken record and the way out, never a traceback later.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from bincli import __version__
from bincli.core.fileio import atomic_write_json
from bincli.errors import StateError

STATE_FILE = "state.json"

# The order of the pipeline (for `bincli status`).
STEP_ORDER = ("download", "split", "upload", "tune", "train", "deploy", "evaluate")

# Which earlier records each step's work is made from. A record keeps a digest of those records'
# outputs as they were when it was written (`inputs`); one that differs now means "made from an
# older input" (stale: steps/freshness.py). A step records only the inputs that exist.
READS: dict[str, tuple[str, ...]] = {
    "inspect": ("download",), "split": ("download",), "upload": ("split",), "tune": ("split", "upload"),
    "train": ("split", "tune"), "deploy": ("train",), "evaluate": ("train", "split"),
}


def json_digest(value: Any) -> str:
    """A short digest of JSON-like settings or outputs: equal content, equal digest (key order aside).
    The SageMaker job and tuning-job records key their reattach on it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Outputs that say how a run went, not what it made (download's time, the mirror URL it used): a
# rerun that makes the same thing leaves later steps current.
RUN_FACTS = frozenset({"seconds", "source"})


def outputs_digest(outputs: dict[str, Any]) -> str:
    """One record's outputs, as a later record keeps them in `inputs`."""
    return json_digest({key: value for key, value in outputs.items() if key not in RUN_FACTS})


class StepRecord(BaseModel):
    """One finished step. `outputs` is the step's own data; its keys are the step's business."""

    model_config = ConfigDict(extra="allow", strict=True)

    finished_at: str
    bincli_version: str
    outputs: dict[str, Any]
    config: dict[str, Any]
    inputs: dict[str, str] = {}  # {earlier step: outputs_digest} when this one was recorded (READS)


class StateFile(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    version: Literal[1] = 1
    steps: dict[str, StepRecord] = {}


class State:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.path = self.workdir / STATE_FILE

    def read(self) -> dict[str, Any]:
        """The whole file, validated: {"version": 1, "steps": {name: record}}."""
        return self._load().model_dump()

    def step(self, name: str) -> dict[str, Any] | None:
        """The record of a finished step (outputs, config, finished_at), or None."""
        record = self._load().steps.get(name)
        return record.model_dump() if record else None

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

    def record(self, name: str, outputs: dict[str, Any], config: dict[str, Any] | None = None,
               reads: tuple[str, ...] | None = None) -> None:
        """Record a finished step. `reads`: the earlier steps it was made from, when not all of
        READS[name] (train without --from-tune reads no tune)."""
        with self._locked(replacing=name) as data:
            steps = data["steps"]
            inputs = {up: outputs_digest(steps[up]["outputs"])
                      for up in (READS.get(name, ()) if reads is None else reads) if up in steps}
            # Validated on the way in too, so bincli never writes a file it would refuse to read.
            steps[name] = StepRecord(
                finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
                bincli_version=__version__,
                outputs=outputs,
                config=config or {},
                inputs=inputs,
            ).model_dump()

    def forget(self, name: str) -> bool:
        with self._locked(replacing=name) as data:
            return data["steps"].pop(name, None) is not None

    def _load(self, replacing: str | None = None) -> StateFile:
        """Read and validate. `replacing`: a record about to be rewritten or removed may be broken
        (so rerunning that step repairs it)."""
        if not self.path.is_file():
            return StateFile()
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise StateError(f"{self.path}: unreadable state file ({exc})",
                             hint="delete it to start over, or restore it") from None
        if replacing is not None and isinstance(data, dict) and isinstance(data.get("steps"), dict):
            data["steps"].pop(replacing, None)
        try:
            return StateFile.model_validate(data)
        except ValidationError as exc:
            raise self._explain(data, exc) from None
        except RecursionError:
            raise StateError(f"{self.path}: unreadable state file (nested too deeply)",
                             hint="delete it to start over, or restore it") from None

    def _explain(self, data: Any, exc: ValidationError) -> StateError:
        errors = exc.errors()
        first = errors[0]
        loc = tuple(first["loc"])
        if len(loc) >= 2 and loc[0] == "steps":
            name = str(loc[1])
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][2:]) or 'record'}: {_msg(e)}"
                for e in errors if tuple(e["loc"][:2]) == ("steps", loc[1]))
            broken = sorted({str(e["loc"][1]) for e in errors if len(e["loc"]) >= 2 and e["loc"][0] == "steps"})
            others = f" (also broken: {', '.join(repr(b) for b in broken if b != name)})" if len(broken) > 1 else ""
            rerun = f" and rerun 'bincli {name}'" if name in STEP_ORDER else ""
            if name == "deploy":  # the endpoint it named may still run, and cost money
                rerun += " (stop the endpoint it names yourself if it still runs)"
            return StateError(f"{self.path}: the {name!r} record is broken: {problems}{others}",
                              hint=f"remove {name!r} from \"steps\" in that file{rerun}, or delete the file "
                                   "to start over")
        if not isinstance(data, dict):
            what = f"expected a JSON object like {{\"version\": 1, \"steps\": {{...}}}}, got {_json_type(data)}"
        else:
            what = f"{'.'.join(str(p) for p in loc)}: {_msg(first)}"
        return StateError(f"{self.path}: not a bincli state file: {what}",
                          hint="delete it to start over (each step then reruns), or restore it")

    @contextmanager
    def _locked(self, replacing: str | None = None) -> Iterator[dict[str, Any]]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / ".state.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._load(replacing).model_dump()
            yield data
            atomic_write_json(self.path, data)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}.get(
        type(value), type(value).__name__)


def _msg(error: Any) -> str:
    # "Input should be a valid dictionary or instance of StepRecord": the class name means nothing to a user.
    return str(error["msg"]).split(" or instance of ")[0]
