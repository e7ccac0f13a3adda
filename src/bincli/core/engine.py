"""The loop's parts: optimizer and schedule factories, train_one_epoch, evaluate, checkpoints, stop signals.

train_one_epoch and evaluate return plain dicts; train.py strings them together (like
torchvision's references/classification/train.py).
"""

from __future__ import annotations

import io
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .contract import CHECKPOINT_BEST, CHECKPOINT_LAST
from .distributed import DistContext, all_reduce_sum, any_rank
from .fileio import atomic_open
from .metrics import MetricState

CHECKPOINT_FORMAT = 1


class TrainError(RuntimeError):
    """Training cannot go on (diverged, out of sync...); the message says why and what to do."""

    hint: str | None = None


class CheckpointError(TrainError):
    """The checkpoint in the checkpoint dir cannot be resumed by this run."""

    hint = "bincli train --fresh starts the run over; a train with other settings starts a new run"


# ---------------------------------------------------------------- optimizers and schedules
def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: not on biases and norm layers (1-d parameters). Frozen ones left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Keys: hyperparams.OPTIMIZER_CHOICES and SCHEDULER_CHOICES (what config and CLI accept; tests check).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
}


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](_param_groups(model, weight_decay), lr)


def _cosine(t: float, span: float, _: dict) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t / span))) if span > 0 else 1.0


def _step(t: float, span: float, opts: dict) -> float:
    every = opts.get("step_epochs") or max(1.0, span / 3)
    return opts.get("gamma", 0.1) ** math.floor(t / every)


SCHEDULES: dict[str, Callable[[float, float, dict], float]] = {
    "cosine": _cosine,
    "step": _step,
    "none": lambda t, span, opts: 1.0,
}


class WarmupSchedule:
    """Learning rate as a function of training progress in (fractional) epochs: a linear warm-up
    from `warmup_start` x lr, then cosine decay, step decay (x0.1 every third of the rest) or constant.

    Set every step with `step_to(epoch - 1 + step / steps)`. Being a function of progress (not a
    step counter) it stays right when a resumed run changes the batch size or the epoch count.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, epochs: int, warmup_epochs: float,
                 warmup_start: float = 0.01, **opts: Any):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown scheduler {kind!r}; choose from {', '.join(SCHEDULES)}")
        self.optimizer, self.kind, self.epochs = optimizer, kind, epochs
        self.warmup_epochs = min(float(warmup_epochs), float(epochs))
        self.warmup_start, self.opts = warmup_start, opts
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, base in zip(optimizer.param_groups, self.base_lrs, strict=True):
            g["initial_lr"] = base
        self.t = 0.0

    def factor(self, t: float) -> float:
        w = self.warmup_epochs
        if t < w:
            return self.warmup_start + (1.0 - self.warmup_start) * t / w
        return SCHEDULES[self.kind](t - w, self.epochs - w, self.opts)

    def step_to(self, t: float) -> float:
        self.t = t
        f = self.factor(t)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = base * f
        return self.lr

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "epochs": self.epochs, "warmup_epochs": self.warmup_epochs,
                "warmup_start": self.warmup_start, "base_lrs": list(self.base_lrs), "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Only the position: the shape (kind, epochs) comes from this run's arguments.
        self.step_to(float(state.get("t", 0.0)))


# ---------------------------------------------------------------- mixed precision
BF16_CAPABILITY = (8, 0)  # Ampere (A100, A10G, L4...) and later: bf16 in hardware


def choose_amp_dtype(amp: str, device_type: str, capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The autocast dtype for --amp (auto/on/off) on a device; None is full fp32.

    On CUDA, bf16 only where the GPU has it (compute capability >= 8.0), else fp16, which needs a
    GradScaler. torch.cuda.is_bf16_supported() cannot decide this: it also says yes on a T4 (7.5,
    SageMaker's ml.g4dn), where bf16 is emulated and slower than fp32.
    """
    if amp == "off" or (amp == "auto" and device_type != "cuda"):
        return None
    if device_type == "cuda":
        return torch.bfloat16 if capability is not None and tuple(capability) >= BF16_CAPABILITY else torch.float16
    return torch.bfloat16  # --amp on, on the CPU (fp16 autocast there is slow and unscaled)


# ---------------------------------------------------------------- losses
class SoftOrdinalLoss(nn.Module):
    """Cross-entropy against soft targets that put probability on neighbouring counts (SORD, Diaz &
    Marathe 2019): q(j | true i) ~ exp(-(count_j - count_i)^2 / spread). Calling 2 for a bin of 3 costs
    less than calling 5, which plain cross-entropy does not know. Label smoothing mixes in uniform."""

    def __init__(self, counts: Sequence[int], spread: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        c = torch.as_tensor(list(counts), dtype=torch.float32)
        q = torch.softmax(-((c[None, :] - c[:, None]) ** 2) / spread, dim=1)
        k = len(counts)
        self.register_buffer("targets", q * (1.0 - label_smoothing) + label_smoothing / k)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=1)
        return -(self.targets.to(logp.device)[target] * logp).sum(dim=1).mean()


# Keys: hyperparams.LOSS_CHOICES (tests check).
LOSSES: dict[str, Callable[[Sequence[int], float], nn.Module]] = {
    "ce": lambda counts, smoothing: nn.CrossEntropyLoss(label_smoothing=smoothing),
    "soft-ordinal": lambda counts, smoothing: SoftOrdinalLoss(counts, label_smoothing=smoothing),
}


def build_criterion(name: str, counts: Sequence[int], label_smoothing: float = 0.0) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name](counts, label_smoothing)


@torch.no_grad()
def predict_logits(model: nn.Module, loader: Iterable, *, ctx: DistContext, amp_dtype: torch.dtype | None = None,
                   channels_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, C) float64, targets (N,)) over the whole data set: every rank's shard, gathered on
    every rank (ShardSampler: no padding, so each image once). For temperature fitting and the
    metrics that need per-image probabilities."""
    from .distributed import gather_objects

    model.eval()
    outs, tgts = [], []
    for images, targets in loader:
        images, targets = _to_device(images, targets, ctx.device, channels_last)
        with _autocast(ctx.device, amp_dtype):
            logits = model(images)
        outs.append(logits.float().cpu().numpy().astype(np.float64))
        tgts.append(targets.cpu().numpy().astype(np.int64))
    local = (np.concatenate(outs) if outs else np.zeros((0, 0)), np.concatenate(tgts) if tgts else np.zeros(0, int))
    parts = [p for p in gather_objects(ctx, local) if p[1].size]
    if not parts:
        return local
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ---------------------------------------------------------------- loop
def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def _to_device(images: torch.Tensor, targets: torch.Tensor, device: torch.device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return (images.to(device, non_blocking=True, memory_format=fmt), targets.to(device, non_blocking=True))


def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: WarmupSchedule, *, epoch: int, steps_per_epoch: int, ctx: DistContext,
                    first_step: int = 0, carry: dict[str, float] | None = None,
                    scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None,
                    channels_last: bool = True,
                    on_step: Callable[[int, Callable[[], dict[str, float]]], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """One pass over `loader` (the rest of epoch `epoch`, 1-based, from batch `first_step`).

    on_step(step, running) is called after every step; `running()` gives this rank's running loss,
    accuracy and the job's img/s (calling it waits for the GPU, so call it only to print).
    Returns train_loss (the criterion, label smoothing included) and train_acc averaged over all
    ranks, images, seconds, train_img_s, lr, the number of steps done, and `completed`: False when
    `should_stop()` asked to stop early (then `carry` holds the partial sums to resume from).
    """
    model.train()
    # loss*n and correct accumulate on the device: no host sync per step
    acc = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    n, seconds0 = 0.0, 0.0
    if carry:
        acc += torch.tensor([carry["loss_sum"], carry["correct"]], dtype=torch.float64, device=ctx.device)
        n, seconds0 = float(carry["n"]), float(carry["seconds"])
    check_every = 1 if ctx.device.type == "cpu" else 50
    step, completed = first_step, True
    t0 = time.perf_counter()

    def running() -> dict[str, float]:
        loss_sum, correct = acc.tolist()
        secs = seconds0 + time.perf_counter() - t0
        return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1), "img_s": n * ctx.world_size / max(secs, 1e-9)}

    for images, targets in loader:
        images, targets = _to_device(images, targets, ctx.device, channels_last)
        schedule.step_to(epoch - 1 + step / max(1, steps_per_epoch))
        with _autocast(ctx.device, amp_dtype):
            logits = model(images)
            loss = criterion(logits, targets)
        if (step + 1) % check_every == 0 and not torch.isfinite(loss):
            raise TrainError(f"training diverged: loss is {loss.item()} at epoch {epoch} step {step + 1} "
                             f"(lr {schedule.lr:.3g}); try a lower --lr or more --warmup-epochs")
        _backward_step(loss, optimizer, scaler)
        batch = targets.shape[0]
        acc[0] += loss.detach().double() * batch
        acc[1] += (logits.argmax(dim=1) == targets).sum()
        n += batch
        step += 1
        if on_step is not None:
            on_step(step, running)
        if should_stop is not None and any_rank(ctx, should_stop()) and step < steps_per_epoch:
            completed = False
            break
    seconds = seconds0 + time.perf_counter() - t0
    return _epoch_stats(acc, n, seconds, ctx, epoch, schedule.lr) | {"steps": step, "completed": completed}


def _backward_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def _epoch_stats(acc: torch.Tensor, n: float, seconds: float, ctx: DistContext, epoch: int,
                 lr: float) -> dict[str, Any]:
    """This rank's sums -> the job's epoch means (all-reduced), plus `carry`: this rank's sums."""
    loss_sum, correct = acc.tolist()
    if not math.isfinite(loss_sum):
        raise TrainError(f"training diverged: the loss of epoch {epoch} is {loss_sum}; "
                         f"try a lower --lr or more --warmup-epochs")
    total = all_reduce_sum(ctx, torch.tensor([loss_sum, correct, n], dtype=torch.float64, device=ctx.device)).cpu()
    n_all = float(total[2])
    return {
        "train_loss": float(total[0] / n_all) if n_all else float("nan"),
        "train_acc": float(total[1] / n_all) if n_all else float("nan"),
        "images": int(n_all),
        "seconds": seconds,
        "train_img_s": n_all / seconds if seconds > 0 else 0.0,
        "lr": lr,
        "carry": {"loss_sum": loss_sum, "correct": correct, "n": n, "seconds": seconds},
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, ctx: DistContext, labels: Sequence[str], counts: Sequence[int],
             amp_dtype: torch.dtype | None = None, channels_last: bool = True) -> dict[str, Any]:
    """The metrics dict (core/metrics.py) over the whole data set, summed across ranks."""
    model.eval()
    state = MetricState(len(labels), ctx.device)
    for images, targets in loader:
        images, targets = _to_device(images, targets, ctx.device, channels_last)
        with _autocast(ctx.device, amp_dtype):
            logits = model(images)
        state.update(logits, targets)
    if ctx.distributed:
        state.all_reduce()
    return state.compute(labels, counts)


# ---------------------------------------------------------------- checkpoints
def rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def checkpoint_meta() -> dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "torch": str(torch.__version__),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def save_checkpoint(state: dict[str, Any], ckpt_dir: str | Path, is_best: bool) -> Path:
    """Write last.pt atomically and, when best, make best.pt the same file (a hard link swapped in
    atomically, like timm's CheckpointSaver; a copy where links are not possible).

    Call on the main rank only. No per-epoch files pile up."""
    last = Path(ckpt_dir) / CHECKPOINT_LAST
    with atomic_open(last) as f:  # streamed: no in-memory copy of a checkpoint 3x the weights' size
        torch.save({**checkpoint_meta(), **state}, f)
    if is_best:
        best = Path(ckpt_dir) / CHECKPOINT_BEST
        tmp = best.with_name(f".{best.name}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)
            os.replace(tmp, best)
        except OSError:
            tmp.unlink(missing_ok=True)
            with open(last, "rb") as src, atomic_open(best) as dst:
                shutil.copyfileobj(src, dst)
    return last


def load_checkpoint(source: str | Path | io.BytesIO) -> dict[str, Any]:
    """A checkpoint dict on the CPU (tensors only: weights_only=True, no pickled code)."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which
        where = source if not isinstance(source, io.BytesIO) else "checkpoint"
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # torch's message carries ANSI bold
        first = text.splitlines()[0] if text else ""
        raise CheckpointError(f"{where}: not a readable bincli checkpoint ({type(exc).__name__}: {first})") from None


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights, contiguous on the CPU (loads into any model of the architecture, any memory format)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in unwrap(model).state_dict().items()}


# ---------------------------------------------------------------- stopping
class StopSignal:
    """SIGINT / SIGTERM ask the loop to stop after the current step (SageMaker's spot interruption
    and `docker stop` send SIGTERM; Ctrl-C sends SIGINT). A second signal stops at once.

    Use as a context manager; handlers are installed only in the main thread and restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class EarlyStopping:
    """Stop after `patience` epochs without a lower valid loss (0: never)."""

    def __init__(self, patience: int, best: float = math.inf, bad_epochs: int = 0):
        self.patience, self.best, self.bad_epochs = patience, best, bad_epochs

    def update(self, valid_loss: float) -> bool:
        """Record an epoch's valid loss; True if it is the best so far."""
        if valid_loss < self.best:
            self.best, self.bad_epochs = valid_loss, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience
