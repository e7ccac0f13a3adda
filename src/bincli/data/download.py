"""The `download` step: ABID images + metadata from the public bucket (or any S3 server) to disk.

What to fetch (one of):
  - an explicit id list (`ids`, `ids_file`);
  - the Udacity subset list (`file_list`), as it is;
  - a per-class sample (`per_class` + `classes`, seeded): the metadata keys are listed, shuffled
    with the seed and their metadata fetched lazily, in that order, until every class is full.
    The real bucket has 536K keys; only about as many metadata files are read as it takes, each
    label read is kept in a local index (data/label_index.py) that the next sample reuses, and
    the body of an id not picked is dropped once its label is known (memory stays flat).
    A chosen id whose image cannot be fetched is replaced by the next one of its class.
    With `file_list` too, the sample is drawn from the list's classes (no metadata reads needed).

Layout (the data contract): `<workdir>/data/images/<id>.jpg` and `<workdir>/data/metadata/<id>.json`,
plus `download-report.json` (every failure by id), `download-ids.txt` (the ids of this selection
that are complete) and `.download-index.json` (size, mtime and label of each verified file).

Fast: one shared boto3 client, a thread pool of `workers`, a connection pool to match, bodies
streamed to disk a chunk at a time. Safe: each file goes to a temp name beside its target and is
renamed only after its size (Content-Length) and content (a whole JPEG of a sane size: Pillow
verify + end marker; JSON with a label) check out, so an interrupted run never leaves a half file
under a final name. An object over `max_object_mb` is refused on its Content-Length (or cut off
as it streams) and counts as one failed id, like a corrupt or missing one. A local write error
(disk full, read-only) stops the run with one line naming the path.
A rerun trusts files the index knows (same size and mtime: a stat, no read), checks the others
locally, and fetches only what is missing or bad. Files are not fsync'd one by one: one that
a crash left short or empty fails these checks on the rerun and is fetched again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bincli import layout
from bincli.config import DownloadConfig
from bincli.core.classes import ClassSpec
from bincli.core.fileio import atomic_write_json, atomic_write_text
from bincli.data import abid
from bincli.data.disk import DiskError, writing
from bincli.data.fetcher import Fetcher, Stats
from bincli.data.label_index import LabelIndex
from bincli.data.local_store import FetchError, LocalStore, check_jpeg, check_metadata
from bincli.errors import BincliError, DataError, UsageError
from bincli.progress import Progress
from bincli.state import State

log = logging.getLogger("bincli.download")

REPORT_FILE = "download-report.json"
IDS_FILE = "download-ids.txt"
PLAN_FILE = ".download-plan.json"
# (id, count or None, metadata bytes fetched while sampling or None, why it cannot be used or None)
Candidate = tuple[str, int | None, bytes | None, str | None]


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
        self.labels: LabelIndex | None = None  # labels read from the bucket (a sample from it)
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
                                        self.stop, self.progress, max_bytes=self.cfg.max_object_mb * 2**20)
            return self._fetcher

    def close(self, cancel: bool = False) -> None:
        if cancel:
            self.stop.set()
        self.pool.shutdown(wait=True, cancel_futures=cancel)
        if self.labels is not None:
            self.labels.flush()

    # ------------------------------------------------------------ one id
    def complete(self, id_: str, metadata: bytes | None = None) -> Outcome:
        """Make sure <id>.json and <id>.jpg are on disk and sound; fetch what is not. A file that
        cannot be had is this id's failure; a local write error (DiskError) stops the run."""
        meta_path, image_path = self.store.metadata_path(id_), self.store.image_path(id_)
        fetched, label, what = False, None, "metadata"
        try:
            ok, label = self.store.good(meta_path, check_metadata)
            if not ok:
                if metadata is not None:  # already fetched while sampling
                    _, label = self.store.write(meta_path, [metadata], len(metadata), check_metadata)
                else:
                    _, label = self.fetcher.to_file(abid.metadata_key(id_), meta_path, check_metadata, "metadata")
                fetched = True
            what = "image"
            if not self.store.good(image_path, check_jpeg)[0]:
                self.fetcher.to_file(abid.image_key(id_), image_path, check_jpeg, "image")
                fetched = True
            outcome = Outcome(id_, True, label, fetched)
        except FetchError as exc:
            if what == "image":  # keep the folder consistent: no metadata without its image
                with writing(meta_path, exact=True):
                    meta_path.unlink(missing_ok=True)
                self.store.forget(meta_path)
            key = abid.image_key(id_) if what == "image" else abid.metadata_key(id_)
            outcome = Outcome(id_, False, label, fetched,
                              {"id": id_, "file": what, "key": key, "kind": exc.kind, "reason": exc.reason})
        self.store.flush()  # not in a finally: a failed flush must not hide the error that stopped us
        return outcome

    def _complete_one(self, id_: str, metadata: bytes | None = None) -> Outcome:
        outcome = self.complete(id_, metadata)
        self.progress.advance(1, failed=0 if outcome.ok else 1)
        return outcome

    # ------------------------------------------------------------ a fixed list
    def fixed(self, ids: list[str]) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        todo = []
        done = self.store.complete_ids(ids)
        for id_ in ids:
            if id_ in done:
                outcomes[id_] = Outcome(id_, True, self.store.label(id_))
            else:
                todo.append(id_)
        self.progress.advance(len(outcomes))
        if todo:
            _ = self.fetcher  # make the client once, before the workers need it
            for out in self._bounded(todo, self._complete_one):  # a window in flight, not 30,000 futures
                outcomes[out.id] = out
        return [outcomes[i] for i in ids]

    # ------------------------------------------------------------ a per-class sample
    def sample(self, selection: Selection, spec: ClassSpec) -> tuple[list[Outcome], dict[str, Any]]:
        """Rounds: fetch the picks of each class; a pick that fails reopens its slot for the next
        candidate of its class (the seeded order), until every class is full or nothing is left."""
        stream, listed = self._candidates(selection)
        picker = _Picker(stream, spec, self.cfg.per_class or 0)
        outcomes: list[Outcome] = []
        self.progress.set_total(picker.missing())
        while picker.missing():
            # Submitted as picked: images come down while the stream still reads metadata.
            round_ = [(self.pool.submit(self._complete_one, id_, meta), cls) for id_, cls, meta in picker.picks()]
            refill = 0
            for fut, cls in round_:
                out = fut.result()
                outcomes.append(out)
                if not out.ok:
                    picker.reopen(cls)
                    refill += 1
            if refill and not picker.exhausted:
                self.progress.add_total(refill)
            if picker.stuck():
                break
        info = {"listed": listed, "sampling_skipped": picker.skipped, "shortfall": picker.shortfall(),
                "labels_reused": self.labels.reused if self.labels is not None else 0}
        return outcomes, info

    def _candidates(self, selection: Selection) -> tuple[Iterator[Candidate], int]:
        """The candidates in the seeded order, and how many there are: the file list's ids with
        their classes, else the bucket's, each labelled (metadata read) only when reached."""
        rng = random.Random(self.cfg.seed)
        if selection.candidates is not None:
            order = list(selection.candidates)
            rng.shuffle(order)
            return ((i, c, None, None) for i, c in order), len(order)
        ids = self._list_bucket_ids()
        source = f"{self.cfg.bucket} at {self.cfg.endpoint_url or 'AWS'}"
        self.labels = LabelIndex(self.store.root, source).load()
        rng.shuffle(ids)
        return self._ordered(ids, self._label_of), len(ids)

    def _list_bucket_ids(self) -> list[str]:
        from bincli.data.s3 import list_objects

        fetcher = self.fetcher
        cuts = [f"{abid.METADATA_PREFIX}{a}{b}" for a in "0123456789" for b in "0123456789"]
        try:
            found = list_objects(fetcher.client, self.cfg.bucket, abid.METADATA_PREFIX, cuts, self.pool.map,
                                 on_page=lambda: self.stats.count("list"), project=lambda o: abid.id_from_key(o["Key"]))
        except Exception as exc:
            from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

            if isinstance(exc, BotoCoreError | ClientError):
                from bincli.data.s3 import explain

                error = explain(exc, f"listing s3://{self.cfg.bucket}/{abid.METADATA_PREFIX}")
                if isinstance(exc, EndpointConnectionError):  # offline, or the stand-in is not running
                    error.hint = (f"{error.hint}; without internet, point download.endpoint_url (--s3-endpoint-url) "
                                  "at an S3-compatible server holding the ABID layout, e.g. the bucket stand-in "
                                  "shared/tools/abid_mirror.py (README: make demo)")
                raise error from None
            raise
        ids = sorted(set(found))
        if not ids:
            raise DataError(f"s3://{self.cfg.bucket}/{abid.METADATA_PREFIX} lists no metadata files",
                            hint="check --bucket and --s3-endpoint-url")
        return ids

    def _label_of(self, id_: str) -> Candidate:
        """The count of one id: from the label index or the local metadata, else fetched (its body
        is kept for the pick it may become; the label goes into the index)."""
        label = self.labels.get(id_) if self.labels is not None else None
        if label is not None:
            return id_, label, None, None
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
        if self.labels is not None:
            self.labels.add(id_, label)
        return id_, label, data, None

    def _bounded(self, items: list[str], fn: Callable[[str], Any]) -> Iterator[Any]:
        """fn over items on the pool, results as they finish, at most 2 x workers in flight (a
        slow one, retrying, holds one slot, not the others)."""
        window = max(8, 2 * self.cfg.workers)
        pending: set[Future] = set()
        it = iter(items)
        while True:
            for item in it:
                pending.add(self.pool.submit(fn, item))
                if len(pending) >= window:
                    break
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()

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


class _Picker:
    """Who to fetch for a per-class sample: candidates in the seeded order, each taken while its
    class needs one and kept aside once the class is full (in case a taken one fails): by id only,
    so a sample over the whole bucket never holds the bodies of the ids it did not take."""

    def __init__(self, stream: Iterator[Candidate], spec: ClassSpec, per_class: int):
        self.stream = stream
        self.spec = spec
        self.need = {c: per_class for c in spec.counts}
        self.overflow: dict[int, deque[str]] = {c: deque() for c in self.need}
        self.skipped: list[dict[str, str]] = []
        self.exhausted = False

    def missing(self) -> int:
        return sum(self.need.values())

    def picks(self) -> Iterator[tuple[str, int, bytes | None]]:
        """(id, class, metadata) to fetch now, lazily: those kept aside for reopened slots first,
        then from the stream until every class is full or it runs out."""
        for cls, kept in self.overflow.items():
            while self.need[cls] and kept:
                yield self._take(cls, kept.popleft(), None)  # its metadata is fetched again
        while self.missing() and not self.exhausted:
            try:
                id_, count, meta, problem = next(self.stream)
            except StopIteration:
                self.exhausted = True
                return
            if problem is not None or count is None:
                self.skipped.append({"id": id_, "reason": problem or "no label"})
            elif self.spec.contains(count):
                cls = self.spec.bucket(count)
                if self.need[cls]:
                    yield self._take(cls, id_, meta)
                else:
                    self.overflow[cls].append(id_)

    def _take(self, cls: int, id_: str, meta: bytes | None) -> tuple[str, int, bytes | None]:
        self.need[cls] -= 1
        return id_, cls, meta

    def reopen(self, cls: int) -> None:
        """A taken id failed: its slot goes to the next candidate of its class."""
        self.need[cls] += 1

    def stuck(self) -> bool:
        """Nothing left to try for the classes that still need ids."""
        return self.exhausted and not any(self.need[c] and self.overflow[c] for c in self.need)

    def shortfall(self) -> dict[str, int]:
        return {str(c): n for c, n in self.need.items() if n}


# ================================================================ the step
def run_download(cfg: DownloadConfig, workdir: Path, ids: list[str] | None = None,
                 progress: bool | None = None) -> dict[str, Any]:
    """The whole step. Returns the result (also recorded in state as 'download').

    Raises DownloadFailed (with the result) when nothing usable came down, or with
    `strict` when anything failed; the report is written either way. A local write error
    (DiskError) stops it with the index of what is already verified saved where it can be."""
    started = time.monotonic()
    selection = select(cfg, ids)
    data_dir = (Path(workdir) / layout.DATA_DIR).resolve()
    store = LocalStore(data_dir)
    stale = store.prepare()
    if stale:
        log.info("removed %d partial file(s) left by an interrupted run", stale)
    spec = ClassSpec.parse(cfg.classes)
    total = len(selection.ids) if selection.ids is not None else (cfg.per_class or 0) * spec.num_classes
    bar = Progress("download", total=total, unit="images", enabled=progress)
    dl = Downloader(cfg, store, bar)
    plan_key = _plan_key(cfg, spec)
    try:
        with bar:
            outcomes, info = _fetch(dl, store, selection, spec, plan_key)
    except BaseException:
        dl.close(cancel=True)
        with contextlib.suppress(DiskError):  # the error that stopped the run is the one to tell
            store.flush(force=True)
        raise
    dl.close()
    store.flush(force=True)
    result = _report(cfg, selection, data_dir, outcomes, info, dl.stats, plan_key, time.monotonic() - started)
    good = result["images"]
    if good:
        outputs = {k: result[k] for k in ("data_dir", "images", "failed", "report", "ids_file", "selection",
                                          "source", "counts", "bytes", "seconds")}
        state = State(workdir)
        with writing(state.path, exact=True):
            state.record("download", outputs, cfg.model_dump(mode="json"))
    else:
        raise DownloadFailed(f"nothing usable came down: {result['failed']} of {len(outcomes)} id(s) failed "
                             f"(see {result['report']})", result, hint="check --s3-endpoint-url, --bucket and the ids")
    if cfg.strict and result["failed"]:
        raise DownloadFailed(f"{result['failed']} id(s) failed and --strict is on (see {result['report']})", result)
    return result


def _plan_key(cfg: DownloadConfig, spec: ClassSpec) -> dict[str, Any]:
    """What makes a per-class sample the same sample: the same source and the same draw."""
    return {"bucket": cfg.bucket, "endpoint_url": cfg.endpoint_url, "file_list": str(cfg.file_list or ""),
            "classes": str(spec), "per_class": cfg.per_class, "seed": cfg.seed}


def _fetch(dl: Downloader, store: LocalStore, selection: Selection, spec: ClassSpec,
           plan_key: dict[str, Any]) -> tuple[list[Outcome], dict[str, Any]]:
    """Every id of the selection, complete or failed: a fixed list, a finished sample that is still
    on disk (no requests), or a fresh sample."""
    if selection.ids is not None:
        return dl.fixed(selection.ids), {}
    outcomes = _from_plan(store, plan_key)
    if outcomes is not None:
        dl.progress.advance(len(outcomes))
        return outcomes, {"from_plan": True}
    return dl.sample(selection, spec)


def _report(cfg: DownloadConfig, selection: Selection, data_dir: Path, outcomes: list[Outcome],
            info: dict[str, Any], stats: Stats, plan_key: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Write the plan, the ids file and the report (each atomically); return the step's result."""
    good = [o for o in outcomes if o.ok]
    failures = [o.failure for o in outcomes if o.failure]
    report_path = data_dir / REPORT_FILE
    if selection.mode == "per_class" and not info.get("from_plan") and good:
        with writing(data_dir / PLAN_FILE, exact=True):
            atomic_write_json(data_dir / PLAN_FILE, {"key": plan_key, "ids": {o.id: o.label for o in good}})
    with writing(data_dir / IDS_FILE, exact=True):
        ids_path = atomic_write_text(data_dir / IDS_FILE, "".join(f"{o.id}\n" for o in good))
    counts = Counter(o.label for o in good if o.label is not None)
    result: dict[str, Any] = {
        "data_dir": str(data_dir),
        "images": len(good),
        "failed": len(failures),
        "report": str(report_path),
        "ids_file": str(ids_path),
        "selection": selection.mode,
        "describe": selection.describe,
        "source": f"s3://{cfg.bucket}" + (f" at {cfg.endpoint_url}" if cfg.endpoint_url else ""),
        "fetched": sum(o.fetched and o.ok for o in good),
        "present": sum(not o.fetched for o in good),
        "bytes": stats.nbytes,
        "requests": dict(stats.requests),
        "retries": stats.retries,
        "seconds": round(seconds, 3),
        "counts": {str(k): counts[k] for k in sorted(counts)},
        "shortfall": info.get("shortfall", {}),
        "labels_reused": info.get("labels_reused", 0),
        "failures": failures,
    }
    with writing(report_path, exact=True):
        atomic_write_json(report_path, {**result, "sampling_skipped": info.get("sampling_skipped", []),
                                        "listed": info.get("listed")})
    return result


def _from_plan(store: LocalStore, key: dict[str, Any]) -> list[Outcome] | None:
    """A per-class sample that already completed with the same settings: reuse it if every file
    is still there and verified (no listing, no requests)."""
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
