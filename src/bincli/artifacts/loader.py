"""A model.tar.gz loaded in this process: extracted safely, then the handler's model_fn (imports torch)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any


def load_model(model_tar: Path, workdir: Path | None = None) -> tuple[Any, Path]:
    """Extract model.tar.gz safely into a fresh temp dir and run model_fn on it.

    Returns (model, extracted dir); the caller removes the dir when done.
    """
    from bincli.artifacts.modeltar import extract_model
    from bincli.core import inference

    tmp = Path(tempfile.mkdtemp(prefix="bincli-model-", dir=workdir))
    try:
        extract_model(Path(model_tar), tmp)
        return inference.model_fn(tmp), tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def warm_up(model: Any) -> None:
    """One forward pass, so the first real request does not pay for allocator and kernel setup."""
    import torch

    from bincli.core import inference

    size = model.image_size
    inference.predict_fn(torch.zeros(1, 3, size, size), model)
