"""`bincli pipeline`: every step in order, with one config, rerunning only what changed (like make).

    download -> inspect -> split -> upload -> tune -> train -> deploy -> evaluate [-> teardown]

The plan (`plan()`, what --dry-run prints): each step is one of
  - "run":   --force names it; or a step before it runs (everything after a step that runs runs too,
             except after inspect, which only reports);
             or it is not current (steps/freshness.py: no record, an earlier record it was made from
             changed, or a setting it ran with differs from the config now, e.g. "train.epochs: 3 -> 5");
             or its record says work is left (a tuning job recorded before it finished, images that
             got no answer in evaluate); deploy also when its endpoint is no longer running;
  - "skip":  its record is current, or it lies outside --from/--to (left as it is);
  - "not configured": the config leaves it out. Never an error. The rules:
      download  no selection (download.per_class, file_list, ids, ids_file): the photos are already
                there, in split.input or from an earlier `bincli download`. With neither, the plan
                fails at once (there would be nothing to split).
      upload    no upload.s3_uri: training reads the local split (backend local). On backend sagemaker,
                tune and train then stop with the message that names upload.s3_uri.
      tune      tune.max_jobs: 0. Otherwise train uses tune's best trial (`bincli train --from-tune`).
      inspect, split, train, deploy, evaluate are always configured (their sections have defaults):
      inspect reads inspect.input, else split.input, else the download; evaluate scores the test
      split (the valid split when there is no test set) through the endpoint deploy made.
    teardown is not in the plan unless --teardown; then it always runs, last, whatever happened
    before it (a failed step, Ctrl-C, SIGTERM, a bug): it removes what deploy made (what bills while
    idle) and is a no-op when nothing is deployed. Its row says what it removed and what it left.
--from/--to choose the range: steps outside it are left as they are, stale or not. --force STEP
reruns STEP (and therefore every step after it).

Running calls the same step functions the commands call, in this process, in order. A step that
fails (or Ctrl-C, or SIGTERM) stops the pipeline; every finished step has its record, so running
`bincli pipeline` again resumes at the step that stopped (train continues its own checkpoint: the
same settings are the same run). The command then exits with that step's code (1; 2 for a config
or usage error; 130 when interrupted), naming the step. The result lists per step its status (ran, skipped, not
configured, failed, not reached), its time and its key outputs, and the model's test metrics next
to the majority-class baseline.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bincli.config import Config
from bincli.core.metrics import SUMMARY
from bincli.errors import BincliError, ConfigError, Interrupted, UsageError
from bincli.state import State
from bincli.steps.freshness import step_freshness

STEPS = ("download", "inspect", "split", "upload", "tune", "train", "deploy", "evaluate")
TEARDOWN = "teardown"
REPORTS_ONLY = {"inspect"}  # no later step reads it: its rerun reruns nothing after it

# Per step, the outputs of its record worth a glance in the summary (the JSON has the same).
KEY_OUTPUTS = {
    "download": ("images", "failed", "data_dir"),
    "inspect": ("images", "leaking_groups", "page"),
    "split": ("train", "valid", "test"),
    "upload": ("uri",),
    "tune": ("trials", "best_trial", "best_value", "tuning_job"),
    "train": ("run", "epochs_run", "accuracy", "model", "job_name"),
    "deploy": ("name", "url", "endpoint"),
    "evaluate": ("split", "n", "accuracy", "failed"),
    TEARDOWN: ("message", "removed", "left"),
}


@dataclass
class Planned:
    step: str
    action: str  # "run" | "skip" | "not configured"
    reasons: list[str] = field(default_factory=list)


def effective_config(cfg: Config) -> Config:
    """The config as the pipeline runs it: inspect reads split.input when it has no input of its own
    and nothing is downloaded (so a pipeline on a local folder inspects that folder)."""
    if cfg.inspect.input is None and cfg.split.input is not None and not cfg.download.selects_photos:
        return cfg.model_copy(update={"inspect": cfg.inspect.model_copy(update={"input": cfg.split.input})})
    return cfg


def plan(cfg: Config, *, start: str | None = None, stop: str | None = None, force: list[str] | None = None,
         teardown: bool = False, check_endpoint: bool = True) -> list[Planned]:
    """What `bincli pipeline` would do now, step by step, and why. Reads state; writes nothing.
    `check_endpoint`: ask the backend whether a recorded endpoint still runs."""
    cfg = effective_config(cfg)
    forced = set(_check_steps(force or [], "--force"))
    first = STEPS.index(_check_steps([start], "--from")[0]) if start else 0
    last = STEPS.index(_check_steps([stop], "--to")[0]) if stop else len(STEPS) - 1
    if first > last:
        raise UsageError(f"--from {start} comes after --to {stop} (the order: {' -> '.join(STEPS)})")
    steps = State(cfg.workdir).read()["steps"]
    left_out = {step: why for step in STEPS if (why := not_configured(cfg, step, steps))}
    if cannot := sorted(forced & left_out.keys()):
        raise UsageError(f"--force {cannot[0]}: {cannot[0]} is not configured ({left_out[cannot[0]]})")
    config_json = cfg.model_dump(mode="json")
    planned: list[Planned] = []
    runs_before: str | None = None  # the first step that runs: every configured step after it runs
    for i, step in enumerate(STEPS):
        if step in left_out:
            planned.append(Planned(step, "not configured", [left_out[step]]))
        elif i < first:
            planned.append(Planned(step, "skip", [f"before --from {start}"]))
        elif i > last:
            planned.append(Planned(step, "skip", [f"after --to {stop}"]))
        elif step in forced:
            planned.append(Planned(step, "run", ["--force"]))
        else:
            verdict = step_freshness(step, steps, config_json)
            if verdict.status == "not run":
                planned.append(Planned(step, "run", ["not run yet"]))
            elif verdict.status == "stale":
                planned.append(Planned(step, "run", verdict.reasons))
            elif unfinished := _unfinished(step, steps[step]["outputs"]):
                planned.append(Planned(step, "run", [unfinished]))
            elif runs_before is not None:
                planned.append(Planned(step, "run", [f"{runs_before} runs before it"]))
            elif step == "deploy" and check_endpoint and (down := _endpoint_down(cfg)):
                planned.append(Planned(step, "run", [down]))
            else:
                planned.append(Planned(step, "skip", [f"up to date (done {steps[step]['finished_at']})"]))
        if planned[-1].action == "run" and runs_before is None and step not in REPORTS_ONLY:
            runs_before = step
    if teardown:
        planned.append(Planned(TEARDOWN, "run", ["--teardown"]))
    return planned


def not_configured(cfg: Config, step: str, steps: dict[str, Any] | None = None) -> str | None:
    """Why the config leaves `step` out (the module docstring's rules), or None."""
    if step == "download" and not cfg.download.selects_photos:
        if cfg.split.input is None and "download" not in (steps or {}):
            raise ConfigError("nothing to split: the config selects nothing to download and names no folder",
                              hint="set download.per_class (or download.file_list, ids, ids_file), or split.input "
                                   "to a folder with images/ and metadata/")
        return ("no download.per_class, file_list, ids or ids_file: "
                + ("split.input is the data" if cfg.split.input is not None else "the earlier download is the data"))
    if step == "upload" and cfg.upload.s3_uri is None:
        return "no upload.s3_uri (training reads the local split)"
    if step == "tune" and cfg.tune.max_jobs == 0:
        return "tune.max_jobs: 0"
    return None


def run_pipeline(cfg: Config, *, start: str | None = None, stop: str | None = None,
                 force: list[str] | None = None, teardown: bool = False, dry_run: bool = False,
                 console=None) -> dict[str, Any]:
    """Plan, then (unless `dry_run`) run each planned step in order, stopping at the first that fails.
    Returns the summary: {"workdir", "dry_run", "steps": [...], "metrics", "failed"}; "failed" is
    None or {"step", "error", "hint", "exit_code"} (see outcome_error)."""
    from bincli.console import err

    console = console or err
    cfg = effective_config(cfg)
    planned = plan(cfg, start=start, stop=stop, force=force, teardown=teardown)
    state = State(cfg.workdir)
    rows: list[dict[str, Any]] = []
    failed: dict[str, Any] | None = None
    from_tune = not_configured(cfg, "tune") is None
    last = planned.pop() if not dry_run and planned and planned[-1].step == TEARDOWN else None
    try:
        for p in planned:
            row: dict[str, Any] = {"step": p.step, "plan": p.action, "reasons": p.reasons, "seconds": None}
            rows.append(row)
            if dry_run:
                row["status"] = {"run": "would run", "skip": "would skip"}.get(p.action, p.action)
            elif failed is not None:
                row["status"] = "not reached"
            elif p.action != "run":
                row["status"] = "skipped" if p.action == "skip" else p.action
                row["outputs"] = _key_outputs(p.step, state.outputs(p.step))
            else:
                failed = _run_step(cfg, p, row, state, from_tune, console)
    finally:
        if last is not None:  # --teardown: last, whatever happened above (an exception goes on after it)
            rows.append({"step": TEARDOWN, "plan": last.action, "reasons": last.reasons, "seconds": None})
            failed = _run_step(cfg, last, rows[-1], state, from_tune, console) or failed
            _say_removed(rows[-1], console)
    return {"workdir": str(cfg.workdir), "dry_run": dry_run, "steps": rows,
            "metrics": None if dry_run else summary_metrics(state), "failed": failed}


def _run_step(cfg: Config, p: Planned, row: dict[str, Any], state: State, from_tune: bool,
              console: Any) -> dict[str, Any] | None:
    """Run one planned step, filling its summary row; its failure (see _failure), or None."""
    console.print(f"== {p.step}: {'; '.join(p.reasons)}", markup=False, highlight=False, soft_wrap=True)
    started = time.monotonic()
    failure = result = None
    try:
        result = _RUNNERS[p.step](cfg, from_tune)
        row["status"] = "ran"
    except (BincliError, KeyboardInterrupt) as exc:
        row["status"] = "failed"
        failure = _failure(p.step, exc)
    row["seconds"] = round(time.monotonic() - started, 1)
    if result is not None:
        row["outputs"] = _key_outputs(p.step, result if p.step == TEARDOWN else state.outputs(p.step))
    return failure


def _say_removed(row: dict[str, Any], console: Any) -> None:
    """Teardown's result as it happens: the summary is not printed when an exception stops the pipeline."""
    outputs = row.get("outputs") or {}
    if outputs.get("message"):
        console.print(f"   {outputs['message']}", markup=False, highlight=False, soft_wrap=True)


def outcome_error(result: dict[str, Any]) -> BincliError | None:
    """The error `bincli pipeline` exits with (after the summary): the failed step, and how to resume."""
    failed = result.get("failed")
    if not failed:
        return None
    hint = f"{failed['hint']}; then " if failed.get("hint") else ""
    error = BincliError(f"pipeline stopped at {failed['step']}: {failed['error']}",
                        hint=f"{hint}run 'bincli pipeline' again (same config) to resume at {failed['step']}")
    error.exit_code = failed["exit_code"]
    return error


def summary_metrics(state: State) -> dict[str, Any] | None:
    """The model's metrics next to the majority-class baseline: evaluate's (through the endpoint) when
    it scored the latest model, else train's (its held-out split). Read from the step's metrics.json
    (the whole report)."""
    steps = state.read()["steps"]
    for step in ("evaluate", "train"):
        outputs = (steps.get(step) or {}).get("outputs")
        if not outputs or (step == "evaluate" and step_freshness(step, steps).status != "done"):
            continue
        report = _read_json(outputs.get("metrics"))
        baseline = (report or {}).get("baseline") or {}
        return {"source": step, "split": outputs.get("split"), "n": (report or {}).get("n", outputs.get("n")),
                **{k: outputs.get(k) for k in SUMMARY},
                "baseline": {k: baseline.get(k) for k in SUMMARY} if baseline else
                {"accuracy": outputs.get("baseline_accuracy")},
                "baseline_label": baseline.get("predicted_label"), "metrics_file": outputs.get("metrics")}
    return None


# ---------------------------------------------------------------- the steps, as their commands call them
def _download(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.data.download import run_download

    return run_download(cfg.download, cfg.workdir)


def _inspect(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.steps.data_report import run_inspect

    return run_inspect(cfg)


def _split(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.data.split import run_split

    return run_split(cfg.split, cfg.workdir)


def _upload(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.backends import get_backend

    return get_backend(cfg).upload()


def _tune(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.steps.tune import run_tune

    return run_tune(cfg)


def _train(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.steps.train import run_train

    return run_train(cfg, from_tune=from_tune)


def _deploy(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.backends import get_backend

    # An endpoint deploy made before gets the new model under its name (local: a new server on its
    # port; SageMaker: UpdateEndpoint); none yet: a new one.
    return get_backend(cfg).deploy(None, update=State(cfg.workdir).outputs("deploy") is not None, foreground=False)


def _evaluate(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.steps.evaluate import outcome_error as unanswered
    from bincli.steps.evaluate import run_evaluate

    split = State(cfg.workdir).outputs("split") or {}
    result = run_evaluate(cfg, "test" if int(split.get("test") or 0) else "valid")
    problem = unanswered(result)
    if problem is not None:
        raise problem
    return result


def _teardown(cfg: Config, from_tune: bool) -> dict[str, Any]:
    from bincli.backends import get_backend

    return get_backend(cfg).teardown(None)


_RUNNERS = {"download": _download, "inspect": _inspect, "split": _split, "upload": _upload, "tune": _tune,
            "train": _train, "deploy": _deploy, "evaluate": _evaluate, TEARDOWN: _teardown}


# ---------------------------------------------------------------- helpers
def _check_steps(names: list[str | None], flag: str) -> list[str]:
    for name in names:
        if name not in STEPS:
            raise UsageError(f"{flag} {name}: not a pipeline step; expected one of {', '.join(STEPS)}")
    return [n for n in names if n is not None]


def _endpoint_down(cfg: Config) -> str | None:
    """Why the recorded endpoint needs deploying again (it stopped), or None when it runs (or the
    backend cannot tell now: deploy is then left as it is)."""
    from bincli.steps.status import endpoint_now  # asks the backend; an error comes back as {"error": ...}

    status = endpoint_now(cfg)
    if status is None or "error" in status or status.get("serving"):
        return None
    return f"endpoint '{status.get('name')}' is {status.get('status')}"


def _unfinished(step: str, outputs: dict[str, Any]) -> str | None:
    """Why a recorded step still has work left: a tuning job recorded while it ran (SageMaker: the
    record comes before the wait), an evaluation some images got no answer in."""
    if step == "tune" and not outputs.get("best_hyperparameters"):
        return f"the tuning {'job ' + outputs['tuning_job'] if outputs.get('tuning_job') else 'search'} had not " \
               "finished"
    if step == "evaluate" and outputs.get("failed"):
        return f"{outputs['failed']} image(s) got no answer last time"
    return None


def _failure(step: str, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, KeyboardInterrupt):
        return {"step": step, "error": "interrupted", "hint": None, "exit_code": Interrupted.exit_code}
    assert isinstance(exc, BincliError)
    return {"step": step, "error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}


def _key_outputs(step: str, outputs: dict[str, Any] | None) -> dict[str, Any]:
    if not outputs:
        return {}
    return {k: outputs[k] for k in KEY_OUTPUTS.get(step, ()) if outputs.get(k) is not None}


def _read_json(path: Any) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):
        return None
