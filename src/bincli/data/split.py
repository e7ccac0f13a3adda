"""The `split` step: ABID images + metadata -> stratified train/valid/test manifests.

Every image is checked while it is split (decodes as a JPEG, not truncated, not a byte-for-byte
duplicate of another); whatever is left out is reported by id and reason, never dropped silently.
Same inputs + seed give byte-identical manifests.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bincli.config import SplitConfig
from bincli.core.classes import ClassSpec
from bincli.core.fileio import atomic_write_json, atomic_write_text
from bincli.errors import DataError, StateError
from bincli.state import State

SPLITS = ("train", "valid", "test")
MANIFEST_HEADER = ("id", "path", "count")
REPORT_FILE = "split-report.json"
HISTOGRAM_FILE = "class-histogram.png"


@dataclass(frozen=True)
class Item:
    id: str
    path: str  # relative to the data root, e.g. images/00002.jpg
    count: int  # raw EXPECTED_QUANTITY


@dataclass(frozen=True)
class Rejected:
    id: str
    reason: str


def resolve_input(cfg_input: Path | None, state: State) -> tuple[Path, set[str] | None]:
    """The data root and the ids to use: --input / split.input (every id in it), else what
    `download` recorded (only the ids of its last selection: data/ may hold earlier downloads)."""
    selection = None
    if cfg_input is not None:
        root = Path(cfg_input)
    else:
        outputs = state.outputs("download")
        if outputs is None:
            raise StateError("split has no input: 'bincli download' has not run in this workspace",
                             hint="run 'bincli download' first, or pass --input DIR")
        root = Path(outputs["data_dir"])
        if outputs.get("ids_file") and Path(outputs["ids_file"]).is_file():
            from bincli.data.abid import read_ids_file

            selection = set(read_ids_file(outputs["ids_file"]))
    if not (root / "metadata").is_dir() or not (root / "images").is_dir():
        raise DataError(f"{root}: expected an ABID folder with images/ and metadata/ inside")
    return root.resolve(), selection


def scan(root: Path, workers: int = 8,
         only: set[str] | None = None) -> tuple[list[Item], list[Rejected], dict[str, str]]:
    """Read metadata and check every image (of `only`, if given). Returns (good items, rejected, sha256 by id)."""
    meta_ids = {p.stem: p for p in (root / "metadata").glob("*.json") if only is None or p.stem in only}
    image_ids = {p.stem for p in (root / "images").glob("*.jpg") if only is None or p.stem in only}
    rejected = [Rejected(i, "image without metadata") for i in sorted(image_ids - meta_ids.keys())]
    rejected += [Rejected(i, "metadata without image") for i in sorted(meta_ids.keys() - image_ids)]
    ids = sorted(meta_ids.keys() & image_ids)

    def check(id_: str) -> Item | Rejected | tuple[Item, str]:
        count = _read_count(meta_ids[id_])
        if isinstance(count, str):
            return Rejected(id_, count)
        rel = f"images/{id_}.jpg"
        problem, digest = _check_jpeg(root / rel)
        if problem:
            return Rejected(id_, problem)
        return Item(id_, rel, count), digest

    items: list[Item] = []
    digests: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes without the GIL
        for result in pool.map(check, ids):
            if isinstance(result, Rejected):
                rejected.append(result)
            else:
                item, digest = result
                items.append(item)
                digests[item.id] = digest
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
    return unique, rejected, digests


def _read_count(path: Path) -> int | str:
    """EXPECTED_QUANTITY of one metadata file, or the reason it cannot be used."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable metadata ({type(exc).__name__})"
    count = data.get("EXPECTED_QUANTITY") if isinstance(data, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return f"metadata has no valid EXPECTED_QUANTITY (got {count!r})"
    return count


def _check_jpeg(path: Path) -> tuple[str | None, str]:
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable image ({exc.strerror})", ""
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                return f"not a JPEG ({im.format})", digest
            im.draft("RGB", (im.width // 8 or 1, im.height // 8 or 1))  # decode at 1/8 scale: fast, still reads all
            im.load()
    except UnidentifiedImageError:
        return "not an image", digest
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt image ({str(exc).splitlines()[0][:60]})", digest
    return None, digest


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


def _cut(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """Sizes for n items: floors of n*ratio, remainders to the largest fractions (each within 1)."""
    exact = [n * r for r in ratios]
    sizes = [int(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda i: (sizes[i] - exact[i], i))
    for i in order[: n - sum(sizes)]:
        sizes[i] += 1
    return sizes


def write_manifest(path: Path, items: list[Item], spec: ClassSpec) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    for item in items:
        writer.writerow((item.id, item.path, spec.bucket(item.count)))
    atomic_write_text(path, buf.getvalue())


def write_folder_layout(out_dir: Path, root: Path, splits: dict[str, list[Item]], spec: ClassSpec) -> Path:
    """`<out>/folders/<split>/<count>/<id>.jpg`, hard links where possible (no duplicate bytes).

    Built beside the target and swapped in, so a rerun never leaves a half layout."""
    target = out_dir / "folders"
    staging = out_dir / ".folders.staging"
    shutil.rmtree(staging, ignore_errors=True)
    for name, items in splits.items():
        for item in items:
            dest = staging / name / spec.labels[spec.index(item.count)] / f"{item.id}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(root / item.path, dest)
            except OSError:  # another filesystem, or links not allowed
                shutil.copy2(root / item.path, dest)
    old = out_dir / ".folders.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
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
    from bincli.core.fileio import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())


def run_split(cfg: SplitConfig, workdir: Path) -> dict[str, Any]:
    """The whole step. Returns the result (also recorded in state as 'split')."""
    state = State(workdir)
    root, selection = resolve_input(cfg.input, state)
    spec = ClassSpec.parse(cfg.classes)
    items, rejected, _ = scan(root, only=selection)
    if not items:
        raise DataError(f"{root}: no usable image (checked {len(rejected)} files; see the reasons with --json)")
    splits, outside = assign(items, spec, cfg.ratios, cfg.seed, cfg.max_per_class)
    if not splits["train"]:
        raise DataError(f"{root}: no image with a count in classes {spec} (counts seen: "
                        f"{', '.join(str(c) for c in sorted(outside))})")

    out_dir = (Path(workdir) / "splits").resolve()
    manifests = {name: out_dir / f"{name}.csv" for name in SPLITS}
    for name in SPLITS:
        write_manifest(manifests[name], splits[name], spec)
    table = [
        {"class": label, **{name: sum(1 for it in splits[name] if spec.index(it.count) == i) for name in SPLITS}}
        for i, label in enumerate(spec.labels)
    ]
    folders = write_folder_layout(out_dir, root, splits, spec) if cfg.layout == "folders" else None
    if cfg.layout != "folders":
        shutil.rmtree(out_dir / "folders", ignore_errors=True)  # stale from an earlier run
    histogram = out_dir / HISTOGRAM_FILE
    write_histogram(histogram, table)
    report = {
        "data_root": str(root),
        "rejected": [{"id": r.id, "reason": r.reason} for r in rejected],
        "outside_classes": {str(k): v for k, v in sorted(outside.items())},
    }
    atomic_write_json(out_dir / REPORT_FILE, report)

    outputs = {
        "data_root": str(root),
        "manifests_dir": str(out_dir),
        "manifests": {name: str(path) for name, path in manifests.items()},
        "classes": str(spec),
        **{name: len(splits[name]) for name in SPLITS},
        "rejected": len(rejected),
        "outside_classes": sum(outside.values()),
        "folders": str(folders) if folders else None,
        "histogram": str(histogram),
        "report": str(out_dir / REPORT_FILE),
    }
    state.record("split", outputs, cfg.model_dump(mode="json"))
    return {**outputs, "table": table, "rejected_ids": report["rejected"]}
