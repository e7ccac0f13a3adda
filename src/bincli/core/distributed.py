"""Distributed setup in one place: torchrun's RANK / WORLD_SIZE / LOCAL_RANK -> a context object.

Without those variables this is a single process (world 1) and every helper is a no-op, so the
loop reads the same either way. Nothing here mutates the caller's arguments.
"""

from __future__ import annotations

import io
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .hyperparams import DEVICE_CHOICES

log = logging.getLogger(__name__)

# How long a collective waits for the other ranks before failing. A host that dies with its sockets
# closed fails the others at once; one that hangs or vanishes (no reset) is found only by this wait.
# Long enough for rank 0's longest solo step (saving a checkpoint, writing the model), short enough
# that a dead host costs minutes of billed instances, not torch's default half hour.
COLLECTIVE_TIMEOUT_S = 600.0
# What torch's gloo and NCCL errors say when a peer is gone (gloo raises a plain RuntimeError).
_PEER_LOST = ("Connection reset", "Connection closed", "Timed out", "timed out", "Broken pipe", "NCCL", "gloo")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this context created the process group (and must destroy it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_s: float = COLLECTIVE_TIMEOUT_S) -> DistContext:
    """Read torchrun's variables, pick the device, and join the process group (NCCL on GPU, gloo on CPU).

    device: "auto" (a GPU when one is visible and SM_NUM_GPUS is not 0), "cpu" or "cuda".
    timeout_s: how long any collective waits for the other ranks (see COLLECTIVE_TIMEOUT_S).
    """
    if device not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(DEVICE_CHOICES)}")
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    gpus_allowed = os.environ.get("SM_NUM_GPUS", "").strip() != "0"
    use_cuda = device == "cuda" or (device == "auto" and gpus_allowed and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    else:
        dev = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        owns = True
        log.info("distributed: rank %d of %d (local rank %d), backend %s", rank, world, local_rank, backend)
    return DistContext(rank, world, local_rank, dev, owns)


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sync_buffers(ctx: DistContext, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them at the start
    of each forward, so after the last training step each rank holds its own update: sync before
    evaluating or saving, so every rank evaluates, and keeps, the same model."""
    if ctx.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank if it is True on any rank (e.g. 'stop requested')."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's object on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.device.type == "cuda" else None)
    return box[0]


def broadcast_file(ctx: DistContext, path: os.PathLike | str) -> io.BytesIO | None:
    """Rank 0 reads a file and every rank gets its bytes (None if rank 0 has no such file).

    Checkpoints are written by rank 0 only; on several nodes the other nodes may not have them."""
    data = None
    if ctx.is_main and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    data = broadcast_object(ctx, data)
    return io.BytesIO(data) if data is not None else None


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def host_name() -> str:
    """This rank's host as SageMaker names it (SM_CURRENT_HOST: algo-1, algo-2, ...), else the machine's name."""
    return os.environ.get("SM_CURRENT_HOST") or socket.gethostname()


def describe_group(ctx: DistContext) -> str:
    """'4 ranks on 2 hosts: algo-1 ranks 0-1, algo-2 ranks 2-3' (hosts in the order of their first rank).
    A collective: every rank calls it."""
    hosts: dict[str, list[int]] = {}
    for rank, host in enumerate(gather_objects(ctx, host_name())):
        hosts.setdefault(host, []).append(rank)

    def ranks(rs: list[int]) -> str:
        return f"ranks {rs[0]}-{rs[-1]}" if len(rs) > 1 and rs == list(range(rs[0], rs[-1] + 1)) else \
            f"rank{'s' if len(rs) > 1 else ''} {','.join(map(str, rs))}"

    return (f"{ctx.world_size} rank{'s' if ctx.world_size > 1 else ''} on {len(hosts)} host"
            f"{'s' if len(hosts) > 1 else ''}: " + ", ".join(f"{h} {ranks(rs)}" for h, rs in hosts.items()))


def lost_peer(exc: BaseException) -> str | None:
    """The one-line reason if `exc` is a collective that failed because another rank died or stopped
    answering (None for any other error)."""
    text = str(exc).strip()
    if not isinstance(exc, RuntimeError) or not (isinstance(exc, dist.DistError) or any(m in text for m in _PEER_LOST)):
        return None
    line = text.splitlines()[0] if text else type(exc).__name__
    line = line.split("] ", 1)[-1] if line.startswith("[") else line  # gloo's "[.../pair.cc:545] " source tag
    return line.split(". This is typically", 1)[0].rstrip(".")
