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
which SageMaker's metric_definitions and the tuner parse; `progress ...` lines within an epoch.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .classes import ClassSpec
from .contract import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    HISTORY_FILE,
    HYPERPARAMETERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    METRICS_FILE,
    MODEL_INFO_FILE,
    WEIGHTS_FILE,
    format_epoch_line,
    format_progress_line,
)
from .data import (
    CountDataset,
    DataError,
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
    build_optimizer,
    cpu_state_dict,
    evaluate,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    train_one_epoch,
    unwrap,
)
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from .metrics import baseline_metrics, summary
from .model import ARCHITECTURES, FREEZE_CHOICES, build_model
from .plots import CONFUSION_PNG, CURVES_PNG, write_confusion_png, write_curves_png
from .presets import eval_transform, train_transform

log = logging.getLogger("bincli.train")

# Hyperparameters that shape a run: a resumed run must match the checkpoint on these.
# (epochs, batch-size, workers, patience, cache and every operational flag may change.)
RESUME_LOCKED = ("model", "lr", "image_size", "pretrained", "freeze", "optimizer", "scheduler", "warmup_epochs",
                 "weight_decay", "label_smoothing", "seed", "classes")


class Interrupted(Exception):
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


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Every flag, with its default. Hyperparameter flags are named as in contract.HYPERPARAMETERS."""
    p = argparse.ArgumentParser(description="bincli: fine-tune a ResNet to count items in bin photos.",
                                add_help=add_help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hp = p.add_argument_group("hyperparameters (SageMaker passes them as --name value)")
    hp.add_argument("--model", default="resnet18", choices=list(ARCHITECTURES), help="torchvision backbone")
    hp.add_argument("--epochs", type=int, default=10, help="epochs in all (a resumed run may raise it)")
    hp.add_argument("--batch-size", type=int, default=32, help="images per step, per process")
    hp.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    hp.add_argument("--image-size", type=int, default=224, help="square input size in pixels")
    hp.add_argument("--pretrained", type=str2bool, nargs="?", const=True, default=False,
                    help="start from torchvision's ImageNet weights")
    hp.add_argument("--weights-file", default=None, help="local ImageNet weights (.pth state_dict) for --pretrained")
    hp.add_argument("--freeze", default="none", choices=list(FREEZE_CHOICES),
                    help="freeze the backbone, or the stem and layers up to layerN")
    hp.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    hp.add_argument("--scheduler", default="cosine", choices=["cosine", "step", "none"], help="after the warm-up")
    hp.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up from 1%% of --lr")
    hp.add_argument("--weight-decay", type=float, default=1e-4, help="on weights, not on biases or norms")
    hp.add_argument("--label-smoothing", type=float, default=0.0)
    hp.add_argument("--patience", type=int, default=0,
                    help="stop after this many epochs without a lower valid loss (0: never)")
    hp.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader processes")
    hp.add_argument("--seed", type=int, default=0, help="weights init, shuffling, augmentation")
    hp.add_argument("--cache", type=str2bool, nargs="?", const=True, default=True,
                    help="cache decoded, resized images on disk after the first epoch")
    hp.add_argument("--classes", default="1-5", help="count classes: '1-5', or '0-5+' (5+ = five or more)")

    io_ = p.add_argument_group("data and outputs (defaults from SageMaker's SM_* variables)")
    io_.add_argument("--train", default=_env("SM_CHANNEL_TRAIN"), help="train channel dir [SM_CHANNEL_TRAIN]")
    io_.add_argument("--valid", default=_env("SM_CHANNEL_VALID"), help="valid channel dir [SM_CHANNEL_VALID]")
    io_.add_argument("--test", default=_env("SM_CHANNEL_TEST"), help="test channel dir [SM_CHANNEL_TEST]")
    io_.add_argument("--data-root", default=None, help="resolve manifest image paths against this dir")
    io_.add_argument("--model-dir", default=_env("SM_MODEL_DIR", "model"), help="[SM_MODEL_DIR]")
    io_.add_argument("--output-dir", default=_env("SM_OUTPUT_DATA_DIR", "output"), help="[SM_OUTPUT_DATA_DIR]")
    io_.add_argument("--checkpoint-dir", default=None, help="default: <model-dir>/../checkpoints")
    io_.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "bincli-cache"))

    run = p.add_argument_group("run")
    run.add_argument("--resume", default="auto", choices=["auto", "never"],
                     help="auto: continue from <checkpoint-dir>/last.pt if there; never: start over")
    run.add_argument("--eval-only", action="store_true", help="evaluate the checkpoint's best model, no training")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--amp", default="auto", choices=["auto", "on", "off"], help="mixed precision (auto: on GPU)")
    run.add_argument("--channels-last", type=str2bool, nargs="?", const=True, default=True)
    run.add_argument("--log-interval", type=float, default=30.0, help="seconds between progress lines (0: every step)")
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
    if args.amp == "off" or (args.amp == "auto" and device.type != "cuda"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16  # --amp on, on the CPU


def _weights_checksum(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _locked(args: dict[str, Any]) -> dict[str, Any]:
    out = {k: args.get(k) for k in RESUME_LOCKED}
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


# ---------------------------------------------------------------- main
def run(args: argparse.Namespace, on_epoch_end: Callable[[int, dict[str, Any]], bool | None] | None = None
        ) -> dict[str, Any]:
    """Train (or resume, or --eval-only), then write the model and metrics. Returns the metrics dict.

    on_epoch_end(epoch, row) is called on every rank after each epoch's checkpoint is saved;
    returning True stops training there (the model is still written); an exception it raises
    (e.g. optuna.TrialPruned) propagates. Raises Interrupted after SIGINT/SIGTERM.
    """
    ctx = D.init_distributed(args.device)
    try:
        return _run(args, ctx, on_epoch_end)
    finally:
        D.cleanup(ctx)


def _run(args: argparse.Namespace, ctx: D.DistContext, on_epoch_end) -> dict[str, Any]:
    main = ctx.is_main
    try:
        spec = ClassSpec.parse(args.classes)
    except ValueError as exc:
        raise DataError(f"--classes: {exc}") from None
    labels, counts = spec.labels, spec.counts
    if not args.train:
        raise DataError("no train channel: pass --train DIR or set SM_CHANNEL_TRAIN")
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            raise DataError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    model_dir, output_dir = Path(args.model_dir), Path(args.output_dir)
    ckpt_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else model_dir.resolve().parent / "checkpoints"
    if main:
        log.info("hyperparameters: %s", json.dumps(hyperparameters(args), default=str))
        hosts = json.loads(os.environ.get("SM_HOSTS", "[]") or "[]")
        if len(hosts) > 1 and not ctx.distributed:
            log.warning("SM_HOSTS lists %d hosts but this process was not launched by torchrun: "
                        "each host trains on its own", len(hosts))
    _seed_everything(args.seed)

    # ---- data
    train_samples = load_channel(args.train, "train", spec, args.data_root)
    valid_samples = load_channel(args.valid, "valid", spec, args.data_root) if args.valid else []
    test_samples = load_channel(args.test, "test", spec, args.data_root) if args.test else []
    data_fp = fingerprint(train_samples, files=False)
    size = args.image_size
    cache_dir = args.cache_dir if args.cache else None
    train_set = CountDataset(train_samples, size, train_transform(size), open_cache(cache_dir, train_samples, size))
    eval_tf = eval_transform(size)
    valid_set = CountDataset(valid_samples, size, eval_tf, open_cache(cache_dir, valid_samples, size))
    test_set = CountDataset(test_samples, size, eval_tf, open_cache(cache_dir, test_samples, size))
    pin = ctx.device.type == "cuda"
    train_sampler = TrainSampler(len(train_set), ctx.rank, ctx.world_size, args.seed)
    if main:
        log.info("data: train %d, valid %d, test %d images; classes %s; %d process(es); device %s",
                 len(train_set), len(valid_set), len(test_set), spec, ctx.world_size, ctx.device)
        if not valid_samples:
            log.warning("no valid channel: no early stopping, and the last epoch's model is kept")

    def eval_loader(ds: CountDataset):
        return build_loader(ds, args.batch_size, ShardSampler(len(ds), ctx.rank, ctx.world_size), args.workers,
                            pin_memory=pin)

    # ---- model, loss, optimizer, schedule
    model = build_model(args.model, spec.num_classes, args.pretrained, args.weights_file, args.freeze)
    if args.weights_file and not args.pretrained and main:
        log.warning("--weights-file is ignored without --pretrained")
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(ctx.device, memory_format=fmt)
    if ctx.distributed:  # the same initial weights everywhere, then each rank its own augmentation stream
        _seed_everything(args.seed + 1_000_003 * ctx.rank)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(args.optimizer, model, args.lr, args.weight_decay)
    schedule = WarmupSchedule(optimizer, args.scheduler, args.epochs, args.warmup_epochs)
    amp_dtype = _amp_dtype(args, ctx.device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    # ---- resume
    start_epoch, start_sample, carry = 1, 0, None
    history: list[dict[str, Any]] = []
    stopper = EarlyStopping(args.patience)
    best_state, best_epoch, finished, stop_reason = None, 0, False, None
    last_path = ckpt_dir / CHECKPOINT_LAST
    buf = D.broadcast_file(ctx, last_path) if args.resume == "auto" else None
    if buf is not None:
        ckpt = load_checkpoint(buf)
        _check_resume(ckpt, args, data_fp, last_path)
        unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        history = list(ckpt.get("history", []))
        stopper = EarlyStopping(args.patience, ckpt.get("best_loss", float("inf")), ckpt.get("bad_epochs", 0))
        best_epoch = ckpt.get("best_epoch", 0)
        start_epoch, start_sample = ckpt["next"]["epoch"], ckpt["next"]["sample"]
        carry = ckpt.get("carry")
        if carry:  # job-wide sums: each rank adds its share, the epoch's all-reduce adds them up again
            carry = {k: (v if k == "seconds" else v / ctx.world_size) for k, v in carry.items()}
        ranks = ckpt.get("rng_ranks") or []
        set_rng_state(ranks[ctx.rank] if len(ranks) == ctx.world_size else ckpt["rng"])
        if len(ranks) != ctx.world_size and ctx.rank:  # another world size than before: fresh streams
            _seed_everything(args.seed + 1_000_003 * ctx.rank + 7919 * start_epoch)
        finished, stop_reason = ckpt.get("finished", False), ckpt.get("stop_reason")
        if finished and stop_reason == "completed" and args.epochs > ckpt["epoch"]:
            finished = False
            if main:
                log.info("extending a finished run from %d to %d epochs", ckpt["epoch"], args.epochs)
        best_buf = D.broadcast_file(ctx, ckpt_dir / CHECKPOINT_BEST)
        best_state = load_checkpoint(best_buf)["model"] if best_buf is not None else None
        if main:
            if args.eval_only:
                log.info("evaluating the best model (epoch %d) of %s", best_epoch, ckpt_dir)
            elif finished:
                log.info("nothing to resume: the run in %s finished at epoch %d (%s); writing the model from "
                         "its best epoch (%d). To train from scratch: --resume never (bincli train --fresh)",
                         ckpt_dir, ckpt["epoch"], stop_reason, best_epoch)
            else:
                where = f" after {start_sample} samples" if start_sample else ""
                log.info("resuming from %s at epoch %d%s", last_path, start_epoch, where)
    elif args.eval_only:
        raise TrainError(f"--eval-only needs a checkpoint: {last_path} does not exist")
    if args.eval_only:
        finished = True

    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if pin else None)

    def checkpoint(epoch: int, next_: dict[str, int], is_best: bool, carry_: dict | None = None) -> None:
        rng_ranks = D.gather_objects(ctx, rng_state()) if ctx.distributed else []
        if main:
            save_checkpoint({
                "model": cpu_state_dict(model), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "schedule": schedule.state_dict(),
                "rng": rng_state(), "rng_ranks": rng_ranks, "epoch": epoch, "next": next_, "carry": carry_,
                "history": history,
                "best_loss": stopper.best, "bad_epochs": stopper.bad_epochs, "best_epoch": best_epoch,
                "finished": finished, "stop_reason": stop_reason, "args": _plain(vars(args)),
                "hyperparameters": _plain(hyperparameters(args)), "classes": str(spec), "data": data_fp,
            }, ckpt_dir, is_best)
        D.barrier(ctx)

    # ---- loop
    valid_loader = eval_loader(valid_set) if valid_samples else None
    train_loader = None
    with StopSignal() as stop:
        for epoch in range(start_epoch, args.epochs + 1):
            if finished:
                break
            train_sampler.set_epoch(epoch, start_sample if epoch == start_epoch else 0)
            full = -(-len(train_set) // ctx.world_size)  # samples per rank in a whole epoch
            drop_last = full >= args.batch_size  # a last batch of one would break BatchNorm
            steps_per_epoch = full // args.batch_size if drop_last else 1
            if train_loader is None:
                train_loader = build_loader(train_set, args.batch_size, train_sampler, args.workers,
                                            drop_last=drop_last, pin_memory=pin)
            step_size = args.batch_size * ctx.world_size
            first_step = (start_sample // step_size) if epoch == start_epoch else 0
            sample0 = start_sample if epoch == start_epoch else 0
            stats = train_one_epoch(
                model, train_loader, criterion, optimizer, schedule, epoch=epoch, steps_per_epoch=steps_per_epoch,
                ctx=ctx, first_step=first_step, carry=carry if epoch == start_epoch else None, scaler=scaler,
                amp_dtype=amp_dtype, channels_last=args.channels_last, should_stop=stop,
                on_step=_ProgressPrinter(epoch, steps_per_epoch, args.log_interval, main))
            D.sync_buffers(ctx, model)
            if not stats["completed"]:
                consumed = sample0 + (stats["steps"] - first_step) * step_size
                totals = {"loss_sum": stats["train_loss"] * stats["images"], "correct": stats["train_acc"] *
                          stats["images"], "n": float(stats["images"]), "seconds": stats["seconds"]}
                checkpoint(epoch - 1, {"epoch": epoch, "sample": consumed}, False, totals)
                raise Interrupted(stop.signum or 2, epoch, consumed, last_path)
            row = {"epoch": epoch, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"]}
            if valid_loader is not None:
                vm = evaluate(model, valid_loader, ctx=ctx, labels=labels, counts=counts, amp_dtype=amp_dtype,
                              channels_last=args.channels_last)
                row.update(valid_loss=vm["log_loss"], valid_acc=vm["accuracy"], valid_rmse=vm["rmse"],
                           valid_mae=vm["mae"])
                is_best = stopper.update(vm["log_loss"])
            else:
                is_best = True
            row.update(lr=stats["lr"], train_img_s=stats["train_img_s"], seconds=round(stats["seconds"], 3))
            history.append(row)
            if is_best:
                best_state, best_epoch = cpu_state_dict(model), epoch
            if stopper.should_stop:
                finished, stop_reason = True, "early_stopping"
            elif epoch == args.epochs:
                finished, stop_reason = True, "completed"
            checkpoint(epoch, {"epoch": epoch + 1, "sample": 0}, is_best)
            if main:
                print(format_epoch_line(epoch, row), flush=True)
                atomic_write_text(output_dir / HISTORY_FILE, "".join(json.dumps(r) + "\n" for r in history))
            if on_epoch_end is not None and on_epoch_end(epoch, dict(row)) and not finished:
                finished, stop_reason = True, "stopped_by_hook"
            if stop_reason == "early_stopping" and main:
                log.info("early stopping: no lower valid loss for %d epochs (best %.4f at epoch %d)",
                         stopper.bad_epochs, stopper.best, best_epoch)
            if stop() and not finished:
                raise Interrupted(stop.signum or 2, epoch + 1, 0, last_path)

    # ---- the best model: evaluate, write
    if best_state is None:
        best_state, best_epoch = cpu_state_dict(model), (history[-1]["epoch"] if history else 0)
    unwrap(model).load_state_dict(best_state)
    checksums = D.gather_objects(ctx, _weights_checksum(best_state))
    if len(set(checksums)) > 1:
        raise TrainError(f"the {ctx.world_size} ranks ended with different weights ({checksums}): DDP went out of sync")
    if main and ctx.distributed:
        log.info("ranks agree: %d ranks, best weights checksum %s", ctx.world_size, checksums[0])
    results: dict[str, Any] = {}
    for split, ds in (("valid", valid_set), ("test", test_set)):
        if len(ds):
            loader = valid_loader if split == "valid" else eval_loader(ds)
            results[split] = evaluate(model, loader, ctx=ctx, labels=labels, counts=counts, amp_dtype=amp_dtype,
                                      channels_last=args.channels_last)
    base_split = "test" if test_samples else ("valid" if valid_samples else None)
    if base_split:
        results["baseline"] = baseline_metrics(train_set.targets, (test_set if test_samples else valid_set).targets,
                                               labels, counts)
        results["baseline"]["split"] = base_split
    metrics = {
        "arch": args.model, "classes": str(spec), "labels": labels, "counts": counts,
        "best_epoch": best_epoch, "epochs_run": len(history), "stop_reason": stop_reason,
        "history": history, "hyperparameters": _plain(hyperparameters(args)),
        "train": {"n": len(train_set)}, **results,
    }
    if main:
        _write_outputs(model_dir, output_dir, best_state, metrics, args, spec)
        line = " ".join(f"{s}_{k}={results[s][k]:.4f}" for s in ("valid", "test") if s in results
                        for k in ("accuracy", "log_loss", "rmse", "mae"))
        log.info("best epoch %d: %s; model in %s", best_epoch, line, model_dir)
    D.barrier(ctx)
    return metrics


def _plain(obj: Any) -> Any:
    """JSON- and weights_only-safe copy (paths to strings)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj if obj is None or isinstance(obj, bool | int | float | str) else str(obj)


def _write_outputs(model_dir: Path, output_dir: Path, state: dict[str, torch.Tensor], metrics: dict[str, Any],
                   args: argparse.Namespace, spec: ClassSpec) -> None:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(model_dir / WEIGHTS_FILE, buf.getvalue())
    info = {
        "arch": args.model, "classes": str(spec), "labels": spec.labels, "counts": spec.counts,
        "image_size": args.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "best_epoch": metrics["best_epoch"], "hyperparameters": metrics["hyperparameters"],
        "metrics": {s: summary(metrics[s]) for s in ("valid", "test", "baseline") if s in metrics},
    }
    atomic_write_json(model_dir / MODEL_INFO_FILE, info)
    atomic_write_json(output_dir / METRICS_FILE, metrics)
    if metrics["history"]:
        write_curves_png(output_dir / CURVES_PNG, metrics["history"])
    split = "test" if "test" in metrics else ("valid" if "valid" in metrics else None)
    if split:
        write_confusion_png(output_dir / CONFUSION_PNG, metrics[split], f"confusion matrix ({split} split)")


def _one_line(exc: BaseException) -> str:
    """The message of an expected error, also when a DataLoader worker raised it (then torch wraps
    it in 'Caught DataError in DataLoader worker process 0. Original Traceback ...')."""
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
    except Interrupted as exc:
        log.warning("%s", exc)
        sys.exit(128 + exc.signum)
    except DataError as exc:
        log.error("error: %s", _one_line(exc))
        sys.exit(2)
    except TrainError as exc:
        log.error("error: %s", _one_line(exc))
        if exc.hint:
            log.error("hint: %s", exc.hint)
        sys.exit(1)


if __name__ == "__main__":
    main()
