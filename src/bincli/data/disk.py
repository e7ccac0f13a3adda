"""Local writes of the data steps: any OSError (disk full, read-only, permissions, a file where a
folder should be) becomes one DiskError line naming the path and the cause."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bincli.errors import BincliError

_HINT = "free some space or make it writable, then run the same command again"


class DiskError(BincliError):
    """A local file or folder could not be written: stops the step (exit 1)."""


def disk_error(exc: OSError, path: str | Path, exact: bool = False) -> DiskError:
    """`<path>: cannot write (No space left on device)`: the path the OS names (the folder that
    could not be made, say), else `path`; with `exact`, always `path` (not a temp name)."""
    where = path if exact or exc.filename is None else exc.filename
    if exc.errno == errno.EEXIST:  # mkdir(exist_ok=True) met a file where a folder should be
        cause = "a file is in the way of a folder"
    else:
        cause = exc.strerror or errno.errorcode.get(exc.errno or 0) or str(exc)
    return DiskError(f"{where}: cannot write ({cause})", hint=_HINT)


@contextmanager
def writing(path: str | Path, exact: bool = False) -> Iterator[None]:
    """Turn an OSError raised inside into a DiskError about `path` (see disk_error)."""
    try:
        yield
    except OSError as exc:
        raise disk_error(exc, path, exact) from None
