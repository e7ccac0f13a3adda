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

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bincli.config import DownloadConfig
from bincli.core.classes import ClassSpec
from bincli.core.fileio import atomic_write_json, atomic_write_text
from bincli.data import abid
from bincli.data.fetcher import Fetcher, Stats
from bincli.data.local_store import DiskError, FetchError, LocalStore, check_jpeg, check_metadata
from bincli.errors import BincliError, DataError, UsageError
from bincli.progress import Progress
from bincli.state import State

log = logging.getLogger("bincli.download")

DATA_DIR = "data"
REPORT_FILE = "download-report.json"
IDS_FILE = "download-ids.txt"
PLAN_FILE = ".download-plan.json"


class DownloadFailed(BincliError):
    """The step ran but its result is a failure (nothing usable, or --strict with failures).

    Carries the result so the CLI can still show the summary table before the error line."""

    def __init__(self, message: str, result: dict[str, Any], hint: str | None = None):
        super().__init__(message, hint)
        self.result = result


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
