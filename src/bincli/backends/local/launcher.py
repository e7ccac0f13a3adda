"""The local backend's training: the core entry point as a child process, under SageMaker's contract.

The entry point (`python -m bincli.core.train`, or torchrun with several processes) runs with the
same SM_* environment and `--name value` hyperparameters a SageMaker training job gives it, so
what trains here trains there. This process only watches: it streams the child's lines into
`<run>/train.log`, shows its progress and epoch lines (bincli.progress.TrainProgress), its
warnings and errors (its INFO lines only with -v), and forwards Ctrl-C (the child saves a
checkpoint and stops; the same command again resumes).

Run folder `<run>` = <workdir>/runs/<name>/, chosen by the train step (steps/runs.py):
    <run>/train.log          everything the entry point printed
    <run>/model/             SM_MODEL_DIR: model.pth, model_info.json
    <run>/output/            SM_OUTPUT_DATA_DIR: metrics.json, history.jsonl, PNGs
    <run>/checkpoints/       last.pt, best.pt (resume point)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from bincli import __version__
from bincli.config import TrainConfig
from bincli.core.contract import METRICS_FILE
from bincli.errors import BincliError, ConfigError, DataError, Interrupted
from bincli.layout import CACHE_DIR, RUN_PREFIX, RUNS_DIR, under
from bincli.progress import TrainProgress

ENTRY_MODULE = "bincli.core.train"
# A log line of the entry point: "2026-01-01 10:00:00,123 INFO bincli.train: message".
_CHILD_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) [\w.]+: (.*)$")
# INFO lines a user sees without -v: where a rerun picks up.
_SHOWN_INFO = ("resuming from ", "nothing to resume")


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


# ---------------------------------------------------------------- a training run
def require_device(device: str) -> None:
    """--device cuda where torch sees no GPU: one line now, not a ValueError from the child later."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("train.device: cuda, but torch sees no CUDA GPU on this machine",
                          hint="--device auto (uses a GPU where there is one) or --device cpu")


def show_child_line(progress: TrainProgress, verbose: bool) -> Callable[[str], None]:
    """on_line for run_child: the entry point's INFO lines (hyperparameters, cache paths) only with
    -v (train.log has them all); its 'error:'/'hint:' lines are kept for the one error bincli
    raises at the end instead of being printed twice."""

    def on_line(raw: str) -> None:
        m = _CHILD_LOG.match(raw.strip())
        if m is None or verbose:
            progress.line(raw)
            return
        level, message = m.groups()
        if level in ("DEBUG", "INFO") and not message.startswith(_SHOWN_INFO):
            progress.tail.append(message)
            return
        if level == "ERROR" and message.startswith(("error: ", "hint: ")):
            kind, text = message.split(": ", 1)
            (progress.errors if kind == "error" else progress.hints).append(text)
            progress.tail.append(message)
            return
        progress.line(raw)

    return on_line


def train_locally(cfg: TrainConfig, workdir: Path, hp: Mapping[str, Any], split: Mapping[str, Any], *,
                  from_tune: bool, fresh: bool, console, live: bool | None,
                  run_dir: Path | None = None) -> tuple[Path, Path]:
    """Run the entry point to the end (or resume it) in `run_dir` (the train step's choice of
    <workdir>/runs/<run>/); returns (run dir, log path)."""
    require_device(cfg.device)
    run_dir = run_dir or under(workdir, RUNS_DIR, RUN_PREFIX)
    ckpt_dir = run_dir / "checkpoints"
    if fresh:
        for sub in ("checkpoints", "model", "output"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "data-root": split["data_root"], "checkpoint-dir": str(ckpt_dir),
        "cache-dir": str(under(workdir, CACHE_DIR)), "device": cfg.device, "log-interval": 1,
    }
    cmd = build_command(hp, cfg.nproc_per_node, extra)
    env = build_env(split, run_dir, cfg.nproc_per_node)
    for stale in (run_dir / "output" / METRICS_FILE,):
        stale.unlink(missing_ok=True)  # a failed run must not report the previous run's metrics
    log_path = run_dir / "train.log"
    console.print(f"run {run_dir.name}: training {hp['model']} on {split['train']} images ({split['classes']}), "
                  f"{hp['epochs']} epochs, {cfg.nproc_per_node} process(es); log: {log_path}",
                  markup=False, highlight=False, soft_wrap=True)
    verbose = logging.getLogger("bincli").isEnabledFor(logging.DEBUG)  # -v
    with TrainProgress(console, int(hp["epochs"]), live) as progress:
        code, interrupted = run_child(cmd, env, log_path, show_child_line(progress, verbose))
    if code != 0:
        if interrupted or progress.interrupted:
            where = f" at epoch {progress.interrupted[0]}" if progress.interrupted else ""
            raise Interrupted(f"training interrupted{where}; run {run_dir.name} keeps its checkpoint",
                              hint=f"run 'bincli train' again to resume (the same command, or --resume "
                                   f"{run_dir.name}); --fresh starts the run over")
        if progress.errors:
            reason = progress.errors[-1]
        elif code < 0:
            reason = f"the training process was killed by signal {-code}" + (
                " (out of memory? try a smaller --batch-size or fewer --workers)" if -code == signal.SIGKILL else "")
        else:
            reason = f"exit code {code}" + (f": {progress.tail[-1]}" if progress.tail else "")
        hint = f"full log: {log_path}"
        reason = _public_reason(reason, run_dir.name)
        if reason.startswith(f"run {run_dir.name}'s checkpoint"):  # it cannot be resumed
            hint = (f"--fresh starts run {run_dir.name} over; 'bincli train' without --run-name/--resume "
                    "starts a new run for new settings")
        err_cls = DataError if code == 2 else BincliError
        raise err_cls(f"training failed: {reason}", hint=hint)
    return run_dir, log_path



def _public_reason(reason: str, run: str) -> str:
    """The entry point's checkpoint refusal in the words of `bincli train`: no checkpoint paths,
    fingerprints or entry-point flags."""
    settings = re.search(r"was made with other settings \((.*)\); only ", reason)
    if settings:
        return f"run {run}'s checkpoint was made with other settings ({settings.group(1)})"
    if "was trained on other data" in reason:
        return f"run {run}'s checkpoint was trained on another split"
    return reason
