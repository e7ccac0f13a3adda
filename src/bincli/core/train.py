"""The training entry point: `python -m bincli.core.train --epochs 3 --lr 0.001 --batch-size 32 ...`

The same script is SageMaker's training entry point (v3 ModelTrainer driver or the
sagemaker-training toolkit), the local backend's training process, and each torchrun worker.

Inputs (flags win over the environment):
  --train/--valid/--test   channel dirs; default SM_CHANNEL_TRAIN / SM_CHANNEL_VALID / SM_CHANNEL_TEST
  --data-root              image paths in the manifests resolve against it (default: the channel dir)
  --model-dir              default SM_MODEL_DIR, else ./model: model.pth + model_info.json
  --output-dir             default SM_OUTPUT_DATA_DIR, else ./output: metrics.json, history.jsonl, PNGs
  --checkpoint-dir         default <model-dir>/../checkpoints (= /opt/ml/checkpoints on SageMaker)
Output: one line per epoch on stdout in the format of core/contract.py (`epoch=3 train_loss=...`),
which SageMaker's metric_definitions and the tuner parse, each followed by the best-so-far line
(`best_valid_loss=... best_valid_acc=...`: both tuners score a trial by its last one);
`progress ...` lines within an epoch.

Resume is automatic: with last.pt in the checkpoint dir the run continues where it stopped
(after SIGINT/SIGTERM, even mid-epoch), provided the hyperparameters that shape the run are the
same; only epochs, batch size, workers, patience and the operational flags may change.
Exit codes: 0 done, 1 training failed, 2 bad input data or arguments, 130/143 interrupted (SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .classes import ClassSpec
from .contract import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    CONFUSION_PNG,
    COVERAGE_PNG,
    CURVES_PNG,
    HISTORY_FILE,
    HYPERPARAMETERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    METRICS_FILE,
    MODEL_INFO_FILE,
    RELIABILITY_PNG,
    WEIGHTS_CHANNEL,
    WEIGHTS_FILE,
    format_best_line,
    format_epoch_line,
    format_progress_line,
)
from .counting import fit_temperature, softmax
from .data import (
    CountDataset,
    InputDataError,
    ShardSampler,
    TrainSampler,
    build_loader,
    fingerprint,
    load_channel,
    open_cache,
)
from .engine import (
    CheckpointError,
    EarlyStopping,
    StopSignal,
    TrainError,
    WarmupSchedule,
    build_criterion,
    build_optimizer,
    choose_amp_dtype,
    cpu_state_dict,
    evaluate,
    load_checkpoint,
    predict_logits,
    rng_state,
    save_checkpoint,
    set_rng_state,
    train_one_epoch,
    unwrap,
)
from .fileio import atomic_open, atomic_write_json, atomic_write_text, sweep_temp_files
from .hyperparams import ENTRY_PARAMS, PARAMS_BY_NAME, RESUME_LOCKED, Param
from .metrics import SUMMARY, baseline_metrics, compute_metrics, summary
from .model import build_model
from .plots import write_confusion_png, write_coverage_png, write_curves_png, write_reliability_png
from .presets import eval_transform, train_transform

log = logging.getLogger("bincli.train")

# The epoch row's valid_* columns (contract.EPOCH_METRICS) from evaluate()'s metric names.
VALID_COLUMNS = {"valid_loss": "log_loss", "valid_acc": "accuracy", "valid_rmse": "rmse", "valid_mae": "mae"}


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a checkpoint was saved; running again resumes."""

    def __init__(self, signum: int, epoch: int, sample: int, checkpoint: Path):
        super().__init__(f"interrupted by signal {signum} at epoch {epoch} (after {sample} samples); "
                         f"checkpoint {checkpoint}; run again to resume")
        self.signum, self.epoch, self.sample, self.checkpoint = signum, epoch, sample, checkpoint


# ---------------------------------------------------------------- arguments
def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().strip('"').lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: hyperparameter help lines state theirs already (Param.describe)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


def _add_param(group: argparse._ArgumentGroup, p: Param) -> None:
    """One declared hyperparameter as a `--name value` flag (booleans also as a bare flag)."""
    kw: dict[str, Any] = {"default": p.default, "help": p.describe().replace("%", "%%")}
    if p.type is bool:
        kw.update(type=str2bool, nargs="?", const=True)
    else:
        kw["type"] = str if p.type is Path else p.type
    if p.choices:
        kw["choices"] = list(p.choices)
    group.add_argument(f"--{p.flag}", **kw)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Every flag, with its default. The hyperparameters are those declared in hyperparams.py."""
    p = argparse.ArgumentParser(description="bincli: fine-tune a ResNet to count items in bin photos.",
                                add_help=add_help, formatter_class=_HelpFormatter)
    hp = p.add_argument_group("hyperparameters (SageMaker passes them as --name value)")
    for param in ENTRY_PARAMS:
        _add_param(hp, param)
    # A training job gets the weights file as an input channel (a dir holding it), not a path.
    p.set_defaults(weights_file=_env(f"SM_CHANNEL_{WEIGHTS_CHANNEL.upper()}"))

    io_ = p.add_argument_group("data and outputs (defaults from SageMaker's SM_* variables)")
    io_.add_argument("--train", default=_env("SM_CHANNEL_TRAIN"), help="train channel dir [SM_CHANNEL_TRAIN]")
    io_.add_argument("--valid", default=_env("SM_CHANNEL_VALID"), help="valid channel dir [SM_CHANNEL_VALID]")
    io_.add_argument("--test", default=_env("SM_CHANNEL_TEST"), help="test channel dir [SM_CHANNEL_TEST]")
    io_.add_argument("--data-root", default=None, help="resolve manifest image paths against this dir")
    io_.add_argument("--model-dir", default=_env("SM_MODEL_DIR", "model"), help="[SM_MODEL_DIR]")
    io_.add_argument("--output-dir", default=_env("SM_OUTPUT_DATA_DIR", "output"), help="[SM_OUTPUT_DATA_DIR]")
    io_.add_argument("--checkpoint-dir", default=None, help="default: <model-dir>/../checkpoints")
    # A tuning job's trials all get the same CheckpointConfig: each keeps its own sub-folder, so
    # no trial resumes another's checkpoint (a spot restart of the same trial still resumes its own).
    io_.add_argument("--checkpoint-per-job", type=str2bool, nargs="?", const=True, default=False,
                     help="checkpoints in <checkpoint-dir>/$TRAINING_JOB_NAME (set by SageMaker)")
    io_.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "bincli-cache"))

    run = p.add_argument_group("run")
    run.add_argument("--resume", default="auto", choices=["auto", "never"],
                     help="auto: continue from <checkpoint-dir>/last.pt if there; never: start over")
    run.add_argument("--eval-only", action="store_true", help="evaluate the checkpoint's best model, no training")
    _add_param(run, PARAMS_BY_NAME["device"])  # a launch key of the config, a run flag here
    run.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="mixed precision (auto: on GPU)")
    run.add_argument("--channels-last", type=str2bool, nargs="?", const=True, default=True)
    run.add_argument("--log-interval", type=float, default=30.0, help="seconds between progress lines (0: every step)")
    run.add_argument("--collective-timeout", type=float,
                     default=float(_env("BINCLI_COLLECTIVE_TIMEOUT", str(D.COLLECTIVE_TIMEOUT_S))),
                     help="seconds a rank waits for the others before the job fails (a hung or lost host) "
                          "[BINCLI_COLLECTIVE_TIMEOUT]")
    return p


def hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    """The hyperparameter values of a run, by their contract names ("batch-size": 32)."""
    return {name: getattr(args, name.replace("-", "_")) for name in HYPERPARAMETERS}


# ---------------------------------------------------------------- helpers
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _amp_dtype(args: argparse.Namespace, device: torch.device) -> torch.dtype | None:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_amp_dtype(args.amp, device.type, capability)


def weights_file(value: str | None) -> Path | None:
    """--weights-file as a file: a dir (the weights channel) must hold exactly that one file."""
    if not value:
        return None
    path = Path(value)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        if len(files) != 1:
            raise InputDataError(f"--weights-file {path}: expected one weights file in that dir "
                                 f"(the {WEIGHTS_CHANNEL!r} channel), found {len(files)}")
        return files[0]
    return path


def _weights_checksum(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _locked(args: dict[str, Any]) -> dict[str, Any]:
    out = {k: args.get(k, PARAMS_BY_NAME[k].default) for k in RESUME_LOCKED}  # a key newer than the checkpoint
    out["classes"] = str(ClassSpec.parse(out["classes"])) if out["classes"] else None
    out["lr"], out["warmup_epochs"] = float(out["lr"]), float(out["warmup_epochs"])
    return out


def _check_resume(ckpt: dict[str, Any], args: argparse.Namespace, data_fp: str, path: Path) -> None:
    saved, now = _locked(ckpt.get("args", {})), _locked(vars(args))
    changed = [f"--{k.replace('_', '-')} {saved[k]!r} -> {now[k]!r}" for k in RESUME_LOCKED if saved[k] != now[k]]
    if changed:
        raise CheckpointError(f"{path} was made with other settings ({'; '.join(changed)}); only epochs, "
                              f"batch-size, workers, patience and cache may change on resume")
    if ckpt.get("data") and ckpt["data"] != data_fp:
        raise CheckpointError(f"{path} was trained on other data (train set fingerprint {ckpt['data']} != "
                              f"{data_fp})")


class _ProgressPrinter:
    """Prints `progress ...` lines on the main rank, at most one per `interval` seconds (and the last step)."""

    def __init__(self, epoch: int, steps: int, interval: float, enabled: bool):
        self.epoch, self.steps, self.interval, self.enabled = epoch, steps, interval, enabled
        self.last = time.monotonic()

    def __call__(self, step: int, running: Callable[[], dict[str, float]]) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last >= self.interval or step == self.steps):
            self.last = now
            r = running()
            print(format_progress_line(self.epoch, step, self.steps, r["loss"], r["acc"], r["img_s"]), flush=True)


# ---------------------------------------------------------------- the parts of a run
class Dirs(NamedTuple):
    """Where a run writes: the model dir, the output dir and the checkpoint dir."""

    model: Path
    output: Path
    checkpoints: Path

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Dirs:
        model_dir = Path(args.model_dir)
        ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else model_dir.resolve().parent / "checkpoints"
        if getattr(args, "checkpoint_per_job", False):
            job = os.environ.get("TRAINING_JOB_NAME", "")
            if not job or "/" in job or job.startswith("."):
                raise InputDataError(f"--checkpoint-per-job needs TRAINING_JOB_NAME (a SageMaker job name), "
                                     f"got {job!r}")
            ckpt_dir = ckpt_dir / job
        return cls(model_dir, Path(args.output_dir), ckpt_dir)


@dataclass
class Data:
    """The data sets of a run; valid and test are empty when their channel is not given."""

    spec: ClassSpec
    train_set: CountDataset
    valid_set: CountDataset
    test_set: CountDataset
    train_sampler: TrainSampler
    fingerprint: str  # of the train set: a resumed run must see the same data


@dataclass
class Training:
    """What trains the model: built from the arguments, its states restored on resume."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: WarmupSchedule
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None


@dataclass
class Progress:
    """Where the run stands: saved in every checkpoint and restored on resume."""

    stopper: EarlyStopping
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 1
    start_sample: int = 0  # samples of start_epoch the whole job consumed before an interruption
    carry: dict[str, float] | None = None  # that epoch's partial sums, this rank's share
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    finished: bool = False
    stop_reason: str | None = None


def check_args(args: argparse.Namespace) -> ClassSpec:
    """The class spec; InputDataError (exit 2) for arguments no run can start with."""
    try:
        spec = ClassSpec.parse(args.classes)
    except ValueError as exc:
        raise InputDataError(f"--classes: {exc}") from None
    if not args.train:
        raise InputDataError("no train channel: pass --train DIR or set SM_CHANNEL_TRAIN")
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            raise InputDataError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return spec


def sweep_leftovers(dirs: Dirs) -> None:
    """Remove temp files that a killed run's atomic writes left (SIGKILL skips their cleanup).
    Main rank, before anything is written: it is the only writer of these files."""
    written = {dirs.checkpoints: (CHECKPOINT_LAST, CHECKPOINT_BEST), dirs.model: (WEIGHTS_FILE, MODEL_INFO_FILE),
               dirs.output: (METRICS_FILE, HISTORY_FILE, CURVES_PNG, CONFUSION_PNG, RELIABILITY_PNG,
                            COVERAGE_PNG)}
    for directory, names in written.items():
        for path in sweep_temp_files(directory, names):
            log.info("removed %s, left by an earlier run that was killed", path)


def log_start(args: argparse.Namespace, ctx: D.DistContext) -> None:
    log.info("hyperparameters: %s", json.dumps(hyperparameters(args), default=str))
    hosts = json.loads(os.environ.get("SM_HOSTS", "[]") or "[]")
    if len(hosts) > 1 and not ctx.distributed:
        log.warning("SM_HOSTS lists %d hosts but this process was not launched by torchrun: "
                    "each host trains on its own", len(hosts))


def _pin(ctx: D.DistContext) -> bool:
    return ctx.device.type == "cuda"


def load_data(args: argparse.Namespace, spec: ClassSpec, ctx: D.DistContext) -> Data:
    train_samples = load_channel(args.train, "train", spec, args.data_root)
    valid_samples = load_channel(args.valid, "valid", spec, args.data_root) if args.valid else []
    test_samples = load_channel(args.test, "test", spec, args.data_root) if args.test else []
    size = args.image_size
    cache_dir = args.cache_dir if args.cache else None
    train_set = CountDataset(train_samples, size, train_transform(size), open_cache(cache_dir, train_samples, size))
    eval_tf = eval_transform(size)
    valid_set = CountDataset(valid_samples, size, eval_tf, open_cache(cache_dir, valid_samples, size))
    test_set = CountDataset(test_samples, size, eval_tf, open_cache(cache_dir, test_samples, size))
    if ctx.is_main:
        log.info("data: train %d, valid %d, test %d images; classes %s; %d process(es); device %s",
                 len(train_set), len(valid_set), len(test_set), spec, ctx.world_size, ctx.device)
        if not valid_samples:
            log.warning("no valid channel: no early stopping, and the last epoch's model is kept")
    return Data(spec, train_set, valid_set, test_set, TrainSampler(len(train_set), ctx.rank, ctx.world_size, args.seed),
                fingerprint(train_samples, files=False))


def eval_loader(ds: CountDataset, args: argparse.Namespace, ctx: D.DistContext):
    return build_loader(ds, args.batch_size, ShardSampler(len(ds), ctx.rank, ctx.world_size), args.workers,
                        pin_memory=_pin(ctx))


def build_training(args: argparse.Namespace, spec: ClassSpec, ctx: D.DistContext) -> Training:
    """Model, loss, optimizer, schedule and AMP scaler (not yet wrapped in DDP)."""
    model = build_model(args.model, spec.num_classes, args.pretrained, weights_file(args.weights_file), args.freeze)
    if args.weights_file and not args.pretrained and ctx.is_main:
        log.warning("--weights-file is ignored without --pretrained")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(ctx.device, memory_format=fmt)
    if ctx.distributed:  # the same initial weights everywhere, then each rank its own augmentation stream
        _seed_everything(args.seed + 1_000_003 * ctx.rank)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimizer = build_optimizer(args.optimizer, model, args.lr, args.weight_decay)
    amp_dtype = _amp_dtype(args, ctx.device)
    return Training(
        model=model, criterion=build_criterion(args.loss, spec.counts, args.label_smoothing), optimizer=optimizer,
        schedule=WarmupSchedule(optimizer, args.scheduler, args.epochs, args.warmup_epochs),
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None, amp_dtype=amp_dtype)


# ---------------------------------------------------------------- checkpoints and resume
@dataclass
class Checkpoints:
    """<checkpoint-dir>/last.pt (and best.pt): a plain dict of the run's state, saved by the main rank."""

    directory: Path
    args: argparse.Namespace
    ctx: D.DistContext
    data: Data

    @property
    def last(self) -> Path:
        return self.directory / CHECKPOINT_LAST

    def save(self, t: Training, p: Progress, epoch: int, next_: dict[str, int], is_best: bool,
             carry: dict[str, float] | None = None) -> None:
        """Call on every rank (each adds its RNG state); next_ is where a resumed run starts."""
        rng_ranks = D.gather_objects(self.ctx, rng_state()) if self.ctx.distributed else []
        if self.ctx.is_main:
            save_checkpoint({
                "model": cpu_state_dict(t.model), "optimizer": t.optimizer.state_dict(),
                "scaler": t.scaler.state_dict() if t.scaler is not None else None,
                "schedule": t.schedule.state_dict(),
                "rng": rng_state(), "rng_ranks": rng_ranks, "epoch": epoch, "next": next_, "carry": carry,
                "history": p.history,
                "best_loss": p.stopper.best, "bad_epochs": p.stopper.bad_epochs, "best_epoch": p.best_epoch,
                "finished": p.finished, "stop_reason": p.stop_reason, "args": _plain(vars(self.args)),
                "hyperparameters": _plain(hyperparameters(self.args)), "classes": str(self.data.spec),
                "data": self.data.fingerprint,
            }, self.directory, is_best)
        D.barrier(self.ctx)


def resume(ckpts: Checkpoints, t: Training) -> Progress:
    """Load last.pt into `t` and return where the run stands (a fresh Progress without one)."""
    args, ctx = ckpts.args, ckpts.ctx
    buf = D.broadcast_file(ctx, ckpts.last) if args.resume == "auto" else None
    if buf is None:
        if args.eval_only:
            raise TrainError(f"--eval-only needs a checkpoint: {ckpts.last} does not exist")
        return Progress(EarlyStopping(args.patience))
    ckpt = load_checkpoint(buf)
    _check_resume(ckpt, args, ckpts.data.fingerprint, ckpts.last)
    p = _restore(ckpt, args, ctx, t)
    best_buf = D.broadcast_file(ctx, ckpts.directory / CHECKPOINT_BEST)
    p.best_state = load_checkpoint(best_buf)["model"] if best_buf is not None else None
    if ctx.is_main:
        if args.eval_only:
            log.info("evaluating the best model (epoch %d) of %s", p.best_epoch, ckpts.directory)
        elif p.finished:
            log.info("nothing to resume: this run finished at epoch %d (%s); writing the model from "
                     "its best epoch (%d). To train it from scratch: bincli train --fresh",
                     ckpt["epoch"], p.stop_reason, p.best_epoch)
        else:
            where = f" after {p.start_sample} samples" if p.start_sample else ""
            log.info("resuming from %s at epoch %d%s", ckpts.last, p.start_epoch, where)
    if args.eval_only:
        p.finished = True
    return p


def _restore(ckpt: dict[str, Any], args: argparse.Namespace, ctx: D.DistContext, t: Training) -> Progress:
    unwrap(t.model).load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    if t.scaler is not None and ckpt.get("scaler"):
        t.scaler.load_state_dict(ckpt["scaler"])
    carry = ckpt.get("carry")
    if carry:  # job-wide sums: each rank adds its share, the epoch's all-reduce adds them up again
        carry = {k: (v if k == "seconds" else v / ctx.world_size) for k, v in carry.items()}
    p = Progress(EarlyStopping(args.patience, ckpt.get("best_loss", float("inf")), ckpt.get("bad_epochs", 0)),
                 history=list(ckpt.get("history", [])), start_epoch=ckpt["next"]["epoch"],
                 start_sample=ckpt["next"]["sample"], carry=carry, best_epoch=ckpt.get("best_epoch", 0),
                 finished=ckpt.get("finished", False), stop_reason=ckpt.get("stop_reason"))
    ranks = ckpt.get("rng_ranks") or []
    set_rng_state(ranks[ctx.rank] if len(ranks) == ctx.world_size else ckpt["rng"])
    if len(ranks) != ctx.world_size and ctx.rank:  # another world size than before: fresh streams
        _seed_everything(args.seed + 1_000_003 * ctx.rank + 7919 * p.start_epoch)
    if p.finished and p.stop_reason == "completed" and args.epochs > ckpt["epoch"]:
        p.finished = False
        if ctx.is_main:
            log.info("extending a finished run from %d to %d epochs", ckpt["epoch"], args.epochs)
    return p


# ---------------------------------------------------------------- the epoch loop
def train_epochs(args: argparse.Namespace, ctx: D.DistContext, t: Training, data: Data, p: Progress,
                 ckpts: Checkpoints, valid_loader, on_epoch_end) -> None:
    """Epochs from where `p` stands to --epochs, early stopping, the hook's stop, or a signal
    (then RunInterrupted, after a checkpoint)."""
    if p.finished or p.start_epoch > args.epochs:
        return
    full = -(-len(data.train_set) // ctx.world_size)  # samples per rank in a whole epoch
    drop_last = full >= args.batch_size  # a last batch of one would break BatchNorm
    steps = full // args.batch_size if drop_last else 1
    loader = build_loader(data.train_set, args.batch_size, data.train_sampler, args.workers, drop_last=drop_last,
                          pin_memory=_pin(ctx))
    if ctx.distributed:
        check_shards(ctx, data, p.start_epoch, p.start_sample)
    with StopSignal() as stop:
        for epoch in range(p.start_epoch, args.epochs + 1):
            stats = _train_epoch(epoch, args, ctx, t, data, p, ckpts, loader, steps, stop)
            row = _end_epoch(epoch, stats, args, ctx, t, data, p, ckpts, valid_loader)
            if on_epoch_end is not None and on_epoch_end(epoch, dict(row)) and not p.finished:
                p.finished, p.stop_reason = True, "stopped_by_hook"
            if p.stop_reason == "early_stopping" and ctx.is_main:
                log.info("early stopping: no lower valid loss for %d epochs (best %.4f at epoch %d)",
                         p.stopper.bad_epochs, p.stopper.best, p.best_epoch)
            if stop() and not p.finished:
                raise RunInterrupted(stop.signum or 2, epoch + 1, 0, ckpts.last)
            if p.finished:
                break


def check_shards(ctx: D.DistContext, data: Data, epoch: int, start: int) -> None:
    """Every rank reads the same train split, and their shards of `epoch` are disjoint and cover it.

    Each host downloads its own copy of the channel: one given part of it (S3 ShardedByS3Key, a
    host with other files) would train on other data than the others, with nothing failing."""
    data.train_sampler.set_epoch(epoch, start)
    rows = D.gather_objects(ctx, (D.host_name(), data.fingerprint, len(data.train_set), list(data.train_sampler)))
    if len({(fp, n) for _, fp, n, _ in rows}) > 1:
        seen = sorted({f"{host}: {n} images ({fp})" for host, fp, n, _ in rows})
        raise TrainError(f"the hosts read different train splits ({'; '.join(seen)}); every host needs the "
                         f"whole channel (S3DataDistributionType FullyReplicated)")
    shards = [indices for *_, indices in rows]
    union = set().union(*map(set, shards))
    repeated = sum(map(len, shards)) - len(union)
    expected = data.train_sampler.n - start
    if len(union) != expected:
        raise TrainError(f"the {ctx.world_size} ranks' shards of epoch {epoch} cover {len(union)} of "
                         f"{expected} train images")
    if ctx.is_main:
        log.info("train split %s (%d images) on every rank; epoch %d: %d shards of %d images, %s, covering %d",
                 data.fingerprint, len(data.train_set), epoch, len(shards), len(shards[0]),
                 f"{repeated} repeated to even them out" if repeated else "disjoint", len(union))


def _train_epoch(epoch: int, args: argparse.Namespace, ctx: D.DistContext, t: Training, data: Data, p: Progress,
                 ckpts: Checkpoints, loader, steps: int, stop: StopSignal) -> dict[str, Any]:
    """Train one epoch (the rest of it, when resuming mid-epoch); a signal mid-epoch saves and raises."""
    first = epoch == p.start_epoch
    sample0 = p.start_sample if first else 0
    data.train_sampler.set_epoch(epoch, sample0)
    step_size = args.batch_size * ctx.world_size
    first_step = sample0 // step_size
    stats = train_one_epoch(
        t.model, loader, t.criterion, t.optimizer, t.schedule, epoch=epoch, steps_per_epoch=steps, ctx=ctx,
        first_step=first_step, carry=p.carry if first else None, scaler=t.scaler, amp_dtype=t.amp_dtype,
        channels_last=args.channels_last, should_stop=stop,
        on_step=_ProgressPrinter(epoch, steps, args.log_interval, ctx.is_main))
    D.sync_buffers(ctx, t.model)
    if not stats["completed"]:
        consumed = sample0 + (stats["steps"] - first_step) * step_size
        totals = {"loss_sum": stats["train_loss"] * stats["images"], "correct": stats["train_acc"] *
                  stats["images"], "n": float(stats["images"]), "seconds": stats["seconds"]}
        ckpts.save(t, p, epoch - 1, {"epoch": epoch, "sample": consumed}, False, totals)
        raise RunInterrupted(stop.signum or 2, epoch, consumed, ckpts.last)
    return stats


def _end_epoch(epoch: int, stats: dict[str, Any], args: argparse.Namespace, ctx: D.DistContext, t: Training,
               data: Data, p: Progress, ckpts: Checkpoints, valid_loader) -> dict[str, Any]:
    """Validate, keep the best weights, save the checkpoint, print the epoch line; returns the row."""
    row = {"epoch": epoch, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"]}
    if valid_loader is not None:
        vm = evaluate(t.model, valid_loader, ctx=ctx, labels=data.spec.labels, counts=data.spec.counts,
                      amp_dtype=t.amp_dtype, channels_last=args.channels_last)
        row.update({column: vm[name] for column, name in VALID_COLUMNS.items()})
        is_best = p.stopper.update(vm["log_loss"])
    else:
        is_best = True
    row.update(lr=stats["lr"], train_img_s=stats["train_img_s"], seconds=round(stats["seconds"], 3))
    p.history.append(row)
    if is_best:
        p.best_state, p.best_epoch = cpu_state_dict(t.model), epoch
    if p.stopper.should_stop:
        p.finished, p.stop_reason = True, "early_stopping"
    elif epoch == args.epochs:
        p.finished, p.stop_reason = True, "completed"
    ckpts.save(t, p, epoch, {"epoch": epoch + 1, "sample": 0}, is_best)
    if ctx.is_main:
        print(format_epoch_line(epoch, row), flush=True)
        best = format_best_line(p.history)  # the tuners' score; SageMaker keeps its last value
        if best:
            print(best, flush=True)
        atomic_write_text(Path(args.output_dir) / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in p.history))
    return row


# ---------------------------------------------------------------- the end: best model, metrics, outputs
def final_evaluation(args: argparse.Namespace, ctx: D.DistContext, t: Training, data: Data, p: Progress,
                     valid_loader) -> dict[str, Any]:
    """Load the best weights (checking every rank has the same), evaluate them; returns the metrics dict."""
    if p.best_state is None:
        p.best_state, p.best_epoch = cpu_state_dict(t.model), (p.history[-1]["epoch"] if p.history else 0)
    unwrap(t.model).load_state_dict(p.best_state)
    checksums = D.gather_objects(ctx, _weights_checksum(p.best_state))
    if len(set(checksums)) > 1:
        raise TrainError(f"the {ctx.world_size} ranks ended with different weights ({checksums}): DDP went out of sync")
    if ctx.is_main and ctx.distributed:
        log.info("ranks agree: %d ranks, best weights checksum %s", ctx.world_size, checksums[0])
    spec = data.spec
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, ds in (("valid", data.valid_set), ("test", data.test_set)):
        if len(ds):
            loader = valid_loader if split == "valid" else eval_loader(ds, args, ctx)
            outputs[split] = predict_logits(t.model, loader, ctx=ctx, amp_dtype=t.amp_dtype,
                                            channels_last=args.channels_last)
    calibration = calibrate(*outputs["valid"]) if "valid" in outputs else {"temperature": 1.0, "fitted": False}
    if ctx.is_main and calibration["fitted"]:
        log.info("temperature %.3f lowers the valid log-loss from %.4f to %.4f", calibration["temperature"],
                 calibration["valid_log_loss_before"], calibration["valid_log_loss_after"])
    # the metrics of the answers the handler will give: the logits divided by the temperature
    results: dict[str, Any] = {split: compute_metrics(y, softmax(z, calibration["temperature"]), spec.labels,
                                                      spec.counts) for split, (z, y) in outputs.items()}
    base = data.test_set if len(data.test_set) else data.valid_set
    if len(base):
        results["baseline"] = baseline_metrics(data.train_set.targets, base.targets, spec.labels, spec.counts)
        results["baseline"]["split"] = "test" if base is data.test_set else "valid"
    return {
        "arch": args.model, "classes": str(spec), "labels": spec.labels, "counts": spec.counts,
        "best_epoch": p.best_epoch, "epochs_run": len(p.history), "stop_reason": p.stop_reason,
        "history": p.history, "hyperparameters": _plain(hyperparameters(args)),
        "train": {"n": len(data.train_set)}, "calibration": calibration, **results,
    }


def calibrate(logits: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Temperature scaling fitted on the valid split, kept only when it lowers the valid log-loss."""
    temperature, before, after = fit_temperature(logits, targets)
    return {"temperature": temperature, "fitted": temperature != 1.0, "valid_log_loss_before": before,
            "valid_log_loss_after": after}


def _plain(obj: Any) -> Any:
    """JSON- and weights_only-safe copy (paths to strings)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj if obj is None or isinstance(obj, bool | int | float | str) else str(obj)


def write_outputs(dirs: Dirs, state: dict[str, torch.Tensor], metrics: dict[str, Any], args: argparse.Namespace,
                  spec: ClassSpec) -> None:
    """model.pth + model_info.json in the model dir; metrics.json and the PNGs in the output dir."""
    with atomic_open(dirs.model / WEIGHTS_FILE) as f:
        torch.save(state, f)
    info = {
        "arch": args.model, "classes": str(spec), "labels": spec.labels, "counts": spec.counts,
        "image_size": args.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "best_epoch": metrics["best_epoch"], "hyperparameters": metrics["hyperparameters"],
        "temperature": metrics.get("calibration", {}).get("temperature", 1.0),
        "metrics": {s: summary(metrics[s]) for s in ("valid", "test", "baseline") if s in metrics},
    }
    atomic_write_json(dirs.model / MODEL_INFO_FILE, info)
    atomic_write_json(dirs.output / METRICS_FILE, metrics)
    if metrics["history"]:
        write_curves_png(dirs.output / CURVES_PNG, metrics["history"], best_epoch=metrics["best_epoch"])
    split = "test" if "test" in metrics else ("valid" if "valid" in metrics else None)
    if split:
        write_confusion_png(dirs.output / CONFUSION_PNG, metrics[split], f"confusion matrix ({split} split)")
        write_reliability_png(dirs.output / RELIABILITY_PNG, metrics[split], f"reliability ({split} split)")
        write_coverage_png(dirs.output / COVERAGE_PNG, metrics[split], metrics.get("baseline"),
                           f"accuracy vs coverage ({split} split)")


# ---------------------------------------------------------------- main
def run(args: argparse.Namespace, on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None
        ) -> dict[str, Any]:
    """Train (or resume, or --eval-only), then write the model and metrics. Returns the metrics dict.

    on_epoch_end(epoch, row) is called on every rank after each epoch's checkpoint is saved;
    returning True stops training there (the model is still written); an exception it raises
    (e.g. optuna.TrialPruned) propagates. Raises RunInterrupted after SIGINT/SIGTERM.
    """
    ctx = D.init_distributed(args.device, args.collective_timeout)
    try:
        return train(args, ctx, on_epoch_end)
    finally:
        D.cleanup(ctx)


def train(args: argparse.Namespace, ctx: D.DistContext, on_epoch_end=None) -> dict[str, Any]:
    """The run, top to bottom: arguments -> data -> model and optimizer -> resume -> epochs -> outputs."""
    spec = check_args(args)
    dirs = Dirs.from_args(args)
    group = D.describe_group(ctx) if ctx.distributed else None
    if ctx.is_main:
        log_start(args, ctx)
        if group:
            log.info("distributed: %s; collective timeout %g s", group, args.collective_timeout)
        sweep_leftovers(dirs)
    _seed_everything(args.seed)
    data = load_data(args, spec, ctx)
    t = build_training(args, spec, ctx)
    ckpts = Checkpoints(dirs.checkpoints, args, ctx, data)
    p = resume(ckpts, t)
    if ctx.distributed:
        t.model = nn.parallel.DistributedDataParallel(t.model, device_ids=[ctx.device.index] if _pin(ctx) else None)
    valid_loader = eval_loader(data.valid_set, args, ctx) if len(data.valid_set) else None
    train_epochs(args, ctx, t, data, p, ckpts, valid_loader, on_epoch_end)
    metrics = final_evaluation(args, ctx, t, data, p, valid_loader)
    if ctx.is_main:
        write_outputs(dirs, p.best_state, metrics, args, spec)
        line = " ".join(f"{s}_{k}={metrics[s][k]:.4f}" for s in ("valid", "test") if s in metrics for k in SUMMARY)
        log.info("best epoch %d: %s; model in %s", p.best_epoch, line, dirs.model)
    D.barrier(ctx)
    return metrics


def _one_line(exc: BaseException) -> str:
    """The message of an expected error, also when a DataLoader worker raised it (then torch wraps
    it in 'Caught InputDataError in DataLoader worker process 0. Original Traceback ...')."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> None:
    parser = get_args_parser()
    args, unknown = parser.parse_known_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if unknown and rank == 0:
        log.warning("ignoring unknown arguments: %s", " ".join(unknown))  # e.g. SageMaker's _tuning_objective_metric
    try:
        run(args)
    except RunInterrupted as exc:
        log.warning("%s", exc)
        sys.exit(128 + exc.signum)
    except InputDataError as exc:
        _fail(_one_line(exc))
        sys.exit(2)
    except TrainError as exc:
        _fail(_one_line(exc))
        if exc.hint:
            log.error("hint: %s", exc.hint)
        sys.exit(1)
    except RuntimeError as exc:
        reason = D.lost_peer(exc) if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
        if reason is None:
            raise
        _fail(f"lost contact with the other ranks (rank {rank} on {D.host_name()}): {reason}; a host of this "
              f"job died or stopped answering (collective timeout {args.collective_timeout:g} s)")
        sys.exit(1)


def _fail(message: str) -> None:
    """The error as one line: logged (every rank's, since rank > 0 logs warnings and errors), and as
    the job's failure file when the launcher names one (SM_OUTPUT_FAILURE: SageMaker's FailureReason;
    the first rank to fail writes it, and the SDK's driver keeps a file that is there)."""
    log.error("error: %s", message)
    path = os.environ.get("SM_OUTPUT_FAILURE")
    if path:
        try:
            with open(path, "x") as f:
                f.write(message + "\n")
        except OSError:  # there already (another rank's), or no such dir: the log line stands
            pass


if __name__ == "__main__":
    main()
