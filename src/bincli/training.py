"""The `train` step (local backend): run the core entry point under SageMaker's contract, then report.

The entry point (`python -m bincli.core.train`, or torchrun with several processes) runs as a
child process with the same SM_* environment and `--name value` hyperparameters a SageMaker
training job gives it, so what trains here trains there. This process only watches: it streams
the child's lines into `<workdir>/train/train.log`, turns its progress and epoch lines into a
progress display, forwards Ctrl-C (the child saves a checkpoint and stops; a rerun resumes),
and at the end writes `<workdir>/report/`, packages `<workdir>/model/model.tar.gz` and records
state "train".

Workspace layout:
    <workdir>/train/config.yaml        the resolved train config (+ hyperparameters used)
    <workdir>/train/train.log          everything the entry point printed
    <workdir>/train/model/             SM_MODEL_DIR: model.pth, model_info.json
    <workdir>/train/output/            SM_OUTPUT_DATA_DIR: metrics.json, history.jsonl, PNGs
    <workdir>/train/checkpoints/       last.pt, best.pt (resume point)
    <workdir>/cache/                   pre-resized images (kept between runs)
    <workdir>/model/model.tar.gz       SageMaker's model layout (what deploy serves)
    <workdir>/report/                  metrics.json, confusion-matrix.png, learning-curves.png
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from bincli import __version__
from bincli.config import TrainConfig
from bincli.core.contract import (
    HYPERPARAMETERS,
    METRICS_FILE,
    hyperparameter_name,
    parse_epoch_line,
    parse_progress_line,
)
from bincli.core.fileio import atomic_write_text
from bincli.errors import BincliError, ConfigError, DataError, StateError
from bincli.state import State

RUN_DIR = "train"
MODEL_TAR = "model.tar.gz"
ENTRY_MODULE = "bincli.core.train"
# Config keys that are not entry-point hyperparameters (they shape the launch, not the run).
LAUNCH_KEYS = ("nproc_per_node", "device")

_ERROR_LINE = re.compile(r"^ERROR [\w.]+: (error|hint): (.*)$")  # what core/train.py's main() logs
_INTERRUPTED_LINE = re.compile(r"interrupted by signal \d+ at epoch (\d+) \(after (\d+) samples\)")
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")


class TrainingInterrupted(BincliError):
    """Ctrl-C (or SIGTERM) stopped training after a checkpoint; `bincli train` again resumes."""

    exit_code = 130


# ---------------------------------------------------------------- inputs
def hyperparameters_from(cfg: TrainConfig, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The entry point's hyperparameters ({"batch-size": 32, ...}) from the train config section,
    with `overrides` (e.g. tune's best, keyed by config or hyperparameter names) validated on top.
    Unset ones (None) are left out: a SageMaker job passes every hyperparameter as a string, and
    None would arrive as the word "null"."""
    values = cfg.model_dump()
    if overrides:
        for key, value in overrides.items():
            name = key.replace("-", "_")
            if name not in values or name in LAUNCH_KEYS:
                raise ConfigError(f"tune result: {key!r} is not a train hyperparameter "
                                  f"(expected one of {', '.join(HYPERPARAMETERS)})")
            values[name] = value
        try:
            values = TrainConfig.model_validate(values).model_dump()
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"tune result: {'.'.join(map(str, first['loc']))}: {first['msg']}, "
                              f"got {first.get('input')!r}") from None
    return {hyperparameter_name(k): v for k, v in values.items()
            if hyperparameter_name(k) in HYPERPARAMETERS and v is not None}


def tuned_hyperparameters(state: State) -> dict[str, Any]:
    outputs = state.require("tune", needed_by="train --from-tune")
    best = outputs.get("best_hyperparameters") or outputs.get("best_params")
    if not isinstance(best, dict) or not best:
        raise StateError(f"{state.path}: the 'tune' record has no best hyperparameters",
                         hint="run 'bincli tune' again, or train without --from-tune")
    return best


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def build_command(hp: Mapping[str, Any], nproc_per_node: int, extra: Mapping[str, Any],
                  python: str = sys.executable) -> list[str]:
    """argv of the training process: python -m bincli.core.train --name value ... (sorted, like
    SageMaker's toolkit), under torchrun when nproc_per_node > 1."""
    args = []
    for name, value in sorted({**hp, **extra}.items()):
        if value is not None:
            args += [f"--{name}", _cli_value(value)]
    if nproc_per_node > 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
                "-m", ENTRY_MODULE, *args]
    return [python, "-m", ENTRY_MODULE, *args]


def build_env(split: Mapping[str, Any], run_dir: Path, nproc_per_node: int,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """SageMaker's training environment, pointed at the local split and run dir."""
    env = dict(os.environ if base is None else base)
    for var in [v for v in env if v.startswith("SM_")]:
        del env[var]  # nothing leaks in from an outer job
    manifests = Path(split["manifests_dir"])
    env.update({
        "SM_CHANNEL_TRAIN": str(manifests),
        "SM_MODEL_DIR": str(run_dir / "model"),
        "SM_OUTPUT_DATA_DIR": str(run_dir / "output"),
        "SM_HOSTS": '["localhost"]',
        "SM_CURRENT_HOST": "localhost",
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "PYTHONUNBUFFERED": "1",
    })
    channels = ["train"]
    for channel in ("valid", "test"):
        if int(split.get(channel) or 0) > 0:
            env[f"SM_CHANNEL_{channel.upper()}"] = str(manifests)
            channels.append(channel)
    env["SM_CHANNELS"] = json.dumps(channels)
    if nproc_per_node > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc_per_node))
    return env


# ---------------------------------------------------------------- progress
class TrainProgress:
    """Turns the child's lines into output for people: a rich progress bar per epoch (img/s, loss,
    accuracy) on a terminal, one plain line per epoch otherwise. Other lines (logs) pass through."""

    def __init__(self, console, epochs: int, live: bool | None = None):
        self.console, self.epochs = console, epochs
        self.live = console.is_terminal if live is None else live
        self.epoch_rows: list[dict[str, float]] = []
        self.errors: list[str] = []
        self.hints: list[str] = []
        self.tail: deque[str] = deque(maxlen=5)  # last log lines, for a crash without an error line
        self.interrupted: tuple[int, int] | None = None
        self._progress = None
        self._task = None
        self._task_epoch = None

    def __enter__(self) -> TrainProgress:
        if self.live and not self.console.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[img_s]:>6.1f} img/s  loss {task.fields[loss]:.4f}  "
                           "acc {task.fields[acc]:.3f}"),
                TimeRemainingColumn(), console=self.console, transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()

    def bar(self):
        """The live bar as a renderable (None when not live)."""
        return self._progress.get_renderable() if self._progress is not None else None

    def _print(self, text: str, style: str | None = None) -> None:
        self.console.print(text, markup=False, highlight=False, style=style, soft_wrap=True)

    def line(self, raw: str) -> None:
        text = raw.rstrip("\n")
        if not text.strip():
            return
        prog = parse_progress_line(text)
        if prog is not None:
            if self._progress is not None:
                self._update_bar(prog)
            return
        row = parse_epoch_line(text)
        if row is not None:
            self.epoch_rows.append(row)
            if self._progress is not None and self._task is not None:
                self._progress.remove_task(self._task)  # the summary line replaces the finished bar
                self._task = self._task_epoch = None
            self._print(self.epoch_summary(row, self.epochs))
            return
        text = _LOG_PREFIX.sub("", text)
        self.tail.append(text.strip())
        m = _ERROR_LINE.search(text)
        if m:
            (self.errors if m.group(1) == "error" else self.hints).append(m.group(2))
        m = _INTERRUPTED_LINE.search(text)
        if m:
            self.interrupted = (int(m.group(1)), int(m.group(2)))
        self._print(text, style="dim" if " INFO " in f" {text} " else None)

    def _update_bar(self, prog: dict[str, float]) -> None:
        fields = {"epoch": int(prog["epoch"]), "epochs": self.epochs, "img_s": prog["img_s"],
                  "loss": prog["loss"], "acc": prog["acc"]}
        if self._task_epoch != prog["epoch"]:
            self._task = self._progress.add_task("train", total=int(prog["steps"]), **fields)
            self._task_epoch = prog["epoch"]
        self._progress.update(self._task, completed=int(prog["step"]), total=int(prog["steps"]), **fields)

    @staticmethod
    def epoch_summary(row: Mapping[str, float], epochs: int) -> str:
        parts = [f"epoch {int(row['epoch'])}/{epochs}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"]
        if "valid_loss" in row:
            parts.append(f"valid loss {row['valid_loss']:.4f} acc {row['valid_acc']:.3f} "
                         f"rmse {row.get('valid_rmse', float('nan')):.3f} mae {row.get('valid_mae', float('nan')):.3f}")
        parts.append(f"lr {row.get('lr', float('nan')):.2e}  {row.get('train_img_s', 0):.1f} img/s")
        return "  |  ".join(parts)


# ---------------------------------------------------------------- the child process
def _stream(proc: subprocess.Popen, log: TextIO, on_line: Callable[[str], None]) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        log.write(line)
        log.flush()
        on_line(line)


def run_child(cmd: list[str], env: Mapping[str, str], log_path: Path, on_line: Callable[[str], None],
              grace_s: float = 60.0) -> tuple[int, bool]:
    """Run the training process, stream its output; returns (exit code, interrupted).

    The child runs in its own session, so a terminal's Ctrl-C reaches only this process, which
    forwards SIGINT (or SIGTERM) to the child once: the child finishes its step, saves a
    checkpoint and exits. A second signal kills its whole process group."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} bincli {__version__}: {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, start_new_session=True, errors="replace")
        signals: list[int] = []

        def forward(signum: int, frame: Any) -> None:
            signals.append(signum)
            try:
                if len(signals) == 1:
                    proc.send_signal(signum)
                else:
                    os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, forward)
        try:
            _stream(proc, log, on_line)
            code = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if proc.poll() is None:  # this process failed while the child runs: stop it, then make sure
                proc.terminate()
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    return code, bool(signals)


# ---------------------------------------------------------------- the step
def run_train(cfg: TrainConfig, workdir: Path, *, from_tune: bool = False, fresh: bool = False,
              console=None, live: bool | None = None) -> dict[str, Any]:
    """The whole step. Returns the result (also recorded in state as 'train')."""
    from bincli.console import err

    console = console or err
    workdir = Path(workdir)
    state = State(workdir)
    split = state.require("split", needed_by="train")
    for key in ("manifests_dir", "data_root", "classes"):
        if key not in split:
            raise StateError(f"{state.path}: the 'split' record has no {key!r}", hint="run 'bincli split' again")
    if not (Path(split["manifests_dir"]) / "train.csv").is_file():
        raise DataError(f"{split['manifests_dir']}/train.csv is missing", hint="run 'bincli split' again")
    hp = hyperparameters_from(cfg, tuned_hyperparameters(state) if from_tune else None)
    hp["classes"] = split["classes"]
    run_dir = (workdir / RUN_DIR).resolve()
    ckpt_dir = run_dir / "checkpoints"
    if fresh:
        for sub in ("checkpoints", "model", "output"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_snapshot(run_dir / "config.yaml", cfg, hp, from_tune)
    extra = {
        "data-root": split["data_root"], "checkpoint-dir": str(ckpt_dir),
        "cache-dir": str((workdir / "cache").resolve()), "device": cfg.device, "log-interval": 1,
    }
    cmd = build_command(hp, cfg.nproc_per_node, extra)
    env = build_env(split, run_dir, cfg.nproc_per_node)
    for stale in (run_dir / "output" / METRICS_FILE,):
        stale.unlink(missing_ok=True)  # a failed run must not report the previous run's metrics
    log_path = run_dir / "train.log"
    console.print(f"training {hp['model']} on {split['train']} images ({split['classes']}), "
                  f"{hp['epochs']} epochs, {cfg.nproc_per_node} process(es); log: {log_path}",
                  markup=False, highlight=False, soft_wrap=True)
    with TrainProgress(console, int(hp["epochs"]), live) as progress:
        code, interrupted = run_child(cmd, env, log_path, progress.line)
    if code != 0:
        if interrupted or progress.interrupted:
            where = f" at epoch {progress.interrupted[0]}" if progress.interrupted else ""
            raise TrainingInterrupted(f"training interrupted{where}; the checkpoint is in {ckpt_dir}",
                                      hint="run 'bincli train' again to resume (same settings), or --fresh")
        if progress.errors:
            reason = progress.errors[-1]
        elif code < 0:
            reason = f"the training process was killed by signal {-code}" + (
                " (out of memory? try a smaller --batch-size or fewer --workers)" if -code == signal.SIGKILL else "")
        else:
            reason = f"exit code {code}" + (f": {progress.tail[-1]}" if progress.tail else "")
        hint = f"full log: {log_path}"
        if any("--resume never" in h for h in progress.hints):  # the checkpoint cannot be resumed
            hint = "rerun with --fresh to start over" + (
                ", or restore the earlier settings" if "other settings" in reason else "")
        err_cls = DataError if code == 2 else BincliError
        raise err_cls(f"training failed: {reason}", hint=hint)
    return finish_training(state, cfg, hp, run_dir, workdir, split, log_path=log_path)


def _write_snapshot(path: Path, cfg: TrainConfig, hp: Mapping[str, Any], from_tune: bool) -> None:
    import yaml

    body = yaml.safe_dump({"train": cfg.model_dump(mode="json"), "hyperparameters": dict(hp),
                           "from_tune": from_tune}, sort_keys=False)
    atomic_write_text(path, f"# bincli {__version__}: the resolved train config of this run\n{body}")


def finish_training(state: State, cfg: TrainConfig, hp: Mapping[str, Any], run_dir: Path, workdir: Path,
                    split: Mapping[str, Any], publish: Callable[[Path], dict[str, Any]] | None = None,
                    log_path: Path | None = None) -> dict[str, Any]:
    """From a finished run dir (model/ and output/ as a training job leaves them): the report, the
    packaged model.tar.gz and the 'train' state record. Shared by both backends; `publish` (the
    sagemaker backend) puts the packaged model where deploy needs it and returns outputs to record."""
    from bincli.bundle import package_model
    from bincli.core.metrics import summary
    from bincli.report import write_report

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
        "hyperparameters": job.get("hyperparameters"),
    }
    report_dir = (workdir / "report").resolve()
    paths = write_report(report, report_dir)
    tar = package_model(run_dir / "model", (workdir / "model").resolve() / MODEL_TAR)
    outputs = {
        "model": str(Path(tar).resolve()),
        "model_dir": str(run_dir / "model"),
        "report_dir": str(report_dir),
        "metrics": paths["metrics"],
        "split": on,
        **{k: report[k] for k in ("accuracy", "log_loss", "rmse", "mae")},
        "baseline_accuracy": (report["baseline"] or {}).get("accuracy"),
        "best_epoch": job["best_epoch"],
        "epochs_run": job["epochs_run"],
        "stop_reason": job.get("stop_reason"),
        "classes": job["classes"],
        "image_size": hp["image-size"],
        "hyperparameters": dict(hp),
        "checkpoint_dir": str(run_dir / "checkpoints"),
        "log": str(log_path) if log_path else None,
        "figures": {k: v for k, v in paths.items() if k != "metrics"},
    }
    if publish is not None:
        outputs.update(publish(Path(tar)))
    state.record("train", outputs, cfg.model_dump(mode="json"))
    return {**outputs, "report": report}
