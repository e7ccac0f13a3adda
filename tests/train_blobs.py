"""Generated count data for the training tests: 0..N bright blobs on dark noise (never real ABID images).

Blobs never overlap, so the count is always visible and a model can learn it exactly.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from bincli.core.classes import ClassSpec
from bincli.state import State

SPLITS = ("train", "valid", "test")


def blob_image(count: int, size: int, rng: random.Random) -> Image.Image:
    """A dark noisy bin with `count` separate bright discs."""
    img = Image.effect_noise((size, size), 24).convert("RGB").point(lambda v: v // 5)
    draw = ImageDraw.Draw(img)
    r = max(2, size // 14)
    centres: list[tuple[int, int]] = []
    while len(centres) < count:
        x, y = rng.randint(r + 1, size - r - 2), rng.randint(r + 1, size - r - 2)
        if all((x - a) ** 2 + (y - b) ** 2 > (2 * r + 2) ** 2 for a, b in centres):
            centres.append((x, y))
    for x, y in centres:
        shade = rng.randint(190, 250)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(shade, shade - 10, shade - 30))
    return img


def make_split(root: Path, per_class: dict[str, int], classes: str = "0-5", size: int = 32,
               seed: int = 0) -> dict[str, Any]:
    """`<root>/data/images/<id>.jpg` + `<root>/splits/{train,valid,test}.csv` (id,path,count), like
    `bincli split` writes them; returns the outputs `split` records in state."""
    spec = ClassSpec.parse(classes)
    rng = random.Random(seed)
    data_root, splits_dir = root / "data", root / "splits"
    (data_root / "images").mkdir(parents=True, exist_ok=True)
    splits_dir.mkdir(parents=True, exist_ok=True)
    manifests, sizes = {}, {}
    next_id = 1
    for split in SPLITS:
        rows = []
        for count in spec.counts:
            for _ in range(per_class.get(split, 0)):
                id_ = f"{next_id:05d}"
                next_id += 1
                blob_image(count, size, rng).save(data_root / "images" / f"{id_}.jpg", quality=92)
                rows.append((id_, f"images/{id_}.jpg", count))
        rng.shuffle(rows)
        manifests[split] = splits_dir / f"{split}.csv"
        with open(manifests[split], "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(("id", "path", "count"))
            w.writerows(rows)
        sizes[split] = len(rows)
    return {"data_root": str(data_root.resolve()), "manifests_dir": str(splits_dir.resolve()),
            "manifests": {k: str(v.resolve()) for k, v in manifests.items()}, "classes": str(spec), **sizes}


def make_channels(root: Path, per_class: dict[str, int], classes: str = "0-5", size: int = 32,
                  seed: int = 0) -> dict[str, Path]:
    """SageMaker's channel layout: `<root>/<split>/<split>.csv` + `<root>/<split>/images/<id>.jpg`."""
    out = make_split(root / "_src", per_class, classes, size, seed)
    channels = {}
    for split in SPLITS:
        ch = root / split
        (ch / "images").mkdir(parents=True, exist_ok=True)
        with open(out["manifests"][split], newline="") as f:
            rows = list(csv.reader(f))
        for _id, rel, _count in rows[1:]:
            (Path(out["data_root"]) / rel).rename(ch / rel)
        Path(out["manifests"][split]).rename(ch / f"{split}.csv")
        channels[split] = ch
    return channels


def record_split(workdir: Path, outputs: dict[str, Any]) -> None:
    """The state record `bincli split` would leave."""
    State(workdir).record("split", outputs, {"classes": outputs["classes"]})
