"""The data folder on disk for `download`: files land under a temp name and are renamed only once
checked, and an index of verified files (size, mtime, label) lets a rerun trust them with one stat.

Also the content checks (a whole JPEG; metadata with a label) and the errors a transfer raises.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bincli.data import abid
from bincli.errors import DataError

log = logging.getLogger("bincli.download")

INDEX_FILE = ".download-index.json"
TEMP_SUFFIX = ".part"
INDEX_FLUSH_SECONDS = 5.0
_TEMP_TAG = f"{os.getpid()}-"
_temp_serial = itertools.count()  # unique temp names without a syscall (uuid4 reads urandom)


class FetchError(Exception):
    """One file could not be fetched. kind: missing | corrupt | denied | error."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class Interrupted(Exception):
    pass


class DiskError(Exception):
    """A local file could not be written (disk full, permissions): stops the whole run."""


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

    def prepare(self) -> int:
        """Create the folders, load the index, remove temp files an interrupted run left."""
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            self.metadata.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{self.root}: cannot create the data folder ({exc.strerror})") from None
        try:
            import json

            data = json.loads(self.index_path.read_text(encoding="utf-8"))
            self._index = {k: list(v) for k, v in data.get("files", {}).items()}
        except (OSError, ValueError, AttributeError):
            self._index = {}
        stale = 0
        for folder in (self.images, self.metadata):
            for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
                tmp.unlink(missing_ok=True)
                stale += 1
        return stale

    def image_path(self, id_: str) -> Path:
        return self.images / f"{id_}{abid.IMAGE_SUFFIX}"

    def metadata_path(self, id_: str) -> Path:
        return self.metadata / f"{id_}{abid.METADATA_SUFFIX}"

    @staticmethod
    def _rel(path: Path) -> str:
        return f"{path.parent.name}/{path.name}"

    def good(self, path: Path, check: Callable[[bytes], Any]) -> tuple[bool, Any]:
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
            extra = check(path.read_bytes())
        except (OSError, FetchError) as exc:
            log.info("%s: local copy is bad (%s); fetching it again", rel, getattr(exc, "reason", exc))
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

    def remember(self, path: Path, st: os.stat_result | None = None, extra: Any = None) -> None:
        st = st or path.stat()
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
            entry = self._index.get(f"{abid.METADATA_DIR}/{id_}{abid.METADATA_SUFFIX}")
        return entry[2] if entry and len(entry) > 2 else None

    def write(self, dest: Path, chunks: Iterable[bytes], expected: int | None, check: Callable[[bytes], Any],
              stop: threading.Event | None = None) -> tuple[int, Any]:
        """Stream chunks to a temp file beside dest; check size and content; rename. Returns (bytes, extra)."""
        tmp = dest.parent / f".{dest.name}.{_TEMP_TAG}{next(_temp_serial)}{TEMP_SUFFIX}"
        done = False
        try:
            parts = []
            # Disk errors become DiskError; network errors (some are OSErrors too) come out of
            # the chunks iterator as they are, for the fetcher to retry.
            try:
                f = open(tmp, "wb")  # noqa: SIM115 (closed below; its errors are told apart from the network's)
            except OSError as exc:
                raise DiskError(f"{tmp.parent}: cannot write ({exc.strerror})") from None
            with f:
                for chunk in chunks:
                    if stop is not None and stop.is_set():
                        raise Interrupted()
                    try:
                        f.write(chunk)
                    except OSError as exc:
                        raise DiskError(f"{tmp}: cannot write ({exc.strerror})") from None
                    parts.append(chunk)
                try:
                    f.flush()
                    st = os.fstat(f.fileno())  # size and mtime as they will stay (rename keeps them)
                except OSError as exc:
                    raise DiskError(f"{tmp}: cannot write ({exc.strerror})") from None
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            if expected is not None and len(data) != expected:
                raise FetchError("short", f"got {len(data)} bytes, Content-Length says {expected}")
            extra = check(data)
            os.replace(tmp, dest)
            done = True
        finally:
            if not done:
                tmp.unlink(missing_ok=True)
        self.remember(dest, st, extra)
        return len(data), extra

    def flush(self, force: bool = False) -> None:
        """Save the index, at most every few seconds unless forced. Atomic but not fsync'd: an
        index lost in a crash only means files are checked again (locally) on the next run."""
        with self._lock:
            if not self._dirty or (not force and time.monotonic() - self._flushed_at < INDEX_FLUSH_SECONDS):
                return
            snapshot = dict(self._index)
            self._dirty = False
            self._flushed_at = time.monotonic()
        import json

        tmp = self.index_path.with_name(f".{self.index_path.name}.{_TEMP_TAG}{next(_temp_serial)}.tmp")
        tmp.write_text(json.dumps({"version": 1, "files": snapshot}, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, self.index_path)


def check_jpeg(data: bytes) -> None:
    """A whole JPEG: Pillow's verify() (markers and header, ~0.02 ms) plus the end-of-image
    marker, which verify() does not look for: a truncated JPEG (a cut transfer, a half-uploaded
    object) lacks it. FF D9 cannot occur inside entropy-coded data (FF bytes there are stuffed),
    so finding it near the end means the file ends where the encoder ended it. A full decode
    is left to `split`, which decodes every image anyway."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(b"\xff\xd8"):
        raise FetchError("corrupt", "not a JPEG (no start-of-image marker)")
    if b"\xff\xd9" not in data[-1024:]:
        raise FetchError("corrupt", "truncated JPEG (no end-of-image marker)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                raise FetchError("corrupt", f"not a JPEG ({im.format})")
            im.verify()
    except UnidentifiedImageError:
        raise FetchError("corrupt", "not an image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise FetchError("corrupt", f"corrupt JPEG ({str(exc).splitlines()[0][:80]})") from None


def check_metadata(data: bytes) -> int:
    try:
        return abid.label_of(abid.parse_metadata(data))
    except ValueError as exc:
        raise FetchError("corrupt", f"bad metadata ({exc})") from None
