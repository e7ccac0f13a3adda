"""A model.tar.gz loaded in this process: extracted safely, then the handler's model_fn (imports torch)."""

from __future__ import annotations

import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bincli.core.contract import MODEL_INFO_FILE, WEIGHTS_FILE
from bincli.errors import DataError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_model(model_tar: Path, workdir: Path | None = None) -> tuple[Any, Path]:
    """Extract model.tar.gz safely into a fresh folder and run model_fn on it.

    The folder is made inside `workdir` (created if missing) when given, else in the system temp
    folder. Returns (model, extracted folder); the caller removes the folder when done. A bad
    archive, model_info.json or model.pth is one DataError line naming the archive.
    """
    from bincli.artifacts.modeltar import extract_model, read_model_info_file

    model_tar = Path(model_tar)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bincli-model-", dir=workdir))
    try:
        extract_model(model_tar, tmp)
        info = read_model_info_file(tmp / MODEL_INFO_FILE, model_tar)  # checked before torch sees it
        from bincli.core import inference

        try:
            return inference.model_fn(tmp), tmp
        except pickle.UnpicklingError as exc:
            raise DataError(f"{model_tar}: {WEIGHTS_FILE} is not a plain state_dict; torch.load(weights_only=True) "
                            f"refused it ({_detail(exc)})") from exc
        except Exception as exc:  # a state_dict for another net, a tensor instead of a dict, a torn zip...
            raise DataError(f"{model_tar}: {WEIGHTS_FILE} does not load into a {info['arch']} for classes "
                            f"{info['classes']} ({_detail(exc)})") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _detail(exc: BaseException) -> str:
    """The informative line of torch's multi-line messages (not its advice to disable weights_only)."""
    text = _ANSI.sub("", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split(". Please", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Error(s) in loading")]
    line = " ".join((lines[0] if lines else type(exc).__name__).split())
    return line if len(line) <= 200 else line[:200] + "..."


def warm_up(model: Any) -> None:
    """One forward pass, so the first real request does not pay for allocator and kernel setup."""
    import torch

    from bincli.core import inference

    size = model.image_size
    inference.predict_fn(torch.zeros(1, 3, size, size), model)
