"""The `split` step: ABID images + metadata -> stratified train/valid/test manifests.

Every image is checked while it is split (decodes as a JPEG of a sane size, not truncated, not a
byte-for-byte duplicate of another); whatever is left out is reported by id and reason, never
dropped silently. Same inputs + seed give byte-identical manifests.

What a split produces (the three manifests, split-report.json, class-histogram.png and, with
`layout: folders`, the folder layout) is one unit: written into a fresh staging folder, renamed
into place as `<workdir>/splits/<fingerprint>/` (a hash of its content), and only then recorded
in state. So state always names a complete folder holding the manifests it describes, even when
a split is killed half-way or two run at once; the folder it supersedes is removed afterwards.
Once recorded, the published names users and CI scripts read, `<workdir>/splits/{train,valid,
test}.csv` (+ split-report.json, class-histogram.png, folders/), are swapped to the new split:
hard links (a symlink for folders/), each replaced atomically.
"""

from __future__ import annotations

import bisect
import csv
import errno
import hashlib
import io
import json
import logging
import os
import random
import re
import secrets
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bincli import layout
from bincli.config import SplitConfig
from bincli.core.classes import ClassSpec
from bincli.core.contract import MANIFEST_HEADER, SPLITS
from bincli.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from bincli.data import abid
from bincli.data.disk import writing
from bincli.errors import DataError, StateError
from bincli.lock import pid_alive
from bincli.state import State

log = logging.getLogger("bincli.split")

REPORT_FILE = "split-report.json"
HISTOGRAM_FILE = "class-histogram.png"
FOLDERS_DIR = "folders"
STAGING_PREFIX = ".staging-"  # + <pid>-<random>: a folder being written by that process
_FINGERPRINT = re.compile(r"^[0-9a-f]{12}$")  # the name of a published split folder


@dataclass(frozen=True)
class Item:
    id: str
    path: str  # relative to the data root, e.g. images/00002.jpg
    count: int  # raw EXPECTED_QUANTITY


@dataclass(frozen=True)
class Rejected:
    id: str
    reason: str


# ================================================================ input and checks
def resolve_input(cfg_input: Path | None, state: State, command: str = "split") -> tuple[Path, set[str] | None]:
    """The data root and the ids to use: --input / split.input (every id in it), else what
    `download` recorded (only the ids of its last selection: data/ may hold earlier downloads)."""
    selection = None
    if cfg_input is not None:
        root = Path(cfg_input)
    else:
        outputs = state.outputs("download")
        if outputs is None:
            raise StateError(f"{command} has no input: 'bincli download' has not run in this workspace",
                             hint="run 'bincli download' first, or pass --input DIR")
        root = Path(outputs["data_dir"])
        if outputs.get("ids_file") and Path(outputs["ids_file"]).is_file():
            selection = set(abid.read_ids_file(outputs["ids_file"]))
    if not (root / abid.METADATA_DIR).is_dir() or not (root / abid.IMAGES_DIR).is_dir():
        raise DataError(f"{root}: expected an ABID folder with {abid.IMAGES_DIR}/ and {abid.METADATA_DIR}/ inside")
    return root.resolve(), selection


def scan(root: Path, workers: int = 8, only: set[str] | None = None) -> tuple[list[Item], list[Rejected]]:
    """Read metadata and check every image (of `only`, if given). Returns (good items, rejected)."""
    meta_files, image_files, bad = abid.local_files(root, only)
    rejected = [Rejected(name, why) for name, why in bad.items()]
    rejected += [Rejected(i, "image without metadata") for i in sorted(image_files.keys() - meta_files.keys())]
    rejected += [Rejected(i, "metadata without image") for i in sorted(meta_files.keys() - image_files.keys())]
    ids = sorted(meta_files.keys() & image_files.keys())

    def check(id_: str) -> Item | Rejected | tuple[Item, str]:
        count = _read_count(meta_files[id_])
        if isinstance(count, str):
            return Rejected(id_, count)
        problem, digest = _check_image(image_files[id_])
        if problem:
            return Rejected(id_, problem)
        return Item(id_, abid.image_rel(id_), count), digest

    items: list[Item] = []
    digests: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=workers)  # Pillow decodes without the GIL
    try:
        for result in pool.map(check, ids):
            if isinstance(result, Rejected):
                rejected.append(result)
            else:
                item, digest = result
                items.append(item)
                digests[item.id] = digest
    except BaseException:  # Ctrl-C: stop now, neither after the queued photos nor a stuck read
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()  # not `with`: its exit would wait for a stuck worker after Ctrl-C
    # Duplicates: same bytes under two ids. Keep the first id (sorted), report the others.
    first_by_digest: dict[str, str] = {}
    unique = []
    for item in items:
        owner = first_by_digest.setdefault(digests[item.id], item.id)
        if owner == item.id:
            unique.append(item)
        else:
            rejected.append(Rejected(item.id, f"duplicate of {owner}"))
    rejected.sort(key=lambda r: r.id)
    return unique, rejected


def _read_count(path: Path) -> int | str:
    """The label of one metadata file, or the reason it cannot be used."""
    try:
        return abid.read_label(path)
    except OSError as exc:
        return f"unreadable metadata ({exc.strerror or type(exc).__name__})"
    except ValueError as exc:
        return str(exc)


def _check_image(path: Path) -> tuple[str | None, str]:
    """(the reason the image cannot be used or None, its sha256). Streamed: a huge file is hashed
    a block at a time, and a photo over the pixel cap is refused before it is decoded."""
    digest = ""
    try:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
            f.seek(0)
            abid.check_photo(f, decode=True)
    except abid.BadImage as exc:
        return exc.reason, digest
    except OSError as exc:
        return f"unreadable image ({exc.strerror or type(exc).__name__})", digest
    return None, digest


# ================================================================ the split
def assign(items: list[Item], spec: ClassSpec, ratios: tuple[float, float, float], seed: int,
           max_per_class: int | None) -> tuple[dict[str, list[Item]], Counter]:
    """Stratified split: each class is shuffled with the seed and cut by the ratios, so every
    class keeps its share to within one image. Returns (split -> items, excluded-by-class counts)."""
    by_class: dict[int, list[Item]] = defaultdict(list)
    outside: Counter = Counter()
    for item in items:
        if spec.contains(item.count):
            by_class[spec.bucket(item.count)].append(item)
        else:
            outside[item.count] += 1
    rng = random.Random(seed)
    splits: dict[str, list[Item]] = {name: [] for name in SPLITS}
    for count in sorted(by_class):
        members = sorted(by_class[count], key=lambda it: it.id)
        rng.shuffle(members)
        if max_per_class is not None:
            members = members[:max_per_class]
        for name, share in zip(SPLITS, _cut(len(members), ratios), strict=True):
            splits[name].extend(members[:share])
            members = members[share:]
    for name in SPLITS:
        splits[name].sort(key=lambda it: it.id)
    return splits, outside


def keep_groups_together(splits: dict[str, list[Item]], groups: list[list[str]], spec: ClassSpec,
                         seed: int) -> tuple[dict[str, list[Item]], dict[str, int]]:
    """Move every group of near-copies that `assign` spread over several splits into one: the split
    holding most of it (ties: train, then valid). For each photo moved, one ungrouped photo of the
    same class goes the other way, so every class keeps its shares; where the class has no such
    photo left, the shift is counted as `unbalanced`. Deterministic for the same inputs and seed."""
    where = {it.id: name for name, items in splits.items() for it in items}
    item_of = {it.id: it for items in splits.values() for it in items}
    grouped = {i for g in groups for i in g}
    # The ungrouped photos of each (split, class), sorted, kept up to date as swaps move them:
    # not a scan of every photo per move (that was quadratic at 100,000 photos).
    free: dict[tuple[str, int], list[str]] = defaultdict(list)
    for id_ in sorted(where):
        if id_ not in grouped:
            free[(where[id_], spec.bucket(item_of[id_].count))].append(id_)
    rng = random.Random(seed)
    stats = {"groups": 0, "groups_moved": 0, "images_moved": 0, "unbalanced": 0}
    for group in groups:
        members = [i for i in group if i in where]
        if len(members) > 1:
            stats["groups"] += 1
        sides = Counter(where[i] for i in members)
        if len(sides) < 2:
            continue
        target = max(SPLITS, key=lambda n: (sides[n], -SPLITS.index(n)))
        stats["groups_moved"] += 1
        for id_ in members:
            source = where[id_]
            if source == target:
                continue
            where[id_] = target
            stats["images_moved"] += 1
            cls = spec.bucket(item_of[id_].count)
            swap = free[(target, cls)]
            if swap:
                other = rng.choice(swap)
                where[other] = source
                swap.remove(other)
                bisect.insort(free[(source, cls)], other)
            else:
                stats["unbalanced"] += 1
    out: dict[str, list[Item]] = {name: [] for name in SPLITS}
    for id_ in sorted(where):
        out[where[id_]].append(item_of[id_])
    return out, stats


def near_duplicate_groups_of(items: list[Item], root: Path, workdir: Path) -> tuple[list[list[str]], str | None]:
    """The near-duplicate groups among `items` (hashes from the workdir's image-facts cache), and
    why near-copies were not searched (too many photos) or None."""
    from bincli.data.near_duplicates import near_duplicate_groups, search_note
    from bincli.data.survey import FactsCache, survey

    cache = FactsCache.for_workdir(workdir)
    try:
        facts = survey({it.id: root / it.path for it in items}, cache).facts
    finally:
        cache.close()
    hashes = {i: f.dhash for i, f in facts.items() if not f.error}
    return near_duplicate_groups(hashes), search_note(hashes)


def _cut(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """Sizes for n items: floors of n*ratio, remainders to the largest fractions (each within 1)."""
    exact = [n * r for r in ratios]
    sizes = [int(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: (sizes[i] - exact[i], i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


# ================================================================ what it writes
def manifest_text(items: list[Item], spec: ClassSpec) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    for item in items:
        writer.writerow((item.id, item.path, spec.bucket(item.count)))
    return buf.getvalue()


def write_folder_layout(target: Path, root: Path, splits: dict[str, list[Item]], spec: ClassSpec) -> Path:
    """`<target>/<split>/<count>/<id>.jpg`, hard links where possible (no duplicate bytes)."""
    for name, items in splits.items():
        for item in items:
            dest = target / name / spec.labels[spec.index(item.count)] / f"{item.id}{abid.IMAGE_SUFFIX}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(root / item.path, dest)
            except OSError:  # another filesystem, or links not allowed
                shutil.copy2(root / item.path, dest)
    return target


def write_histogram(path: Path, table: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [row["class"] for row in table]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0] * len(labels)
    for name in SPLITS:
        values = [row[name] for row in table]
        ax.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("items in bin (class)")
    ax.set_ylabel("images")
    ax.set_title("images per class and split")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ================================================================ the step
@dataclass
class Staged:
    """A split written in full to `folder`, not yet visible: publish() renames it to `target`
    and records `outputs` (whose paths are inside `target`)."""

    folder: Path
    target: Path
    outputs: dict[str, Any]
    extra: dict[str, Any]


def run_split(cfg: SplitConfig, workdir: Path) -> dict[str, Any]:
    """The whole step. Returns the result (also recorded in state as 'split')."""
    state = State(workdir)
    return publish(state, stage_split(cfg, state), cfg.model_dump(mode="json"))


def stage_split(cfg: SplitConfig, state: State) -> Staged:
    """Check, split and write everything into a fresh staging folder (nothing visible yet)."""
    root, selection = resolve_input(cfg.input, state)
    spec = ClassSpec.parse(cfg.classes)
    items, rejected = scan(root, only=selection)
    if not items:
        raise DataError(f"{root}: no usable image (checked {len(rejected)} files; see the reasons with --json)")
    splits, outside = assign(items, spec, cfg.ratios, cfg.seed, cfg.max_per_class)
    grouping = None
    if cfg.group_near_duplicates:
        with writing(layout.under(state.workdir, layout.CACHE_DIR), exact=False):
            groups, note = near_duplicate_groups_of(items, root, state.workdir)
        splits, grouping = keep_groups_together(splits, groups, spec, cfg.seed)
        if note:  # (only then: a split that searched keeps the fingerprint it always had)
            log.warning("%s", note)
            grouping["search"] = note
    if not splits["train"]:
        raise DataError(f"{root}: no image with a count in classes {spec} (counts seen: "
                        f"{', '.join(str(c) for c in sorted(outside))})")
    manifests = {name: manifest_text(splits[name], spec) for name in SPLITS}
    report = {
        "data_root": str(root),
        "rejected": [{"id": r.id, "reason": r.reason} for r in rejected],
        "outside_classes": {str(k): v for k, v in sorted(outside.items())},
    }
    if grouping is not None:  # (absent when off, so such a split keeps the fingerprint it always had)
        report["near_duplicates"] = grouping
    table = [
        {"class": label, **{name: sum(1 for it in splits[name] if spec.index(it.count) == i) for name in SPLITS}}
        for i, label in enumerate(spec.labels)
    ]
    splits_dir = layout.under(state.workdir, layout.SPLITS_DIR)
    target = splits_dir / _fingerprint(cfg.layout, manifests, report)
    with writing(splits_dir, exact=True):  # name the folder the user knows, not the staging one
        folder = _new_staging(splits_dir)
        try:
            _write_all(folder, manifests, report, table)
            if cfg.layout == "folders":
                write_folder_layout(folder / FOLDERS_DIR, root, splits, spec)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    outputs = {
        "data_root": str(root),
        "manifests_dir": str(target),
        "manifests": {name: str(target / f"{name}.csv") for name in SPLITS},
        "classes": str(spec),
        **{name: len(splits[name]) for name in SPLITS},
        "rejected": len(rejected),
        "outside_classes": sum(outside.values()),
        "folders": str(target / FOLDERS_DIR) if cfg.layout == "folders" else None,
        "histogram": str(target / HISTOGRAM_FILE),
        "report": str(target / REPORT_FILE),
        "near_duplicates": grouping,
    }
    return Staged(folder, target, outputs, {"table": table, "rejected_ids": report["rejected"]})


def _write_all(folder: Path, manifests: dict[str, str], report: dict[str, Any], table: list[dict[str, Any]]) -> None:
    for name in SPLITS:
        atomic_write_text(folder / f"{name}.csv", manifests[name])
    atomic_write_json(folder / REPORT_FILE, report)
    write_histogram(folder / HISTOGRAM_FILE, table)


def publish(state: State, staged: Staged, config: dict[str, Any]) -> dict[str, Any]:
    """Rename the staged folder into place, then record it; remove the folder it supersedes.
    Until the record, state still names the previous split, whose folder is untouched."""
    previous = (state.outputs("split") or {}).get("manifests_dir")
    with writing(staged.target, exact=True):
        created = _move_into_place(staged.folder, staged.target)
    try:
        with writing(state.path, exact=True):
            state.record("split", staged.outputs, config)
    except BaseException:
        if created:  # never recorded: take it back out rather than leave an orphan
            shutil.rmtree(staged.target, ignore_errors=True)
        raise
    if previous and Path(previous) != staged.target and Path(previous).parent == staged.target.parent \
            and _FINGERPRINT.match(Path(previous).name):
        # Only the folder state named before this record: one another split staged or published
        # meanwhile is never it (the workdir lock rules out concurrent splits anyway).
        shutil.rmtree(previous, ignore_errors=True)
    with writing(staged.target.parent, exact=True):
        _publish_names(staged.target)
    return {**staged.outputs, **staged.extra}


def _publish_names(target: Path) -> None:
    """Point <workdir>/splits/{train,valid,test}.csv etc. at the recorded split (the interface
    CI scripts read), each name swapped in one atomic rename."""
    splits_dir = target.parent
    for name in [*(f"{n}.csv" for n in SPLITS), REPORT_FILE, HISTOGRAM_FILE]:
        tmp = splits_dir / f".{name}.{secrets.token_hex(4)}"
        os.link(target / name, tmp)
        os.replace(tmp, splits_dir / name)
    public = splits_dir / FOLDERS_DIR
    if public.is_dir() and not public.is_symlink():
        shutil.rmtree(public)  # a real folder from a bincli before this layout
    if (target / FOLDERS_DIR).is_dir():
        tmp = splits_dir / f".{FOLDERS_DIR}.{secrets.token_hex(4)}"
        tmp.symlink_to(Path(target.name) / FOLDERS_DIR)
        os.replace(tmp, public)
    else:
        public.unlink(missing_ok=True)


def _fingerprint(layout_name: str, manifests: dict[str, str], report: dict[str, Any]) -> str:
    """The published folder's name: the same split (same manifests, report, layout) gets the same
    folder, so a rerun keeps the paths that later steps recorded."""
    h = hashlib.sha256(json.dumps({"layout": layout_name, "report": report}, sort_keys=True).encode())
    for name in SPLITS:
        h.update(f"\0{name}\0".encode())
        h.update(manifests[name].encode())
    return h.hexdigest()[:12]


def _new_staging(splits_dir: Path) -> Path:
    """A fresh folder for this process; those a killed split left (its process gone) are removed."""
    splits_dir.mkdir(parents=True, exist_ok=True)
    for old in splits_dir.glob(f"{STAGING_PREFIX}*"):
        pid = old.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = splits_dir / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    return folder


def _move_into_place(folder: Path, target: Path) -> bool:
    """Rename `folder` to `target` (one atomic step); True if `target` is new. If the same split
    is already there (same fingerprint: same bytes), its files are replaced one by one, each
    atomically, which repairs a damaged copy without readers ever missing a manifest."""
    try:
        os.rename(folder, target)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
            raise
    for entry in folder.iterdir():
        dest = target / entry.name
        if entry.is_dir():  # the folder layout: swap the whole tree
            old = target / f".{entry.name}.old-{secrets.token_hex(4)}"
            if dest.exists():
                dest.rename(old)
            entry.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, dest)
    folder.rmdir()
    return False
