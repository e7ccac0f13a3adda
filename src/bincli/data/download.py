"""The `download` step: ABID images + metadata from the public bucket (or any S3 server) to disk.

What to fetch (one of):
  - an explicit id list (`ids`, `ids_file`);
  - the Udacity subset list (`file_list`), as it is;
  - a per-class sample (`per_class` + `classes`, seeded): the metadata keys are listed, shuffled
    with the seed and their metadata fetched lazily, in that order, until every class is full.
    The real bucket has 536K keys; only about as many metadata files are read as it takes.
    A chosen id whose image cannot be fetched is replaced by the next one of its class.
    With `file_list` too, the sample is drawn from the list's classes (no metadata reads needed).

Layout (the data contract): `<workdir>/data/images/<id>.jpg` and `<workdir>/data/metadata/<id>.json`,
plus `download-report.json` (every failure by id), `download-ids.txt` (the ids of this selection
that are complete) and `.download-index.json` (size, mtime and label of each verified file).

Fast: one shared boto3 client, a thread pool of `workers`, a connection pool to match, bodies
streamed to disk. Safe: each file goes to a temp name beside its target and is renamed only
after its size (Content-Length) and content (a whole JPEG: Pillow verify + end marker; JSON
with a label) check out, so an interrupted run never leaves a half file under a final name.
A rerun trusts files the index knows (same size and mtime: a stat, no read), checks the others
locally, and fetches only what is missing or bad. Files are not fsync'd one by one: one that
a crash left short or empty fails these checks on the rerun and is fetched again.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bincli.config import DownloadConfig
from bincli.core.classes import ClassSpec
from bincli.core.fileio import atomic_write_json, atomic_write_text
from bincli.data import abid
from bincli.data.progress import Progress
from bincli.errors import BincliError, DataError, UsageError
from bincli.state import State

log = logging.getLogger("bincli.download")

DATA_DIR = "data"
REPORT_FILE = "download-report.json"
IDS_FILE = "download-ids.txt"
INDEX_FILE = ".download-index.json"
PLAN_FILE = ".download-plan.json"
TEMP_SUFFIX = ".part"
CHUNK = 1 << 16
INDEX_FLUSH_SECONDS = 5.0
_TEMP_TAG = f"{os.getpid()}-"
_temp_serial = itertools.count()  # unique temp names without a syscall (uuid4 reads urandom)


class DownloadFailed(BincliError):
    """The step ran but its result is a failure (nothing usable, or --strict with failures).

    Carries the result so the CLI can still show the summary table before the error line."""

    def __init__(self, message: str, result: dict[str, Any], hint: str | None = None):
        super().__init__(message, hint)
        self.result = result


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


# ================================================================ local files
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


# ================================================================ remote files
@dataclass
class Stats:
    requests: Counter = field(default_factory=Counter)
    nbytes: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str) -> None:
        with self.lock:
            self.requests[kind] += 1


class Fetcher:
    """GETs one object to a file (or into memory), with retries for what botocore does not
    retry itself: a connection dropped while the body streams, a body shorter than promised.
    (Throttling, 5xx and connect/read timeouts on the request are retried by botocore.)"""

    def __init__(self, client: Any, bucket: str, store: LocalStore, retries: int, stats: Stats,
                 stop: threading.Event, progress: Progress | None = None):
        self.client = client
        self.bucket = bucket
        self.store = store
        self.retries = retries
        self.stats = stats
        self.stop = stop
        self.progress = progress

    def to_file(self, key: str, dest: Path, check: Callable[[bytes], Any], kind: str) -> tuple[int, Any]:
        return self._get(key, kind, lambda chunks, expected: self.store.write(dest, chunks, expected, check,
                                                                               self.stop))

    def to_memory(self, key: str, check: Callable[[bytes], Any], kind: str) -> tuple[bytes, Any]:
        def sink(chunks: Iterable[bytes], expected: int | None) -> tuple[bytes, Any]:
            data = b"".join(chunks)
            if expected is not None and len(data) != expected:
                raise FetchError("short", f"got {len(data)} bytes, Content-Length says {expected}")
            return data, check(data)

        return self._get(key, kind, sink)

    def _get(self, key: str, kind: str, sink: Callable[[Iterable[bytes], int | None], Any]) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            IncompleteReadError,
        )

        # OSError: a socket error botocore did not wrap (local disk errors come as DiskError).
        transient = (HTTPClientError, ConnectionError, IncompleteReadError, OSError)
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Interrupted()
            failure: BaseException
            try:
                self.stats.count(kind)
                resp = self.client.get_object(Bucket=self.bucket, Key=key)
                body = resp["Body"]
                try:
                    return sink(self._counted(body.iter_chunks(CHUNK)), resp.get("ContentLength"))
                finally:
                    body.close()
            except ClientError as exc:
                raise _client_failure(exc) from None
            except FetchError as exc:
                if exc.kind != "short":
                    raise
                failure = exc
            except transient as exc:
                failure = exc
            except BotoCoreError as exc:
                raise FetchError("error", f"{type(exc).__name__}: {exc}") from None
            if attempt >= self.retries:
                reason = getattr(failure, "reason", None) or f"{type(failure).__name__}: {failure}"
                raise FetchError("error", f"{reason} (gave up after {attempt + 1} tries)")
            attempt += 1
            with self.stats.lock:
                self.stats.retries += 1
            log.debug("%s: %s; retry %d of %d", key, failure, attempt, self.retries)
            # Full-jitter exponential backoff, as botocore's: 0..min(20, 0.5 * 2^attempt) s.
            if self.stop.wait(random.uniform(0, min(20.0, 0.5 * 2**attempt))):
                raise Interrupted()

    def _counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self.stop.is_set():
                raise Interrupted()
            with self.stats.lock:
                self.stats.nbytes += len(chunk)
            if self.progress is not None:
                self.progress.add_bytes(len(chunk))
            yield chunk


def _client_failure(exc: Any) -> FetchError:
    from bincli.data.s3 import error_code

    code = error_code(exc) or "?"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in {"NoSuchKey", "404", "NotFound"}:
        return FetchError("missing", "not in the bucket (404 NoSuchKey)")
    if code in {"AccessDenied", "403"}:
        return FetchError("denied", "access denied (403)")
    return FetchError("error", f"S3 error {code}" + (f" (HTTP {status})" if status else ""))


# ================================================================ what to fetch
@dataclass
class Selection:
    mode: str  # "ids" | "file_list" | "per_class"
    ids: list[str] | None = None  # fixed list (ids, file_list)
    candidates: list[tuple[str, int]] | None = None  # (id, count) known up front (file_list + per_class)
    describe: str = ""


def select(cfg: DownloadConfig, ids: list[str] | None = None) -> Selection:
    """Turn the config (and a flag's ids) into what to fetch; conflicting or missing choices fail."""
    explicit = list(ids or []) + list(cfg.ids or [])
    chosen = [name for name, on in (("--ids", bool(explicit)), ("--ids-file", cfg.ids_file is not None),
                                      ("--file-list", cfg.file_list is not None)) if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one source of ids, got {' and '.join(chosen)}")
    if cfg.per_class is not None and (explicit or cfg.ids_file is not None):
        raise UsageError(f"--per-class samples from the bucket or a --file-list, not from {chosen[0]}")
    if not chosen and cfg.per_class is None:
        raise UsageError("nothing to download: choose --per-class N, --file-list FILE, --ids-file FILE or --ids",
                         hint="e.g. bincli download --per-class 500 --classes 1-5")
    if explicit:
        try:
            fixed = abid.dedupe(abid.normalize_id(i) for i in explicit)
        except ValueError as exc:
            raise UsageError(f"--ids: {exc}") from None
        return Selection("ids", ids=fixed, describe=f"{len(fixed)} listed ids")
    if cfg.ids_file is not None:
        fixed = abid.read_ids_file(_existing(cfg.ids_file, "--ids-file"))
        return Selection("ids", ids=fixed, describe=f"{len(fixed)} ids from {cfg.ids_file}")
    if cfg.file_list is not None:
        groups = abid.read_file_list(_existing(cfg.file_list, "--file-list"))
        if cfg.per_class is None:
            fixed = [i for members in groups.values() for i in members]
            return Selection("file_list", ids=fixed, describe=f"{len(fixed)} ids from {cfg.file_list}")
        spec = ClassSpec.parse(cfg.classes)
        candidates = sorted((i, int(c)) for c, members in groups.items() for i in members if spec.contains(int(c)))
        return Selection("per_class", candidates=candidates,
                         describe=f"{cfg.per_class} per class {spec} from {cfg.file_list}, seed {cfg.seed}")
    spec = ClassSpec.parse(cfg.classes)
    return Selection("per_class", describe=f"{cfg.per_class} per class {spec} from the bucket, seed {cfg.seed}")


def _existing(path: Path, flag: str) -> Path:
    if not Path(path).is_file():
        raise UsageError(f"{flag} {path}: file not found")
    return Path(path)


# ================================================================ the run
@dataclass
class Outcome:
    id: str
    ok: bool
    label: int | None = None
    fetched: bool = False
    failure: dict[str, str] | None = None


class Downloader:
    def __init__(self, cfg: DownloadConfig, store: LocalStore, progress: Progress):
        self.cfg = cfg
        self.store = store
        self.progress = progress
        self.stats = Stats()
        self.stop = threading.Event()
        self._client_lock = threading.Lock()
        self._fetcher: Fetcher | None = None
        self.pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="download")

    @property
    def fetcher(self) -> Fetcher:
        """The one client, made when something first has to come over the network."""
        with self._client_lock:
            if self._fetcher is None:
                from bincli.data.s3 import make_client

                client = make_client(endpoint_url=self.cfg.endpoint_url, unsigned=True, region=abid.REGION,
                                     pool_size=self.cfg.workers + 4, retries=self.cfg.retries, lean=True)
                self._fetcher = Fetcher(client, self.cfg.bucket, self.store, self.cfg.retries, self.stats,
                                        self.stop, self.progress)
            return self._fetcher

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=cancel)

    # ------------------------------------------------------------ one id
    def complete(self, id_: str, metadata: bytes | None = None) -> Outcome:
        """Make sure <id>.json and <id>.jpg are on disk and sound; fetch what is not."""
        fetched = False
        what = "metadata"
        meta_path, image_path = self.store.metadata_path(id_), self.store.image_path(id_)
        try:
            ok, label = self.store.good(meta_path, check_metadata)
            if not ok:
                if metadata is not None:  # already fetched while sampling
                    _, label = self.store.write(meta_path, [metadata], len(metadata), check_metadata)
                else:
                    _, label = self.fetcher.to_file(abid.metadata_key(id_), meta_path, check_metadata, "metadata")
                fetched = True
            what = "image"
            ok, _ = self.store.good(image_path, check_jpeg)
            if not ok:
                self.fetcher.to_file(abid.image_key(id_), image_path, check_jpeg, "image")
                fetched = True
        except DiskError as exc:  # the local disk, not the transfer: stop the run
            raise DataError(str(exc)) from None
        except FetchError as exc:
            # Keep the folder consistent: no metadata without its image (split would flag it).
            if what == "image":
                meta_path.unlink(missing_ok=True)
                self.store.forget(meta_path)
            key = abid.image_key(id_) if what == "image" else abid.metadata_key(id_)
            return Outcome(id_, False, label, fetched,
                           {"id": id_, "file": what, "key": key, "kind": exc.kind, "reason": exc.reason})
        finally:
            self.store.flush()
        return Outcome(id_, True, label, fetched)

    def _done(self, outcome: Outcome) -> Outcome:
        self.progress.advance(1, failed=0 if outcome.ok else 1)
        return outcome

    # ------------------------------------------------------------ a fixed list
    def fixed(self, ids: list[str]) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        todo = []
        for id_ in ids:
            meta_path = self.store.metadata_path(id_)
            if self.store.known_good(meta_path) and self.store.known_good(self.store.image_path(id_)):
                outcomes[id_] = Outcome(id_, True, self.store.label(id_))
            else:
                todo.append(id_)
        self.progress.advance(len(outcomes))
        if todo:
            _ = self.fetcher  # make the client once, before the workers need it
            futures = [self.pool.submit(lambda i=id_: self._done(self.complete(i))) for id_ in todo]
            for fut in futures:
                out = fut.result()
                outcomes[out.id] = out
        return [outcomes[i] for i in ids]

    # ------------------------------------------------------------ a per-class sample
    def sample(self, selection: Selection, spec: ClassSpec) -> tuple[list[Outcome], dict[str, Any]]:
        per_class = self.cfg.per_class or 0
        need = {c: per_class for c in spec.counts}
        rng = random.Random(self.cfg.seed)
        skipped: list[dict[str, str]] = []
        if selection.candidates is not None:
            order = list(selection.candidates)
            rng.shuffle(order)
            stream: Iterator[tuple[str, int | None, bytes | None, str | None]] = (
                (i, c, None, None) for i, c in order)
            listed = len(order)
        else:
            ids = self._list_bucket_ids()
            listed = len(ids)
            rng.shuffle(ids)
            stream = self._ordered(ids, self._label_of)

        overflow: dict[int, deque] = {c: deque() for c in need}
        outcomes: list[Outcome] = []
        exhausted = False
        self.progress.set_total(sum(need.values()))
        while any(need.values()):
            round_: list[tuple[Future, int]] = []

            def accept(id_: str, cls: int, meta: bytes | None, round_: list = round_) -> None:
                need[cls] -= 1
                round_.append((self.pool.submit(lambda: self._done(self.complete(id_, meta))), cls))

            for cls in need:
                while need[cls] and overflow[cls]:
                    accept(*overflow[cls].popleft())
            while any(need.values()) and not exhausted:
                try:
                    id_, count, meta, problem = next(stream)
                except StopIteration:
                    exhausted = True
                    break
                if problem is not None or count is None:
                    skipped.append({"id": id_, "reason": problem or "no label"})
                    continue
                if not spec.contains(count):
                    continue
                cls = spec.bucket(count)
                if need[cls] > 0:
                    accept(id_, cls, meta)
                else:
                    overflow[cls].append((id_, cls, meta))
            refill = 0
            for fut, cls in round_:
                out = fut.result()
                outcomes.append(out)
                if not out.ok:  # its slot goes to the next id of its class, in the seeded order
                    need[cls] += 1
                    refill += 1
            if refill and not exhausted:
                self.progress.add_total(refill)
            if exhausted and not any(need[c] and overflow[c] for c in need):
                break
        shortfall = {str(c): n for c, n in need.items() if n}
        info = {"listed": listed, "sampling_skipped": skipped, "shortfall": shortfall}
        return outcomes, info

    def _list_bucket_ids(self) -> list[str]:
        from bincli.data.s3 import list_objects

        fetcher = self.fetcher
        cuts = [f"{abid.METADATA_PREFIX}{a}{b}" for a in "0123456789" for b in "0123456789"]
        try:
            found = list_objects(fetcher.client, self.cfg.bucket, abid.METADATA_PREFIX, cuts, self.pool.map,
                                 on_page=lambda: self.stats.count("list"), project=lambda o: abid.id_from_key(o["Key"]))
        except Exception as exc:
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(exc, BotoCoreError | ClientError):
                from bincli.data.s3 import explain

                raise explain(exc, f"listing s3://{self.cfg.bucket}/{abid.METADATA_PREFIX}") from None
            raise
        ids = sorted(set(found))
        if not ids:
            raise DataError(f"s3://{self.cfg.bucket}/{abid.METADATA_PREFIX} lists no metadata files",
                            hint="check --bucket and --endpoint-url")
        return ids

    def _label_of(self, id_: str) -> tuple[str, int | None, bytes | None, str | None]:
        """The count of one id: from the local metadata if it is there, else fetched (kept in memory)."""
        path = self.store.metadata_path(id_)
        label = self.store.label(id_) if self.store.known_good(path) else None
        if label is not None:
            return id_, label, None, None
        ok, label = self.store.good(path, check_metadata)
        if ok:
            return id_, label, None, None
        try:
            data, label = self.fetcher.to_memory(abid.metadata_key(id_), check_metadata, "metadata")
        except FetchError as exc:
            return id_, None, None, f"metadata: {exc.reason}"
        return id_, label, data, None

    def _ordered(self, items: list[str], fn: Callable[[str], Any]) -> Iterator[Any]:
        """fn over items on the pool, results in item order, at most 2 x workers ahead."""
        window = max(8, 2 * self.cfg.workers)
        pending: deque[Future] = deque()
        it = iter(items)
        for item in it:
            pending.append(self.pool.submit(fn, item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.pool.submit(fn, nxt))
            yield result


# ================================================================ the step
def run_download(cfg: DownloadConfig, workdir: Path, ids: list[str] | None = None,
                 progress: bool | None = None) -> dict[str, Any]:
    """The whole step. Returns the result (also recorded in state as 'download').

    Raises DownloadFailed (with the result) when nothing usable came down, or with
    `strict` when anything failed; the report is written either way."""
    started = time.monotonic()
    selection = select(cfg, ids)
    data_dir = (Path(workdir) / DATA_DIR).resolve()
    store = LocalStore(data_dir)
    stale = store.prepare()
    if stale:
        log.info("removed %d partial file(s) left by an interrupted run", stale)
    spec = ClassSpec.parse(cfg.classes)
    source = f"s3://{cfg.bucket}" + (f" at {cfg.endpoint_url}" if cfg.endpoint_url else "")
    plan_key = {"bucket": cfg.bucket, "endpoint_url": cfg.endpoint_url, "file_list": str(cfg.file_list or ""),
                "classes": str(spec), "per_class": cfg.per_class, "seed": cfg.seed}
    total = len(selection.ids) if selection.ids is not None else (cfg.per_class or 0) * spec.num_classes
    bar = Progress("download", total=total, unit="images", enabled=progress)
    dl = Downloader(cfg, store, bar)
    info: dict[str, Any] = {}
    interrupted = True
    try:
        with bar:
            if selection.ids is not None:
                outcomes = dl.fixed(selection.ids)
            else:
                outcomes = _from_plan(store, plan_key)
                if outcomes is not None:
                    bar.advance(len(outcomes))
                    info = {"from_plan": True}
                else:
                    outcomes, info = dl.sample(selection, spec)
        interrupted = False
    finally:
        dl.close(cancel=interrupted)
        store.flush(force=True)

    good = [o for o in outcomes if o.ok]
    failures = [o.failure for o in outcomes if o.failure]
    if selection.mode == "per_class" and not info.get("from_plan") and good:
        atomic_write_json(data_dir / PLAN_FILE, {"key": plan_key, "ids": {o.id: o.label for o in good}})
    ids_path = atomic_write_text(data_dir / IDS_FILE, "".join(f"{o.id}\n" for o in good))
    counts = Counter(o.label for o in good if o.label is not None)
    elapsed = time.monotonic() - started
    report_path = data_dir / REPORT_FILE
    result: dict[str, Any] = {
        "data_dir": str(data_dir),
        "images": len(good),
        "failed": len(failures),
        "report": str(report_path),
        "ids_file": str(ids_path),
        "selection": selection.mode,
        "describe": selection.describe,
        "source": source,
        "fetched": sum(o.fetched and o.ok for o in good),
        "present": sum(not o.fetched for o in good),
        "bytes": dl.stats.nbytes,
        "requests": dict(dl.stats.requests),
        "retries": dl.stats.retries,
        "seconds": round(elapsed, 3),
        "counts": {str(k): counts[k] for k in sorted(counts)},
        "shortfall": info.get("shortfall", {}),
        "failures": failures,
    }
    atomic_write_json(report_path, {**result, "sampling_skipped": info.get("sampling_skipped", []),
                                    "listed": info.get("listed")})
    if good:
        outputs = {k: result[k] for k in ("data_dir", "images", "failed", "report", "ids_file", "selection",
                                          "source", "counts", "bytes", "seconds")}
        State(workdir).record("download", outputs, cfg.model_dump(mode="json"))
    if not good:
        raise DownloadFailed(f"nothing usable came down: {len(failures)} of {len(outcomes)} id(s) failed "
                             f"(see {report_path})", result, hint="check --endpoint-url, --bucket and the ids")
    if cfg.strict and failures:
        raise DownloadFailed(f"{len(failures)} id(s) failed and --strict is on (see {report_path})", result)
    return result


def _from_plan(store: LocalStore, key: dict[str, Any]) -> list[Outcome] | None:
    """A per-class sample that already completed with the same settings: reuse it if every file
    is still there and verified (no listing, no requests)."""
    import json

    try:
        plan = json.loads((store.root / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if plan.get("key") != key or not isinstance(plan.get("ids"), dict):
        return None
    outcomes = []
    for id_, label in plan["ids"].items():
        if not (store.known_good(store.metadata_path(id_)) and store.known_good(store.image_path(id_))):
            return None
        outcomes.append(Outcome(id_, True, label))
    return outcomes
