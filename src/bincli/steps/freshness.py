"""Is a finished step still current? The one answer `bincli status` and `bincli pipeline` share.

A step's record (bincli.state) keeps the config it ran with and a digest of the earlier records it
was made from (`inputs`, per state.READS). Against the workspace as it is now, a step is:
  - "not run":  no record;
  - "stale":    an earlier record it was made from changed or is gone since (a re-split leaves the
                model trained on the old split stale), or, with `settings=True`, a config key it ran
                with differs from the config now (what `pipeline` reruns for);
  - "done":     otherwise.
Config keys that change how a step runs but not what it makes (workers, timeouts) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bincli.state import STEP_ORDER, outputs_digest

# The config section each step's record keeps (evaluate keeps a few predict keys).
SECTION = {"download": "download", "inspect": "inspect", "split": "split", "upload": "upload", "tune": "tune",
           "train": "train", "deploy": "deploy", "evaluate": "predict"}

# Keys that change how a step runs, not what it produces: a change is no reason to redo it.
HOW_NOT_WHAT = {
    "download": {"workers", "retries", "strict", "endpoint_url", "max_object_mb"},
    "upload": {"workers", "endpoint_url"},
    "train": {"workers", "log_interval"},
    "deploy": {"startup_timeout", "body_timeout", "keep_alive_timeout"},
    "predict": {"timeout", "concurrency", "endpoint", "endpoint_url"},
}


@dataclass
class Freshness:
    step: str
    status: str  # "not run" | "done" | "stale"
    reasons: list[str] = field(default_factory=list)  # what changed, for people ("split changed since")

    @property
    def current(self) -> bool:
        return self.status == "done"


def settings_changed(step: str, ran_with: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'train.epochs: 3 -> 5' for each key the step ran with whose value differs now (keys only
    one side has are not compared: a config from before a key existed is not a change)."""
    section = SECTION.get(step, step)
    ignored = HOW_NOT_WHAT.get(section, set())
    before, after = _flat(ran_with), _flat(now)
    return [f"{section}.{key}: {_show(before[key])} -> {_show(after[key])}"
            for key in sorted(before.keys() & after.keys())
            if key.split(".")[0] not in ignored and before[key] != after[key]]


def inputs_changed(record: dict[str, Any], steps: dict[str, dict[str, Any]]) -> list[str]:
    """The earlier records this one was made from that changed (or went) since it was written."""
    reasons = []
    for up, digest in (record.get("inputs") or {}).items():
        if up not in steps:
            reasons.append(f"{up} is gone since")
        elif outputs_digest(steps[up]["outputs"]) != digest:
            reasons.append(f"{up} changed since (ran {steps[up]['finished_at']})")
    return reasons


def step_freshness(step: str, steps: dict[str, dict[str, Any]], config: dict[str, Any] | None = None
                   ) -> Freshness:
    """One step against the workspace `steps` (State.read()["steps"]); with `config` (the whole
    config, as JSON), a changed setting makes it stale too."""
    record = steps.get(step)
    if record is None:
        return Freshness(step, "not run")
    reasons = inputs_changed(record, steps)
    if config is not None:
        reasons += settings_changed(step, record.get("config") or {}, config.get(SECTION.get(step, step)) or {})
    return Freshness(step, "stale" if reasons else "done", reasons)


def workspace_freshness(steps: dict[str, dict[str, Any]], config: dict[str, Any] | None = None,
                        order: tuple[str, ...] = STEP_ORDER) -> dict[str, Freshness]:
    """Every step of `order`. A step made from a stale one is stale too (its input will change)."""
    result: dict[str, Freshness] = {}
    for step in order:
        verdict = step_freshness(step, steps, config)
        if verdict.status == "done":
            stale_inputs = [up for up in (steps[step].get("inputs") or {})
                            if up in result and result[up].status == "stale"]
            if stale_inputs:
                verdict = Freshness(step, "stale", [f"{up} is stale" for up in stale_inputs])
        result[step] = verdict
    return result


def _flat(section: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(section, dict):
        return {prefix: section} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(_flat(value, name))
        else:
            flat[name] = value
    return flat


def _show(value: Any) -> str:
    return "null" if value is None else str(value)
