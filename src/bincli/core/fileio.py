"""Atomic file writes: write a temp file beside the target, fsync, then rename over it. And the
streamed sha256 of a file (models, weights), the one way bincli names a file's content.

Readers never see a half-written file under the final name. Lives in core because the training
entry point (which runs without the rest of bincli) writes checkpoints and metrics the same way.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read a block at a time (a model archive can be large)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write `path` through, for output too large to hold in memory (a model
    archive): a temp file beside it, synced and renamed over `path` when the block ends, removed
    if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new `.<name>.<random>.tmp` beside `path`, opened for writing, with the mode any new file
    gets (0o666 less the umask, as open() and shells make it), not mkstemp's 0600: outputs are read
    by other users and tools (CI, containers) like any file. The kernel applies the umask, so it is
    never read (reading it means setting it, which races with other threads)."""
    for _ in range(tempfile.TMP_MAX):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name beside {path}")


def sweep_temp_files(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temp files that atomic writes of `names` left in `directory` when a process was
    killed mid-write (SIGKILL skips the cleanup above). Only `.<name>.<random>.tmp` of the given
    names: whoever calls this must be the only writer of those files. Returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for name in names:
        for tmp in directory.glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
