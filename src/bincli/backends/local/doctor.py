"""`bincli doctor` on backend local: what this machine offers the pipeline (disk, the deploy port,
cores and GPUs, a browser to render the pages headless)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from bincli.backends.checks import FAIL, OK, WARN, Check
from bincli.config import Config

GIB = 1024**3
MIN_FREE_GIB = 1    # below this a download or a training run fails part way
WARN_FREE_GIB = 5   # the study set (~10,400 photos), its splits, runs and models take a few GiB


def doctor(cfg: Config) -> list[Check]:
    return [_disk(Path(cfg.workdir)), _port(cfg), _cpus(), _gpu(cfg.train.device), _chromium()]


def _disk(workdir: Path) -> Check:
    where = workdir.resolve()
    while not where.exists() and where != where.parent:  # the workdir may not exist yet
        where = where.parent
    free = shutil.disk_usage(where).free / GIB
    detail = f"{free:.1f} GiB free at {where}"
    if free < MIN_FREE_GIB:
        return Check("disk", FAIL, detail, f"free some space, or -w a workdir on a disk with >= {WARN_FREE_GIB} GiB")
    if free < WARN_FREE_GIB:
        return Check("disk", WARN, detail + " (the study set, its runs and models take a few GiB)",
                     f"-w a workdir on a disk with >= {WARN_FREE_GIB} GiB free")
    return Check("disk", OK, detail)


def _port(cfg: Config) -> Check:
    host, port = cfg.deploy.host, cfg.deploy.port
    if port == 0:
        return Check("deploy port", OK, "deploy.port 0: deploy picks a free port")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if _ours(cfg, port):
                return Check("deploy port", OK, f"{host}:{port} serves this workspace's endpoint "
                             "('bincli deploy --update' replaces its model)")
            return Check("deploy port", FAIL, f"{host}:{port} is taken ({exc.strerror})",
                         "--port 0 (any free port) or --set deploy.port=<free port>")
    return Check("deploy port", OK, f"{host}:{port} is free")


def _ours(cfg: Config, port: int) -> bool:
    from bincli.backends.local.endpoint import running_servers
    from bincli.backends.records import recorded_endpoint
    from bincli.errors import BincliError
    from bincli.state import State

    try:
        record = recorded_endpoint(State(cfg.workdir), backend="local")
    except BincliError:
        return False
    return bool(record and record.get("port") == port and running_servers(record))


def _cpus() -> Check:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Check("cpus", OK, f"{usable} usable of {os.cpu_count()} cores")


def _gpu(device: str) -> Check:
    import torch

    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        return Check("gpu", OK, f"{torch.cuda.device_count()} CUDA device(s): {', '.join(names)}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return Check("gpu", OK, "Apple MPS")
    if device not in ("auto", "cpu"):
        return Check("gpu", FAIL, f"train.device is {device} but torch sees no GPU",
                     "--set train.device=auto (CPU here), or install a CUDA build of torch")
    return Check("gpu", OK, "none seen: training runs on the CPU (small image sizes train in minutes)")


def _chromium() -> Check:
    found = next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)
    if found:
        return Check("chromium", OK, found)
    return Check("chromium", WARN, "not found: the data and run pages open in any browser, but are not "
                 "rendered headless here (the page tests skip)", "install chromium to render and check the pages")
