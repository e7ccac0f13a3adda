"""Per-image facts (size, brightness, contrast, perceptual hash), computed once per photo and cached.

A model's answers (for inspect's highest-loss sheet) are cached the same way, keyed by the
model archive's sha256 and the photo's.

One reduced decode per photo gives everything `inspect` and `split --group-near-duplicates`
need. Facts are keyed by the photo's sha256 in `<workdir>/cache/image-facts.sqlite`; a second
table maps (path, size, mtime) to that sha256, so a rerun only stats the photos it has seen
and reads just the new ones. The facts of each metadata file (data/bin_metadata.py) are kept
the same way, by (path, size, mtime): a cached rerun over 100,000 photos parses no JSON.
SQLite because several bincli processes may share the cache
(it locks and commits atomically) and a lookup of 10,000 rows takes milliseconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bincli import layout
from bincli.data import abid
from bincli.data.bin_metadata import BinFacts, read_bin
from bincli.errors import DataError

CACHE_FILE = "image-facts.sqlite"
# Bump when what is computed changes: older rows are then recomputed, never mixed in.
FACTS_VERSION = 1
BINS_VERSION = 1  # of the metadata facts (BinFacts' fields)
# Decode at (at least) this many pixels on each side: JPEG's DCT scaling makes it several
# times faster than a full decode, and brightness, contrast and a 9x8 hash do not need more.
DRAFT_SIDE = 64
HASH_W, HASH_H = 9, 8  # dHash: 8 rows of 8 left/right comparisons = 64 bits


@dataclass(frozen=True)
class Facts:
    sha256: str
    bytes: int
    width: int = 0
    height: int = 0
    luma: float = 0.0  # mean of Pillow's L (ITU-R 601 luma), 0..255
    contrast: float = 0.0  # standard deviation of that luma (RMS contrast)
    dhash: int = 0  # 64-bit difference hash, see dhash_bits
    error: str | None = None  # why the photo cannot be used (then the other figures are 0)


def facts_of_bytes(data: bytes) -> Facts:
    """Every figure of one photo from its bytes (pure: the same bytes give the same facts)."""
    from PIL import Image

    digest = hashlib.sha256(data).hexdigest()
    try:
        abid.check_photo(io.BytesIO(data))  # the same rules as split: JPEG, pixel cap, sane header
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            im.draft("L", (min(width, DRAFT_SIDE), min(height, DRAFT_SIDE)))
            grey = im.convert("L")
    except abid.BadImage as exc:
        return Facts(digest, len(data), error=exc.reason)
    except Exception as exc:  # hostile bytes may fail a decoder any way: one bad photo, not a crash
        return Facts(digest, len(data), error=f"corrupt image ({type(exc).__name__}: {str(exc)[:80]})")
    import numpy as np

    pixels = np.asarray(grey, dtype=np.float64)
    return Facts(digest, len(data), width, height, round(float(pixels.mean()), 3), round(float(pixels.std()), 3),
                 dhash_bits(grey))


def dhash_bits(grey) -> int:
    """The difference hash of a greyscale PIL image: shrink to 9x8, one bit per pixel that is
    brighter than its left neighbour (the algorithm of imagehash.dhash, without its scipy and
    PyWavelets dependencies). Brightness and size changes leave it alone; content changes flip bits."""
    import numpy as np
    from PIL import Image

    small = np.asarray(grey.resize((HASH_W, HASH_H), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


# ---------------------------------------------------------------- the cache
class FactsCache:
    """The sqlite cache; one connection per call site (threads never share it). A broken cache
    file is one DataError naming it (it only holds what can be recomputed: delete it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors():
            self.db = sqlite3.connect(self.path, timeout=60)
            self._create()

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise DataError(f"{self.path}: the image-facts cache is unusable ({exc})",
                            hint="delete it; the next run recomputes it") from None

    def _create(self) -> None:
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
            "sha256 TEXT);"
            "CREATE TABLE IF NOT EXISTS facts (sha256 TEXT PRIMARY KEY, version INTEGER, bytes INTEGER, "
            "width INTEGER, height INTEGER, luma REAL, contrast REAL, dhash TEXT, error TEXT);"
            "CREATE TABLE IF NOT EXISTS bins (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
            "version INTEGER, facts TEXT);"
            "CREATE TABLE IF NOT EXISTS answers (model TEXT, sha256 TEXT, answer TEXT, "
            "PRIMARY KEY (model, sha256));")

    @classmethod
    def for_workdir(cls, workdir: Path) -> FactsCache:
        return cls(layout.under(workdir, layout.CACHE_DIR, CACHE_FILE))

    def known(self) -> tuple[dict[str, tuple[int, int, str]], dict[str, Facts]]:
        with self._errors():
            return self._known()

    def _known(self) -> tuple[dict[str, tuple[int, int, str]], dict[str, Facts]]:
        files = {p: (s, m, h) for p, s, m, h in self.db.execute("SELECT path, size, mtime_ns, sha256 FROM files")}
        facts = {}
        for sha, bytes_, w, h, luma, contrast, dh, error in self.db.execute(
                "SELECT sha256, bytes, width, height, luma, contrast, dhash, error FROM facts WHERE version = ?",
                (FACTS_VERSION,)):
            facts[sha] = Facts(sha, bytes_, w, h, luma, contrast, int(dh, 16), error)
        return files, facts

    def add(self, rows: Sequence[tuple[str, int, int, Facts]]) -> None:
        with self._errors(), self.db:  # one transaction: all of this batch or none of it
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                [(p, s, m, f.sha256) for p, s, m, f in rows])
            self.db.executemany("INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(f.sha256, FACTS_VERSION, f.bytes, f.width, f.height, f.luma, f.contrast,
                                  f"{f.dhash:016x}", f.error) for _, _, _, f in rows])

    def bins(self) -> dict[str, tuple[int, int, str]]:
        """{metadata path: (size, mtime_ns, facts as JSON)} of the current version."""
        with self._errors():
            return {p: (s, m, f) for p, s, m, f in self.db.execute(
                "SELECT path, size, mtime_ns, facts FROM bins WHERE version = ?", (BINS_VERSION,))}

    def add_bins(self, rows: Sequence[tuple[str, int, int, str]]) -> None:
        with self._errors(), self.db:
            self.db.executemany("INSERT OR REPLACE INTO bins VALUES (?, ?, ?, ?, ?)",
                                [(p, s, m, BINS_VERSION, f) for p, s, m, f in rows])

    def answers(self, model: str) -> dict[str, dict]:
        """A model's cached answers, {photo sha256: answer}; `model` is the archive's sha256."""
        with self._errors():
            rows = self.db.execute("SELECT sha256, answer FROM answers WHERE model = ?", (model,)).fetchall()
        return {sha: json.loads(answer) for sha, answer in rows}

    def add_answers(self, model: str, answers: dict[str, dict]) -> None:
        with self._errors(), self.db:
            self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                                [(model, sha, json.dumps(a, sort_keys=True)) for sha, a in answers.items()])

    def close(self) -> None:
        self.db.close()


@dataclass
class Survey:
    facts: dict[str, Facts]  # id -> facts (photos that could not be read are in `unreadable`)
    unreadable: dict[str, str]  # id -> reason (file errors; bad photos have Facts.error)
    computed: int  # photos read this time (the rest came from the cache)


def survey(images: dict[str, Path], cache: FactsCache, workers: int = 4,
           progress: Callable[[int, int], None] | None = None) -> Survey:
    """Facts for {id: image path}: from the cache when the file is unchanged, else read once."""
    files, known = cache.known()
    out: dict[str, Facts] = {}
    unreadable: dict[str, str] = {}
    todo: list[tuple[str, Path, int, int]] = []
    for id_, path in images.items():
        try:
            st = os.stat(path)
        except OSError as exc:
            unreadable[id_] = f"unreadable image ({exc.strerror or type(exc).__name__})"
            continue
        seen = files.get(str(path))
        if seen and seen[:2] == (st.st_size, st.st_mtime_ns) and seen[2] in known:
            out[id_] = known[seen[2]]
        else:
            todo.append((id_, path, st.st_size, st.st_mtime_ns))

    def compute(job: tuple[str, Path, int, int]) -> tuple[str, Path, int, int, Facts | str]:
        id_, path, size, mtime = job
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return id_, path, size, mtime, f"unreadable image ({exc.strerror or type(exc).__name__})"
        digest = hashlib.sha256(data).hexdigest()
        return id_, path, size, mtime, known.get(digest) or facts_of_bytes(data)

    batch: list[tuple[str, int, int, Facts]] = []
    pool = ThreadPoolExecutor(max_workers=workers)  # hashing and decoding release the GIL
    try:
        for n, (id_, path, size, mtime, result) in enumerate(pool.map(compute, todo), 1):
            if isinstance(result, str):
                unreadable[id_] = result
            else:
                out[id_] = result
                batch.append((str(path), size, mtime, result))
            if len(batch) >= 500:
                cache.add(batch)
                batch = []
            if progress:
                progress(n, len(todo))
    except BaseException:  # Ctrl-C: stop now, neither after the queued photos nor a stuck read
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()  # not `with`: its exit would wait for a stuck worker after Ctrl-C
    if batch:
        cache.add(batch)
    return Survey(out, unreadable, len(todo))


def read_bins(metadata: dict[str, Path], cache: FactsCache) -> tuple[dict[str, BinFacts | str], int]:
    """read_bin of each {id: metadata path} (facts, or the reason it cannot be used), from the
    cache when the file is unchanged; returns them and how many files were read this time."""
    known = cache.bins()
    out: dict[str, BinFacts | str] = {}
    new: list[tuple[str, int, int, str]] = []
    read = 0
    for id_, path in metadata.items():
        try:
            st = os.stat(path)
        except OSError:
            out[id_] = read_bin(path)  # (says why it cannot be read)
            continue
        seen = known.get(str(path))
        if seen and seen[:2] == (st.st_size, st.st_mtime_ns):
            doc = json.loads(seen[2])
            out[id_] = doc if isinstance(doc, str) else BinFacts(**doc)
            continue
        got = read_bin(path)
        out[id_] = got
        read += 1
        new.append((str(path), st.st_size, st.st_mtime_ns, json.dumps(got if isinstance(got, str) else asdict(got))))
        if len(new) >= 5000:
            cache.add_bins(new)
            new = []
    if new:
        cache.add_bins(new)
    return out, read
