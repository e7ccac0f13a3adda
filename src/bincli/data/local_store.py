"""The data folder on disk for `download`: files are streamed to a temp name and renamed only once
checked, and an index of verified files (size, mtime, label) lets a rerun trust them with one stat.

Also the content checks (a whole JPEG; metadata with a label) and the errors a transfer raises.
Local write failures are DiskError (bincli.data.disk): they stop the run with one line.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from bincli.data import abid
from bincli.data.disk import disk_error, writing
from bincli.errors import DataError

log = logging.getLogger("bincli.download")

INDEX_FILE = ".download-index.json"
TEMP_SUFFIX = ".part"
INDEX_FLUSH_SECONDS = 5.0
_TEMP_TAG = f"{os.getpid()}-"
_temp_serial = itertools.count()  # unique temp names without a syscall (uuid4 reads urandom)

Check = Callable[[IO[bytes]], Any]  # reads an open file, returns the label (or None), raises FetchError


class FetchError(Exception):
    """One file could not be fetched. kind: missing | corrupt | too_large | denied | error."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Interrupted(Exception):
    pass


class LocalStore:
    """The data folder: final files, temp files, and the index of verified files."""

    def __init__(self, root: Path):
        self.root = root
        self.images = root / abid.IMAGES_DIR
        self.metadata = root / abid.METADATA_DIR
        self.index_path = root / INDEX_FILE
        self._lock = threading.Lock()
        self._index: dict[str, list[int]] = {}
        self._dirty = False
        self._flushed_at = time.monotonic()
        self._flush_every = INDEX_FLUSH_SECONDS

    def prepare(self) -> int:
        """Create the folders, load the index, remove temp files an interrupted run left."""
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            self.metadata.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{self.root}: cannot create the data folder ({exc.strerror})") from None
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
            self._index = {k: list(v) for k, v in data.get("files", {}).items()}
        except (OSError, ValueError, AttributeError):
            self._index = {}
        stale = 0
        for folder in (self.images, self.metadata):
            for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
                with writing(tmp):
                    tmp.unlink(missing_ok=True)
                stale += 1
        return stale

    def image_path(self, id_: str) -> Path:
        return self.root / abid.image_rel(id_)

    def metadata_path(self, id_: str) -> Path:
        return self.root / abid.metadata_rel(id_)

    @staticmethod
    def _rel(path: Path) -> str:
        return f"{path.parent.name}/{path.name}"

    def good(self, path: Path, check: Check) -> tuple[bool, Any]:
        """Is the final file there and sound? (ok, label-or-None). A bad file is removed."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False, None
        rel = self._rel(path)
        with self._lock:
            entry = self._index.get(rel)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return True, entry[2] if len(entry) > 2 else None
        try:
            with open(path, "rb") as f:
                extra = check(f)
        except (OSError, FetchError) as exc:
            log.info("%s: local copy is bad (%s); fetching it again", rel, getattr(exc, "reason", exc))
            with writing(path):
                path.unlink(missing_ok=True)
            self.forget(path)
            return False, None
        self.remember(path, st, extra)
        return True, extra

    def known_good(self, path: Path) -> bool:
        """Fast path: the index has this file with the same size and mtime (one stat, no read)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        with self._lock:
            entry = self._index.get(self._rel(path))
        return bool(entry) and entry[0] == st.st_size and entry[1] == st.st_mtime_ns

    def complete_ids(self, ids: list[str]) -> set[str]:
        """The ids whose metadata and image the index knows unchanged: known_good for many ids at
        once, with plain strings (pathlib's objects were most of a no-op rerun over 30,000 ids)."""
        root = str(self.root)
        done = set()
        with self._lock:
            for id_ in ids:
                for rel in (abid.metadata_rel(id_), abid.image_rel(id_)):
                    entry = self._index.get(rel)
                    try:
                        st = os.stat(f"{root}/{rel}") if entry else None
                    except FileNotFoundError:
                        st = None
                    if st is None or entry[0] != st.st_size or entry[1] != st.st_mtime_ns:
                        break
                else:
                    done.add(id_)
        return done

    def remember(self, path: Path, st: os.stat_result, extra: Any = None) -> None:
        entry = [st.st_size, st.st_mtime_ns] + ([extra] if extra is not None else [])
        with self._lock:
            self._index[self._rel(path)] = entry
            self._dirty = True

    def forget(self, path: Path) -> None:
        with self._lock:
            if self._index.pop(self._rel(path), None) is not None:
                self._dirty = True

    def label(self, id_: str) -> int | None:
        with self._lock:
            entry = self._index.get(abid.metadata_rel(id_))
        return entry[2] if entry and len(entry) > 2 else None

    def write(self, dest: Path, chunks: Iterable[bytes], expected: int | None, check: Check,
              stop: threading.Event | None = None) -> tuple[int, Any]:
        """Stream chunks to a temp file beside dest (never more than one chunk in memory), check
        its size and content, rename. Returns (bytes, extra). Network errors come out of `chunks`
        as they are, for the fetcher to retry; local ones as DiskError, which stops the run."""
        tmp = dest.parent / f".{dest.name}.{_TEMP_TAG}{next(_temp_serial)}{TEMP_SUFFIX}"
        done = False
        try:
            with writing(dest, exact=True):  # name the file the user knows, not its temp name
                f = open(tmp, "w+b")  # noqa: SIM115 (closed below; its errors are told apart from the network's)
            with f:
                size = 0
                for chunk in chunks:
                    if stop is not None and stop.is_set():
                        raise Interrupted()
                    with writing(dest, exact=True):
                        f.write(chunk)
                    size += len(chunk)
                with writing(dest, exact=True):
                    f.flush()
                    st = os.fstat(f.fileno())  # size and mtime as they will stay (rename keeps them)
                if expected is not None and size != expected:
                    raise FetchError("short", f"got {size} bytes, Content-Length says {expected}")
                f.seek(0)
                try:
                    extra = check(f)
                except OSError as exc:  # reading our own temp file back: the disk, not the data
                    raise disk_error(exc, dest, exact=True) from None
            with writing(dest, exact=True):
                os.replace(tmp, dest)
            done = True
        finally:
            if not done:
                with contextlib.suppress(OSError):  # best effort: the error that got us here is the one to tell
                    tmp.unlink(missing_ok=True)
        self.remember(dest, st, extra)
        return size, extra

    def flush(self, force: bool = False) -> None:
        """Save the index, at most every few seconds unless forced. Atomic but not fsync'd: an
        index lost in a crash only means files are checked again (locally) on the next run.
        Raises DiskError if it cannot be written (the index in memory stays dirty)."""
        with self._lock:
            if not self._dirty or (not force and time.monotonic() - self._flushed_at < self._flush_every):
                return
            snapshot = dict(self._index)
            self._dirty = False
            self._flushed_at = time.monotonic()
        tmp = self.index_path.with_name(f".{self.index_path.name}.{_TEMP_TAG}{next(_temp_serial)}.tmp")
        try:
            with writing(self.index_path, exact=True):
                tmp.write_text(json.dumps({"version": 1, "files": snapshot}, separators=(",", ":")),
                               encoding="utf-8")
                os.replace(tmp, self.index_path)
            # The whole index is rewritten: at 60,000 files that takes a while, so keep saving it
            # under 5% of the run (it grows with the download; a fixed period would be quadratic).
            self._flush_every = max(INDEX_FLUSH_SECONDS, 20 * (time.monotonic() - self._flushed_at))
        except BaseException:
            with self._lock:
                self._dirty = True  # a later flush tries again
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def check_jpeg(f: IO[bytes]) -> None:
    """A whole JPEG: the start marker, the end-of-image marker (which Pillow's verify() does not
    look for: a truncated JPEG, from a cut transfer or a half-uploaded object, lacks it; FF D9
    cannot occur inside entropy-coded data, so finding it near the end means the file ends where
    the encoder ended it), then the ABID photo rules with verify() (markers and header, size cap).
    A full decode is left to `split`, which decodes every image anyway."""
    if f.read(2) != b"\xff\xd8":
        raise FetchError("corrupt", "not a JPEG (no start-of-image marker)")
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 1024))
    if b"\xff\xd9" not in f.read():
        raise FetchError("corrupt", "truncated JPEG (no end-of-image marker)")
    f.seek(0)
    try:
        abid.check_photo(f)
    except abid.BadImage as exc:
        raise FetchError(exc.kind, exc.reason) from None


def check_metadata(f: IO[bytes]) -> int:
    try:
        return abid.read_label(f)
    except ValueError as exc:
        raise FetchError("corrupt", str(exc)) from None
