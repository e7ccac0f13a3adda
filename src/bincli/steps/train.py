"""The `train` step, shared by both backends: hyperparameters in, report and model.tar.gz out.

The step checks the split, turns the train config (or tune's best trial) into the entry point's
hyperparameters, picks the run folder (steps/runs.py: the run with these settings, else a new
one), hands them to the backend (a child process here, a SageMaker training job there), then
from the run folder the backend leaves (model/ and output/, as a training job does) packages
`<run>/model.tar.gz`, writes `<run>/report/` (naming the run and the model's sha256), copies
both to `<workdir>/model/` and `<workdir>/report/` (the latest finished run) and records state "train".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bincli.backends import get_backend
from bincli.config import Config, TrainConfig
from bincli.core.contract import METRICS_FILE
from bincli.core.fileio import file_sha256
from bincli.core.metrics import SUMMARY
from bincli.errors import BincliError, DataError, StateError, UsageError
from bincli.hyperparameters import hyperparameters_from
from bincli.layout import MODEL_TAR, REPORT_DIR, under
from bincli.state import State
from bincli.steps import runs
from bincli.steps.leakage import check_split_is_disjoint, record_training_split


def run_train(cfg: Config, *, from_tune: bool = False, fresh: bool = False, wait: bool = True,
              console=None, live: bool | None = None, run_name: str | None = None,
              resume: str | None = None, flags_given: Sequence[str] = ()) -> dict[str, Any]:
    """The whole step. Returns the result (also recorded in state as 'train').

    `run_name`: train into that run (a new one, or an existing one with the same settings);
    `resume`: continue that run ('last': the latest) with the settings it was started with;
    neither: the latest run with these settings continues, else a new run starts."""
    from bincli.console import err

    backend = get_backend(cfg)
    if not wait:
        backend.require("--no-wait")
    workdir = Path(cfg.workdir)
    state = State(workdir)
    split = state.require("split", needed_by="train")
    for key in ("manifests_dir", "data_root", "classes"):
        if key not in split:
            raise StateError(f"{state.path}: the 'split' record has no {key!r}", hint="run 'bincli split' again")
    if not (Path(split["manifests_dir"]) / "train.csv").is_file():
        raise DataError(f"{split['manifests_dir']}/train.csv is missing", hint="run 'bincli split' again")
    if not int(split.get("test") or 0) and not int(split.get("valid") or 0):
        # Found out before the epochs, not after: the report needs a held-out set.
        raise DataError("the split has neither a test nor a valid set to evaluate the model on",
                        hint="split again with a test share, e.g. --ratios 0.8 0.1 0.1")
    check_split_is_disjoint(split)
    split_fp = runs.split_fingerprint(split)
    train_section = cfg.train.model_dump(mode="json")
    if resume:
        chosen = runs.choose(workdir, {}, resume=resume, run_name=run_name)
        hp, from_tune = runs.saved_hyperparameters(chosen, split_fp, hyperparameters_from(cfg.train))
        saved = (runs.read_config(chosen.dir) or {}).get("train") or {}
        changed = [f"--{k.replace('_', '-')} {train_section[k]}" for k in flags_given
                   if k in saved and saved[k] != train_section.get(k)]
        if changed:  # the run keeps the settings it started with: say so, do not drop the flags silently
            raise UsageError(f"--resume {chosen.name} continues that run with the settings it started with; "
                             f"{', '.join(changed)} would change them",
                             hint="leave them out to resume, or train without --resume: a new run with these "
                                  "settings (--run-name NAME to name it)")
        train_section = saved or train_section
    else:
        hp = hyperparameters_from(cfg.train, tuned_hyperparameters(state) if from_tune else None)
        hp["classes"] = split["classes"]
        chosen = runs.choose(workdir, runs.settings(hp, split_fp), run_name=run_name, fresh=fresh)
    if fresh:
        runs.clear_outputs(chosen.dir)
    runs.write_config(chosen, train_section, hp, from_tune, split_fp)
    if chosen.existed and not fresh:
        (console or err).print(f"run {chosen.name} ({chosen.dir}) has these settings: continuing it",
                               markup=False, highlight=False, soft_wrap=True)
    try:
        run = backend.train(hp, split, from_tune=from_tune, fresh=fresh, wait=wait, console=console or err,
                            live=live, run_dir=chosen.dir)
    except BaseException:
        runs.discard_unstarted(chosen)
        raise
    if run.pending is not None:
        return {**run.pending, "run": chosen.name, "run_dir": str(chosen.dir), "waiting": False}
    return {**finish_training(state, cfg.train, hp, run.run_dir, workdir, split, publish=run.publish,
                              log_path=run.log_path, from_tune=from_tune), **run.extra}


def tuned_hyperparameters(state: State) -> dict[str, Any]:
    outputs = state.require("tune", needed_by="train --from-tune")
    best = outputs.get("best_hyperparameters")
    if not isinstance(best, dict) or not best:
        raise StateError(f"{state.path}: the 'tune' record has no best hyperparameters",
                         hint="run 'bincli tune' again, or train without --from-tune")
    return best


def finish_training(state: State, cfg: TrainConfig, hp: Mapping[str, Any], run_dir: Path, workdir: Path,
                    split: Mapping[str, Any], publish: Callable[[Path], dict[str, Any]] | None = None,
                    log_path: Path | None = None, from_tune: bool = False) -> dict[str, Any]:
    """From a finished run dir (model/ and output/ as a training job leaves them): the packaged
    <run>/model.tar.gz, the report <run>/report/, their copies as the workspace's latest
    (<workdir>/model/, <workdir>/report/) and the 'train' state record. Shared by both backends;
    `publish` (the sagemaker backend) puts the packaged model where deploy needs it and returns
    outputs to record."""
    from bincli.artifacts.bundle import package_model
    from bincli.core.metrics import summary
    from bincli.steps.report import write_report

    metrics_path = run_dir / "output" / METRICS_FILE
    if not metrics_path.is_file():
        raise BincliError(f"training finished but wrote no {metrics_path}",
                          hint=f"see {log_path}" if log_path else None)
    job = json.loads(metrics_path.read_text())
    on = "test" if "test" in job else ("valid" if "valid" in job else None)
    if on is None:
        raise DataError("the split has neither a test nor a valid set to evaluate the model on",
                        hint="split again with a test share, e.g. --ratios 0.8 0.1 0.1")
    report = {
        **job[on], "split": on, "baseline": job.get("baseline"), "history": job.get("history", []),
        "valid": summary(job["valid"]) if "valid" in job and on != "valid" else None,
        "arch": job["arch"], "classes": job["classes"], "best_epoch": job["best_epoch"],
        "epochs_run": job["epochs_run"], "stop_reason": job.get("stop_reason"),
        "hyperparameters": job.get("hyperparameters"), "calibration": job.get("calibration"),
    }
    trained_on = record_training_split(run_dir / "model", split)
    tar = Path(package_model(run_dir / "model", run_dir / MODEL_TAR)).resolve()
    sha256 = file_sha256(tar)
    report = {"run": run_dir.name, "model_sha256": sha256, **report}  # which model these numbers are of
    report_dir = run_dir / REPORT_DIR
    paths = write_report(report, report_dir, source="train run")
    latest = runs.publish_latest(workdir, run_dir, paths)
    outputs = {
        "run": run_dir.name,
        "run_dir": str(run_dir),
        "model": str(tar),
        "model_sha256": sha256,
        "latest_model": str(latest),
        "latest_report_dir": str(under(workdir, REPORT_DIR)),
        "model_dir": str(run_dir / "model"),
        "report_dir": str(report_dir),
        "metrics": paths["metrics"],
        "split": on,
        **{k: report[k] for k in SUMMARY},
        "baseline_accuracy": (report["baseline"] or {}).get("accuracy"),
        "best_epoch": job["best_epoch"],
        "epochs_run": job["epochs_run"],
        "stop_reason": job.get("stop_reason"),
        "classes": job["classes"],
        "train_split_fingerprint": trained_on,
        "image_size": hp["image-size"],
        "hyperparameters": dict(hp),
        "checkpoint_dir": str(run_dir / "checkpoints"),
        "log": str(log_path) if log_path else None,
        "figures": {k: v for k, v in paths.items() if k != "metrics"},
    }
    if publish is not None:
        outputs.update(publish(tar))
    # Made from tune's record only when its best hyperparameters were used (freshness, status).
    state.record("train", outputs, cfg.model_dump(mode="json"), reads=("split", "tune") if from_tune else ("split",))
    runs.write_page(run_dir)
    return {**outputs, "report": report}
