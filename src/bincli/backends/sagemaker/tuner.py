"""The `tune` step on backend sagemaker: a SageMaker hyperparameter tuning job over the same search.

Every trial is configured as `bincli train` configures its job: the tuning job's training
definition comes from the ModelTrainer that training_job.build_trainer makes (image, core bundle,
compute, spot, stopping condition, input channels), through the SDK's HyperparameterTuner. The
train config's hyperparameters go as static ones, as `train` sends them; the searched ones
(`tune.search_space`, the local backend's search) become ranges: a log range a `Logarithmic`
continuous parameter, a linear one `Linear`, a list a categorical one.

A trial is scored by its last best-so-far line (`best_valid_loss=...`), which is what SageMaker
keeps from the objective's regex and what the local tuner scores the same run by; a trial that
Hyperband or early stopping stopped is ranked by the score it reached. Trials keep no checkpoints
in S3: a tuning job has one CheckpointConfig for all its trials (no per-trial URI), and SageMaker
copies all of it down when each trial starts, so trial k would fetch the k-1 earlier trials'
checkpoints. The price: a trial that loses its spot instance starts again from epoch 1 (trials are
tune.epochs long).

The job is recorded in <workdir>/tune/sagemaker-tuning-job.json and in state 'tune' before
waiting; a rerun with the same settings attaches to it. Ctrl-C stops waiting, not the job;
`bincli tune --stop` stops it. At the end, <workdir>/tune/tune-results.csv has the local backend's
columns (then training_job, billable_s and cost_usd), and state 'tune' the best hyperparameters as
the local backend records them (so `bincli train --from-tune` reads either backend's result) and
what the trials cost together (pricing.py).
"""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bincli.backends.sagemaker.pricing import cost_line, total_cost, training_cost
from bincli.backends.sagemaker.session import (
    artifacts_location,
    aws_error,
    boto_session,
    is_not_found,
    read_job_record,
    require_buckets_in_region,
    require_sdk,
    resource_tags,
    split_in_s3,
)
from bincli.backends.sagemaker.training_job import JOB_KEYS  # the sagemaker keys that shape a training job
from bincli.config import Config
from bincli.core.contract import best_metric, hyperparameter_name, metric_definitions
from bincli.core.fileio import atomic_write_json, atomic_write_text
from bincli.data.s3 import join_key, parse_s3_uri
from bincli.errors import BincliError, ConfigError, DataError, Interrupted, StateError
from bincli.hyperparameters import hyperparameters_from
from bincli.layout import TUNE_DIR, under
from bincli.state import State, json_digest

JOB_FILE = "sagemaker-tuning-job.json"
RESULTS_FILE = "tune-results.csv"  # the local backend's file name and first columns
TERMINAL = ("Completed", "Failed", "Stopped")
# A recorded job a rerun attaches to (a stopped one too: its finished trials are the result).
ATTACHABLE = ("InProgress", "Stopping", "Completed", "Stopped")
STRATEGIES = {"bayesian": "Bayesian", "random": "Random", "hyperband": "Hyperband"}
OBJECTIVE_TYPES = {"valid_loss": "Minimize", "valid_acc": "Maximize"}
# A training job's status as the local leaderboard names an Optuna trial's state.
STATES = {"Completed": "complete", "InProgress": "running", "Stopping": "running", "Stopped": "pruned",
          "Failed": "fail"}


def tune_on_sagemaker(config: Config, fixed: set[str], console, *, wait: bool = True,
                      stop: bool = False) -> dict[str, Any]:
    """Start (or attach to) the tuning job; with `wait`, see it through and record the best trial."""
    workdir = Path(config.workdir)
    tune_dir = under(workdir, TUNE_DIR)
    sm_cfg = config.sagemaker
    if stop:
        return _stop(boto_session(sm_cfg).client("sagemaker"), tune_dir / JOB_FILE, console)
    state = State(workdir)
    split = state.require("split", needed_by="tune")
    if int(split.get("valid") or 0) == 0:
        raise DataError("tune needs a valid split to score trials, and the split has none",
                        hint="run 'bincli split' with a valid ratio above 0, e.g. --ratios 0.8 0.1 0.1")
    upload = split_in_s3(state, "tune")
    require_sdk()
    tune = config.tune
    space = tune.search_space.searched(fixed)
    if not space:
        raise ConfigError("tune.search_space: nothing left to search (every hyperparameter is null or fixed "
                          "by a flag); a SageMaker tuning job needs at least one range")
    # Trials run tune.epochs epochs on one instance: tuning jobs run the script through the
    # sagemaker-training toolkit, one process, not the SDK's torchrun driver.
    train_cfg = config.train.model_copy(update={"epochs": tune.epochs, "nproc_per_node": 1})
    sm_cfg = sm_cfg.model_copy(update={"train_instance_count": 1})
    hp = hyperparameters_from(train_cfg)
    hp["classes"] = split["classes"]
    if tune.seed < 0:
        raise ConfigError(f"tune.seed: SageMaker's RandomSeed is 0 or more, got {tune.seed}")
    channels = {name: uri for name, uri in upload["channels"].items() if name == "train" or int(split.get(name) or 0)}
    bucket, prefix = artifacts_location(sm_cfg, upload)
    settings = {"hyperparameters": hp, "space": space, "objective": tune.objective, "strategy": tune.strategy,
                "max_jobs": tune.max_jobs, "max_parallel": tune.max_parallel, "seed": tune.seed,
                "channels": channels, "sagemaker": sm_cfg.model_dump(mode="json", include=JOB_KEYS)}
    fingerprint = json_digest(settings)

    session = boto_session(sm_cfg)
    # As train does: a bucket in another region would only show as every trial failing.
    require_buckets_in_region({bucket, *(parse_s3_uri(uri)[0] for uri in channels.values())},
                              session.region_name, console)
    sm = session.client("sagemaker")
    tune_dir.mkdir(parents=True, exist_ok=True)
    job_file = tune_dir / JOB_FILE
    job_name = _attachable(job_file, fingerprint, sm)
    if job_name:
        console.print(f"attaching to tuning job {job_name} (started earlier with these settings)",
                      markup=False, soft_wrap=True)
    else:
        trials_cfg = config.model_copy(update={"train": train_cfg, "sagemaker": sm_cfg})
        # The SDK's own names have minute resolution: a second search within the minute would clash.
        job_name = f"{sm_cfg.base_job_name[:10]}-tune-{datetime.now(UTC):%m%d%H%M%S}-{fingerprint[:4]}"
        _start(trials_cfg, session, hp, space, channels, bucket, prefix, tune_dir, job_name)
        records = _records(job_file)
        records["jobs"][fingerprint] = {"job_name": job_name,
                                        "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        atomic_write_json(job_file, {"latest": job_name, "jobs": records["jobs"]})
        state.record("tune", {"backend": "sagemaker", "tuning_job": job_name, "status": "InProgress"},
                     {**tune.model_dump(mode="json"), "fixed": sorted(fixed)})
        console.print(f"started tuning job {job_name}: {tune.max_jobs} trials, {tune.max_parallel} at a time, "
                      f"{tune.epochs} epoch(s) each on {sm_cfg.train_instance_type}"
                      f"{' (spot)' if sm_cfg.spot else ''}; searching {', '.join(space)}; "
                      f"objective {best_metric(tune.objective)}", markup=False, soft_wrap=True)
    if not wait:
        status = _describe(sm, job_name)["HyperParameterTuningJobStatus"]
        return {"backend": "sagemaker", "tuning_job": job_name, "status": status, "waiting": False}

    job, trials = _wait(sm, job_name, sm_cfg.poll_seconds, console, space, tune.objective)
    outputs = _summarise(sm, job, trials, space, tune_dir, tune.objective, sm_cfg)
    console.print(cost_line(outputs["cost"], f"tuning job {job_name} ({outputs['trials']} trials)"),
                  markup=False, highlight=False, soft_wrap=True)
    state.record("tune", outputs, {**tune.model_dump(mode="json"), "fixed": sorted(fixed)})
    return outputs


# ---------------------------------------------------------------- the request
def parameter_ranges(space: dict[str, Any]) -> dict[str, Any]:
    """SageMaker's ranges for the searched hyperparameters, by the entry point's names."""
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter

    ranges: dict[str, Any] = {}
    for name, rule in space.items():
        if isinstance(rule, dict):
            ranges[hyperparameter_name(name)] = ContinuousParameter(
                rule["low"], rule["high"], scaling_type="Logarithmic" if rule["log"] else "Linear")
        else:
            ranges[hyperparameter_name(name)] = CategoricalParameter([_as_string(v) for v in rule])
    return ranges


def _as_string(value: Any) -> str:
    """A hyperparameter as a SageMaker job gets it from `bincli train` (the SDK's safe_serialize:
    strings as they are, anything else as JSON, so True is "true")."""
    return value if isinstance(value, str) else json.dumps(value)


def _start(config: Config, session: Any, hp: dict[str, Any], space: dict[str, Any], channels: dict[str, str],
           bucket: str, prefix: str, tune_dir: Path, job_name: str) -> None:
    """Create the tuning job `job_name` (at most 32 characters) through the SDK's HyperparameterTuner."""
    from sagemaker.core.shapes import HyperbandStrategyConfig, HyperParameterTuningJobStrategyConfig
    from sagemaker.train.tuner import HyperparameterTuner

    from bincli.backends.sagemaker.training_job import build_trainer

    tune = config.tune

    def seeded(params: dict[str, Any], **_: Any) -> None:
        # The SDK sends random_seed only when truthy (its tuner's `if self.random_seed:`, its
        # serialiser's too): a seed of 0, SageMaker's smallest, went unsent and the search unseeded.
        params["HyperParameterTuningJobConfig"]["RandomSeed"] = tune.seed

    # On this session's clients made from now on (the SDK makes its own from the session).
    session.events.register("provide-client-params.sagemaker.CreateHyperParameterTuningJob", seeded)
    # No checkpoints for trials (module docstring): None leaves CheckpointConfig out of the definition.
    trainer, inputs = build_trainer(config, session, hp, channels, bucket, prefix, None, tune_dir, step="tune")
    # The tuner sends str(value) ("False"); `train` sends "false": the same strings as train, here.
    trainer.hyperparameters = {k: _as_string(v) for k, v in (trainer.hyperparameters or {}).items()}
    # The tuner uploads the code to s3://<bucket>/<trainer's base_job_name>/tuning-<time>/input (its
    # own key scheme, which ignores input_s3_key_prefix): keep it under the configured prefix too.
    trainer.base_job_name = join_key(prefix, "sagemaker", "code", config.sagemaker.base_job_name)
    hyperband = tune.strategy == "hyperband"
    tuner = HyperparameterTuner(
        model_trainer=trainer,
        objective_metric_name=best_metric(tune.objective),
        objective_type=OBJECTIVE_TYPES[tune.objective],
        hyperparameter_ranges=parameter_ranges(space),
        metric_definitions=metric_definitions(),
        strategy=STRATEGIES[tune.strategy],
        strategy_config=HyperParameterTuningJobStrategyConfig(hyperband_strategy_config=HyperbandStrategyConfig(
            min_resource=1, max_resource=tune.epochs)) if hyperband else None,
        max_jobs=tune.max_jobs,
        max_parallel_jobs=min(tune.max_parallel, tune.max_jobs),
        # The local pruner's counterpart: stop trials whose epochs trail the others' (Hyperband
        # stops trials itself and refuses this setting; one epoch leaves nothing to stop early).
        early_stopping_type="Auto" if tune.epochs > 1 and not hyperband else "Off",
        random_seed=tune.seed,
        tags=resource_tags(config.workdir, "tune"),
    )
    try:
        tuner.tune(inputs=inputs, job_name=job_name, wait=False)
    except Exception as exc:
        raise aws_error(exc, f"creating tuning job {job_name}") from None


# ---------------------------------------------------------------- the job
def _describe(sm: Any, job_name: str) -> dict[str, Any]:
    try:
        return sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
    except Exception as exc:
        raise aws_error(exc, f"tuning job {job_name}") from None


def _records(job_file: Path) -> dict[str, Any]:
    """The tuning jobs this workdir started: {"latest": name, "jobs": {fingerprint: {"job_name", ...}}}
    (one per settings, so searching other settings in between never loses a running job)."""
    records = read_job_record(job_file)
    jobs = records.get("jobs")
    jobs = {k: v for k, v in jobs.items() if isinstance(v, dict) and isinstance(v.get("job_name"), str)} \
        if isinstance(jobs, dict) else {}
    latest = records.get("latest")
    return {"latest": latest if isinstance(latest, str) else None, "jobs": jobs}


def _attachable(job_file: Path, fingerprint: str, sm: Any) -> str | None:
    """The tuning job started here with the same settings, unless it failed or is gone."""
    record = _records(job_file)["jobs"].get(fingerprint)
    if record is None:
        return None
    try:
        status = sm.describe_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=record["job_name"])["HyperParameterTuningJobStatus"]
    except Exception as exc:
        if is_not_found(exc):
            return None
        # Throttling, expired credentials, no network: never start a second, billed search on a guess.
        raise aws_error(exc, f"checking tuning job {record['job_name']}") from None
    return record["job_name"] if status in ATTACHABLE else None


def _stop(sm: Any, job_file: Path, console) -> dict[str, Any]:
    """Stop the tuning job this workdir started last."""
    job_name = _records(job_file)["latest"]
    if not job_name:
        raise StateError(f"no SageMaker tuning job recorded in {job_file}", hint="'bincli tune' starts one")
    status = _describe(sm, job_name)["HyperParameterTuningJobStatus"]
    if status in TERMINAL:
        console.print(f"tuning job {job_name} has already ended ({status})", markup=False, soft_wrap=True)
        return {"backend": "sagemaker", "tuning_job": job_name, "status": status}
    try:
        sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=job_name)
    except Exception as exc:
        raise aws_error(exc, f"stopping tuning job {job_name}") from None
    console.print(f"stopping tuning job {job_name}: its running trials stop, finished ones are kept; "
                  "'bincli tune' again collects the results", markup=False, soft_wrap=True)
    return {"backend": "sagemaker", "tuning_job": job_name, "status": "Stopping"}


def list_trials(sm: Any, job_name: str) -> list[dict[str, Any]]:
    """The tuning job's training jobs, oldest first."""
    trials: list[dict[str, Any]] = []
    token = None
    while True:
        kwargs = {"HyperParameterTuningJobName": job_name, "MaxResults": 100}
        if token:
            kwargs["NextToken"] = token
        try:
            page = sm.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
        except Exception as exc:
            raise aws_error(exc, f"listing the trials of tuning job {job_name}") from None
        trials += page.get("TrainingJobSummaries", [])
        token = page.get("NextToken")
        if not token:
            return sorted(trials, key=lambda t: (t["CreationTime"], t["TrainingJobName"]))


def _wait(sm: Any, job_name: str, poll_seconds: float, console, space: dict[str, Any],
          objective: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll until the job ends, showing its trials live. Ctrl-C stops waiting, not the job."""
    try:
        with _View(console, job_name, objective) as view:
            while True:
                job = _describe(sm, job_name)
                trials = list_trials(sm, job_name)
                rows = [_row(i, t, space) for i, t in enumerate(trials)]
                view.update(job["HyperParameterTuningJobStatus"], rows, _best(rows, objective))
                if job["HyperParameterTuningJobStatus"] in TERMINAL:
                    return job, trials
                time.sleep(poll_seconds)  # polling a remote API; SageMaker has no push notification here
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting; tuning job {job_name} keeps running on SageMaker",
                          hint="'bincli tune' again with the same settings attaches to it; "
                               "'bincli tune --stop' stops it") from None


class _View:
    """The live view of a tuning job on stderr: status, trial counts, the best trial so far and its
    parameters. A rich Live panel on a terminal; elsewhere (CI logs) one line per change."""

    def __init__(self, console, job_name: str, objective: str):
        self.console, self.job_name, self.objective = console, job_name, objective
        self.live: Any = None
        self.last = ""

    def __enter__(self) -> _View:
        if self.console.is_terminal and not self.console.quiet:
            from rich.live import Live

            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, status: str, rows: list[dict[str, Any]], best: dict[str, Any] | None) -> None:
        states = [r["state"] for r in rows]
        counts = (f"{states.count('complete')} completed, {states.count('running')} running, "
                  f"{states.count('fail')} failed, {states.count('pruned')} stopped")
        lead = (f"best so far: trial {best['trial']} {best_metric(self.objective)}={best['value']:.4f} "
                + " ".join(f"{k}={_show(v)}" for k, v in best["params"].items())) if best else "no trial finished yet"
        text = f"tuning job {self.job_name}: {status}; {counts}; {lead}"
        if self.live is not None:
            from rich.table import Table

            table = Table(title=f"tuning job {self.job_name}: {status}", title_justify="left", show_edge=False)
            for column in ("trial", "state", best_metric(self.objective), "params"):
                table.add_column(column)
            for r in rows[-10:]:
                table.add_row(str(r["trial"]), r["state"], "" if r["value"] is None else f"{r['value']:.4f}",
                              " ".join(f"{k}={_show(v)}" for k, v in r["params"].items()))
            table.caption, table.caption_justify = f"{counts}\n{lead}", "left"
            self.live.update(table, refresh=True)
        elif text != self.last:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        self.last = text


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------- the results
def _row(number: int, trial: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """One leaderboard row: the local backend's columns (trial, state, value, duration_s, params)."""
    metric = trial.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    start, end = trial.get("TrainingStartTime"), trial.get("TrainingEndTime")
    return {
        "trial": number,
        "state": STATES.get(trial["TrainingJobStatus"], trial["TrainingJobStatus"].lower()),
        "value": metric.get("Value"),
        "duration_s": round((end - start).total_seconds(), 1) if start and end else None,
        "params": typed_params(trial.get("TunedHyperParameters") or {}, space),
        "training_job": trial["TrainingJobName"],
        "failure": trial.get("FailureReason"),
    }


def typed_params(tuned: dict[str, str], space: dict[str, Any]) -> dict[str, Any]:
    """SageMaker's tuned values (strings, by the entry point's names) as the local tuner records
    them: train config names, floats for ranges, the list's own item for a choice."""
    params: dict[str, Any] = {}
    for name, rule in space.items():
        raw = tuned.get(hyperparameter_name(name))
        if raw is None:
            continue
        raw = raw.strip().strip('"')
        if isinstance(rule, dict):
            params[name] = float(raw)
        else:
            params[name] = next((v for v in rule if _as_string(v) == raw), raw)
    return params


def _best(rows: list[dict[str, Any]], objective: str) -> dict[str, Any] | None:
    # Stopped trials count with the score they reached: Hyperband stops trials at MaxResource and
    # stops weak ones early, and early stopping (Auto) stops trials too; SageMaker ranks them all.
    scored = [r for r in rows if r["state"] in ("complete", "pruned") and r["value"] is not None]
    if not scored:
        return None
    pick = min if OBJECTIVE_TYPES[objective] == "Minimize" else max
    return pick(scored, key=lambda r: r["value"])


def _summarise(sm: Any, job: dict[str, Any], trials: list[dict[str, Any]], space: dict[str, Any], tune_dir: Path,
               objective: str, sm_cfg: Any) -> dict[str, Any]:
    """tune-results.csv and the step's outputs (with the trials' summed cost); an error naming the
    reason (and the cost) if no trial finished."""
    rows = [_row(i, t, space) for i, t in enumerate(trials)]
    region = sm.meta.region_name
    for row in rows:  # billed seconds are only in each training job's own description
        if row["state"] in ("complete", "pruned", "fail"):
            try:
                described = sm.describe_training_job(TrainingJobName=row["training_job"])
            except Exception as exc:
                if not is_not_found(exc):
                    raise aws_error(exc, f"training job {row['training_job']}") from None
                continue
            row["cost"] = training_cost(described, region, sm_cfg)
            row["billable_s"] = row["cost"]["billable_seconds"]
    results = _write_results(tune_dir / RESULTS_FILE, rows, space)
    name, status = job["HyperParameterTuningJobName"], job["HyperParameterTuningJobStatus"]
    cost = total_cost([r["cost"] for r in rows if "cost" in r])
    best = _best(rows, objective)
    if best is None:
        reasons = sorted({r["failure"] for r in rows if r.get("failure")})
        reason = job.get("FailureReason") or "; ".join(reasons) or "no trial reported the objective"
        raise BincliError(f"tuning job {name} {status.lower()} with no finished trial ({len(rows)} tried): {reason} "
                          f"({cost_line(cost, 'its trials')})",
                          hint=f"see the trials' CloudWatch logs (/aws/sagemaker/TrainingJobs/{name}-*) "
                               f"and {results}")
    states = [r["state"] for r in rows]
    return {
        "backend": "sagemaker",
        "tuning_job": name,
        "status": status,
        "results": str(results),
        "objective": objective,
        "trials": len(rows),
        "complete": states.count("complete"),
        "pruned": states.count("pruned"),
        "failed": states.count("fail"),
        "best_trial": best["trial"],
        "best_value": best["value"],
        "best_hyperparameters": best["params"],
        "best_training_job": best["training_job"],
        "billable_seconds": cost["billable_seconds"],
        "cost": cost,
    }


def _write_results(path: Path, rows: list[dict[str, Any]], space: dict[str, Any]) -> Path:
    """trial, state, value, duration_s, one column per searched hyperparameter (the local backend's
    columns), then training_job, billable_s and cost_usd."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = list(space)
    writer.writerow(["trial", "state", "value", "duration_s", *names, "training_job", "billable_s", "cost_usd"])
    for r in rows:
        writer.writerow([r["trial"], r["state"], "" if r["value"] is None else f"{r['value']:.6f}",
                         "" if r["duration_s"] is None else r["duration_s"],
                         *(r["params"].get(n, "") for n in names), r["training_job"],
                         "" if r.get("billable_s") is None else r["billable_s"],
                         "" if (r.get("cost") or {}).get("usd") is None else r["cost"]["usd"]])
    atomic_write_text(path, buf.getvalue())
    return path
