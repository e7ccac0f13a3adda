"""`bincli status` as data: where the workspace stands, step by step, and the command to run next.

Each step of STEP_ORDER gets one status:
  - "not run":  no record;
  - "running":  started and not collected yet (a SageMaker job started with --no-wait: its record
                says "InProgress"); rerunning the command waits for it and records the result;
  - "starting": a deploy that has not seen its endpoint answer yet (or was killed while waiting);
  - "stale":    an earlier record it was made from changed since it ran (a re-split leaves train
                and evaluate stale), as steps/freshness.py decides for `bincli pipeline` too;
  - "done":     otherwise. A config key that differs from the one it ran with is a softer note
                (`config_differs`): the result is still the one on disk, `bincli pipeline` would redo it.
A deployed endpoint is also asked whether it answers now (the backend's endpoint_status).

The next command is the first step of STEP_ORDER that needs doing, skipping the optional ones:
  - download when split has run or split.input is set (split can read any folder);
  - upload when upload.s3_uri is unset (the split stays where it is; SageMaker's train says to upload);
  - tune unless it has run and train is not run yet or was trained from it (tuning is optional).
(`bincli pipeline` runs tune unless tune.max_jobs is 0: status names the shortest way on.)
A step needs doing when it is not run, stale or running, or (deploy) its endpoint does not answer.
When none does: evaluate after deploy; then predict a photo, and teardown when finished.
"""

from __future__ import annotations

import contextlib
import csv
import shlex
from pathlib import Path
from typing import Any

from bincli.config import Config
from bincli.errors import BincliError
from bincli.state import STEP_ORDER, State
from bincli.steps.freshness import SECTION, settings_changed, workspace_freshness

# A job's status in its record while bincli has not collected its result (SageMaker's words).
PENDING = ("InProgress", "Stopping")


def workspace_status(cfg: Config, flags: str = "") -> dict[str, Any]:
    """Every step's status, outputs (absolute paths, as recorded) and the next command. `flags`:
    the -c/-w to repeat in that command so it acts on the same workspace."""
    steps = State(cfg.workdir).read()["steps"]
    fresh = workspace_freshness(steps)
    config_now = cfg.model_dump(mode="json")
    rows = []
    for name in STEP_ORDER:
        record = steps.get(name)
        status = _pending(record) or fresh[name].status
        rows.append({
            "step": name,
            "status": status,
            "done": status in ("done", "stale"),
            "reasons": fresh[name].reasons,
            "config_differs": settings_changed(name, record.get("config") or {},
                                               config_now.get(SECTION.get(name, name)) or {}) if record else [],
            "finished_at": record["finished_at"] if record else None,
            "made_from": sorted(record.get("inputs") or {}) if record else [],
            "outputs": record["outputs"] if record else {},
        })
    by_step = {row["step"]: row for row in rows}
    if steps.get("deploy") is not None:
        by_step["deploy"]["endpoint"] = endpoint_now(cfg)
    command, why = next_command(by_step, cfg)
    return {"workdir": str(Path(cfg.workdir).resolve()), "steps": rows,
            "next": {"command": f"bincli {command}{flags}", "why": why}}


def _pending(record: dict[str, Any] | None) -> str | None:
    if record is None:
        return None
    outputs = record["outputs"]
    if outputs.get("status") in PENDING:
        return "running"
    if outputs.get("starting"):
        return "starting"
    return None


def endpoint_now(cfg: Config) -> dict[str, Any] | None:
    """The deployed endpoint as its backend sees it now (local: its processes and a /ping;
    SageMaker: DescribeEndpoint). An error reaching it is shown, not raised: status always answers."""
    from bincli import backends  # looked up at each call, not bound once at import

    try:
        return backends.get_backend(cfg).endpoint_status()
    except BincliError as exc:
        return {"error": str(exc)}


def next_command(rows: dict[str, dict[str, Any]], cfg: Config) -> tuple[str, str]:
    """(the command after 'bincli ', why) by the rule in this module's docstring."""
    for step in STEP_ORDER:
        row = rows[step]
        status = row["status"]
        if status == "not run" and _optional(step, rows, cfg):
            continue
        if step == "tune" and status == "stale" and not _trained_from_tune(rows):
            continue  # a stale search nothing uses now
        if status == "running":
            job = row["outputs"].get("tuning_job") or row["outputs"].get("job_name") or "its job"
            return step, f"{job} was started with --no-wait; this waits for it and records the result"
        if status == "starting":
            return "teardown", ("the endpoint has not answered yet: wait for its 'bincli deploy', or run this "
                                "if that deploy was killed")
        if status == "not run" and step == "evaluate":
            return "evaluate", f"evaluate has not run (or try one photo: bincli predict {_a_photo(rows)})"
        if status == "not run" and step == "download":
            return _command(step, rows, cfg), "nothing downloaded yet (photos you have: bincli split --input DIR)"
        if status == "not run":
            return _command(step, rows, cfg), f"{step} has not run"
        if status == "stale":
            return _command(step, rows, cfg), f"{step} is stale: {'; '.join(row['reasons'])}"
        endpoint = row.get("endpoint") or {}
        if step == "deploy" and endpoint.get("alive") is False:
            return "deploy", f"endpoint '{endpoint.get('name')}' is not answering"
    return f"predict {_a_photo(rows)}", "every step is current; 'bincli teardown' stops the endpoint when you are done"


def _optional(step: str, rows: dict[str, dict[str, Any]], cfg: Config) -> bool:
    if step == "download":
        return rows["split"]["status"] != "not run" or cfg.split.input is not None
    if step == "upload":
        return cfg.upload.s3_uri is None
    return step == "tune"


def _trained_from_tune(rows: dict[str, dict[str, Any]]) -> bool:
    """True if train has not run yet or its model was made from tune's best trial."""
    train = rows["train"]
    return train["status"] == "not run" or "tune" in train["made_from"]


def _command(step: str, rows: dict[str, dict[str, Any]], cfg: Config) -> str:
    if step == "download" and not cfg.download.selects_photos:
        return "download --per-class 500"  # nothing chosen to download: download's own example
    if step == "train" and rows["tune"]["status"] == "done" and _trained_from_tune(rows):
        return "train --from-tune"
    if step == "deploy" and (rows["deploy"].get("endpoint") or {}).get("alive"):
        return "deploy --update"  # same endpoint, the new model
    return step


def _a_photo(rows: dict[str, dict[str, Any]]) -> str:
    """A test photo of the split for predict to try, as the shell takes it (IMAGE if none to name)."""
    split = rows["split"]["outputs"]
    try:
        with open((split.get("manifests") or {})["test"], newline="") as f:
            first = next(csv.DictReader(f))
        return shell_path(Path(split["data_root"]) / first["path"])
    except (OSError, TypeError, KeyError, StopIteration, csv.Error):
        return "IMAGE"


def shell_path(path: Path | str) -> str:
    """A path for a command line: relative to the current folder when under it, quoted if needed."""
    path = Path(path).resolve()
    with contextlib.suppress(ValueError):  # not under it: absolute
        path = path.relative_to(Path.cwd())
    return shlex.quote(str(path))
