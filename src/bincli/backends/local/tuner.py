"""The `tune` step (local backend): an Optuna search over the core entry point's hyperparameters.

Each trial is the same training process `bincli train` runs (the core entry point under the SM_*
contract, `--name value` hyperparameters), so a trial here is a training job there. The trial's
epoch lines are read as they come: each epoch's objective is reported to Optuna, and a trial the
pruner (median, or Hyperband with `tune.strategy: hyperband`) gives up on is stopped (SIGTERM: it
saves a checkpoint and exits). A trial's value is the last best-so-far line it printed
(`best_valid_loss=...`), the number a SageMaker tuning job scores the same trial by.

The study lives in `<workdir>/tune/study.db`: a rerun with the same search continues it and runs
only the trials still missing; a search with other settings is another study in the same file (it
never fails because of an earlier one), and the earlier search's trial folders move to
`<workdir>/tune/<its study name>/` so its logs survive. Results: `<workdir>/tune/tune-results.csv`
(one row per trial of the latest search) and state "tune" (best hyperparameters, read by
`bincli train --from-tune`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from bincli.backends.local.launcher import build_command, build_env, require_device, run_child
from bincli.config import Config, SearchSpace, TrainConfig, TuneConfig
from bincli.core.contract import best_metric, parse_best_line, parse_epoch_line, parse_progress_line
from bincli.core.fileio import atomic_write_text
from bincli.errors import BincliError, DataError
from bincli.hyperparameters import hyperparameters_from
from bincli.layout import CACHE_DIR, TUNE_DIR, under
from bincli.progress import PLAIN_INTERVAL_S, TrainProgress, step_summary
from bincli.state import State

log = logging.getLogger(__name__)

RESULTS_FILE = "tune-results.csv"
SEARCH_FILE = "search.json"  # which study the trial-NNN folders belong to
# Optuna's direction for each objective the entry point prints.
DIRECTIONS = {"valid_loss": "minimize", "valid_acc": "maximize"}


class TrialFailed(Exception):
    """A trial's training process failed; the study goes on with the next trial."""


def search_space(space: SearchSpace, fixed: set[str]) -> dict[str, Any]:
    """The searched hyperparameters (train config names), less those fixed by flags."""
    return space.searched(fixed)


def suggest(trial, space: dict[str, Any]) -> dict[str, Any]:
    params = {}
    for name, rule in space.items():
        if isinstance(rule, dict):
            params[name] = trial.suggest_float(name, rule["low"], rule["high"], log=rule["log"])
        else:
            params[name] = trial.suggest_categorical(name, list(rule))
    return params


def run_tune(cfg: Config, fixed: set[str], console) -> dict[str, Any]:
    """The whole step. `fixed`: train keys given as flags (not searched). Returns the result
    (also recorded in state as 'tune')."""
    import optuna

    require_device(cfg.train.device)
    workdir = Path(cfg.workdir)
    state = State(workdir)
    split = state.require("split", needed_by="tune")
    if int(split.get("valid") or 0) == 0:
        raise DataError("tune needs a valid split to score trials, and the split has none",
                        hint="run 'bincli split' with a valid ratio above 0, e.g. --ratios 0.8 0.1 0.1")
    tune = cfg.tune
    space = search_space(tune.search_space, fixed)
    train_cfg = cfg.train.model_copy(update={"epochs": tune.epochs, "nproc_per_node": 1})
    hyperparameters_from(train_cfg)  # fail fast on a bad fixed value, before any trial starts
    tune_dir = under(workdir, TUNE_DIR)
    tune_dir.mkdir(parents=True, exist_ok=True)

    study = _open_study(tune, space, train_cfg, split, tune_dir)
    _set_aside_other_search(tune_dir, study.study_name)
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    remaining = max(0, tune.max_jobs - len(done))
    console.print(f"tuning {', '.join(space) or 'nothing (every hyperparameter is fixed)'} over "
                  f"{tune.max_jobs} trials ({len(done)} done before, {tune.max_parallel} at a time), "
                  f"{tune.epochs} epoch(s) each, objective {tune.objective}; logs in {tune_dir}",
                  markup=False, highlight=False, soft_wrap=True)
    if remaining:
        objective = _Objective(study, tune, space, train_cfg, split, tune_dir, workdir, console)
        study.optimize(objective, n_trials=remaining, n_jobs=tune.max_parallel, catch=(TrialFailed,))
    outputs = _summarise(study, space, tune_dir, tune.objective)
    state.record("tune", outputs, {**cfg.tune.model_dump(mode="json"), "fixed": sorted(fixed)})
    return outputs


def _open_study(tune: TuneConfig, space: dict[str, Any], train_cfg: TrainConfig, split: dict[str, Any],
                tune_dir: Path):
    """The study for this search in <tune_dir>/study.db: created, or loaded to continue it."""
    import optuna

    fingerprint = _fingerprint(space, train_cfg.model_dump(mode="json"), tune.objective, split)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=f"bincli-{fingerprint}",
        storage=f"sqlite:///{tune_dir / 'study.db'}",
        load_if_exists=True,
        direction=DIRECTIONS[tune.objective],
        sampler=(optuna.samplers.RandomSampler(seed=tune.seed) if tune.strategy == "random"
                 else optuna.samplers.TPESampler(seed=tune.seed)),
        pruner=(optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tune.epochs)
                if tune.strategy == "hyperband" else optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)),
    )


def _set_aside_other_search(tune_dir: Path, study_name: str) -> None:
    """Trial folders are numbered per study: those of an earlier, other search move to
    <tune_dir>/<its study name>/ before this one's trial 0 would overwrite its trial 0."""
    marker = tune_dir / SEARCH_FILE
    try:
        previous = json.loads(marker.read_text(encoding="utf-8")).get("study")
    except (OSError, ValueError, AttributeError):
        previous = None
    trials = sorted(tune_dir.glob("trial-[0-9][0-9][0-9]"))
    # Without a marker (a workdir from before it) the folders may be this study's own: left alone.
    if isinstance(previous, str) and re.fullmatch(r"bincli-[0-9a-f]+", previous) and previous != study_name \
            and trials:
        keep = tune_dir / previous
        keep.mkdir(parents=True, exist_ok=True)
        for trial in trials:
            shutil.rmtree(keep / trial.name, ignore_errors=True)
            trial.rename(keep / trial.name)
        if (tune_dir / RESULTS_FILE).is_file():
            shutil.copyfile(tune_dir / RESULTS_FILE, keep / RESULTS_FILE)
        log.info("the earlier search's trials moved to %s", keep)
    atomic_write_text(marker, json.dumps({"study": study_name}) + "\n")


def _summarise(study, space: dict[str, Any], tune_dir: Path, objective: str) -> dict[str, Any]:
    """Write tune-results.csv and return the step's outputs; an error if no trial finished."""
    import optuna

    results = _write_results(tune_dir / RESULTS_FILE, study, space)
    states = [t.state for t in study.trials]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    if not complete:
        raise BincliError(f"no trial finished ({len(study.trials)} tried)",
                          hint=f"see the trial logs in {tune_dir}")
    best = study.best_trial
    return {
        "results": str(results),
        "study": str(tune_dir / "study.db"),
        "objective": objective,
        "trials": len(study.trials),
        "complete": complete,
        "pruned": states.count(optuna.trial.TrialState.PRUNED),
        "failed": states.count(optuna.trial.TrialState.FAIL),
        "best_trial": best.number,
        "best_value": best.value,
        "best_hyperparameters": dict(best.params),
    }


class _Objective:
    """Optuna's objective: one trial = one run of the core entry point, scored by its epoch lines.

    Called from `max_parallel` threads at once, so it keeps no per-trial state on self; the lock
    serialises rewrites of tune-results.csv.
    """

    def __init__(self, study, tune: TuneConfig, space: dict[str, Any], train_cfg: TrainConfig,
                 split: dict[str, Any], tune_dir: Path, workdir: Path, console):
        self.study = study
        self.objective = tune.objective
        self.space = space
        self.train_cfg = train_cfg
        self.split = split
        self.tune_dir = tune_dir
        self.workdir = workdir
        self.console = console
        self.lock = threading.Lock()
        # The CPU cores shared out between the trials that run at once.
        self.threads = max(1, (os.cpu_count() or 1) // tune.max_parallel)

    def __call__(self, trial) -> float:
        import optuna

        params = suggest(trial, self.space)
        trial_dir = self.tune_dir / f"trial-{trial.number:03d}"
        shutil.rmtree(trial_dir, ignore_errors=True)  # a trial always starts fresh
        best: list[float] = []
        scores: list[float] = []
        started = time.monotonic()
        try:
            epochs = int(hyperparameters_from(self.train_cfg, params)["epochs"])
            code, _ = run_child(self.command(params, trial_dir), self.env(trial_dir), trial_dir / "train.log",
                                self._reader(trial, best, scores, epochs), grace_s=30)
        except optuna.TrialPruned:
            trial.set_user_attr("duration_s", round(time.monotonic() - started, 1))
            self._say(f"trial {trial.number}: pruned after {len(best)} epoch(s) {_show(params)}")
            raise
        finally:
            with self.lock:
                _write_results(self.tune_dir / RESULTS_FILE, self.study, self.space)
        trial.set_user_attr("duration_s", round(time.monotonic() - started, 1))
        if code != 0 or not scores:
            self._say(f"trial {trial.number}: failed (exit code {code}; log {trial_dir / 'train.log'})")
            raise TrialFailed(f"exit code {code}")
        value = scores[-1]  # the last best-so-far line: SageMaker's score for the same trial
        self._say(f"trial {trial.number}: {self.objective}={value:.4f} {_show(params)}")
        return value

    def command(self, params: dict[str, Any], trial_dir: Path) -> list[str]:
        """The entry point's command line: the train config with this trial's hyperparameters."""
        hp = hyperparameters_from(self.train_cfg, params)
        hp["classes"] = self.split["classes"]
        extra = {"data-root": self.split["data_root"], "checkpoint-dir": str(trial_dir / "checkpoints"),
                 "cache-dir": str(under(self.workdir, CACHE_DIR)), "device": self.train_cfg.device,
                 "log-interval": PLAIN_INTERVAL_S}  # a line from each trial this often: no silent minutes
        return build_command(hp, 1, extra)

    def env(self, trial_dir: Path) -> dict[str, str]:
        env = build_env(self.split, trial_dir, 1)
        env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def _reader(self, trial, best: list[float], scores: list[float] | None = None, epochs: int | None = None):
        """on_line for run_child: report each epoch's objective to Optuna (appended to `best`); stop
        a pruned trial; the best-so-far lines' objective values go to `scores`. With `epochs`, the
        trial's progress and epoch lines are shown as they come (the child's --log-interval apart)."""
        import optuna

        def on_line(line: str) -> None:
            so_far = parse_best_line(line)
            if so_far is not None and scores is not None:
                scores.append(so_far[best_metric(self.objective)])
                return
            prog = parse_progress_line(line) if epochs else None
            if prog is not None:
                self._say(f"trial {trial.number}: {step_summary(prog, epochs)}")
                return
            row = parse_epoch_line(line)
            if row is not None and epochs:
                self._say(f"trial {trial.number}: {TrainProgress.epoch_summary(row, epochs)}")
            if row is None or self.objective not in row:
                return
            value = row[self.objective]
            best.append(value)
            trial.report(value, int(row["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {int(row['epoch'])}")

        return on_line

    def _say(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False)


def _write_results(path: Path, study, space: dict[str, Any]) -> Path:
    """tune-results.csv: trial, state, value, duration_s, then one column per searched hyperparameter."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(space)
    writer.writerow(["trial", "state", "value", "duration_s", *names])
    for t in sorted(study.trials, key=lambda t: t.number):
        writer.writerow([t.number, t.state.name.lower(), "" if t.value is None else f"{t.value:.6f}",
                         t.user_attrs.get("duration_s", ""), *(t.params.get(n, "") for n in names)])
    atomic_write_text(path, buf.getvalue())
    return path


def _fingerprint(space: dict[str, Any], train: dict[str, Any], objective: str, split: dict[str, Any]) -> str:
    """Same search on the same split -> same study (a rerun continues it); anything else -> a new one."""
    key = json.dumps({"space": space, "train": train, "objective": objective,
                      "split": [split.get("manifests_dir"), split.get("train"), split.get("valid")]},
                     sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _show(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
