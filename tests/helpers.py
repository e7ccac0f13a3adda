"""Small generated ABID-like data for tests (never real ABID images in the repo)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw


def make_bin_image(path: Path, count: int, size: int = 64, seed: int = 0) -> Path:
    """A dark, noisy 'bin' with `count` bright blobs, saved as JPEG."""
    rng = random.Random(seed)
    img = Image.effect_noise((size, size), 20).convert("RGB").point(lambda v: v // 4)
    draw = ImageDraw.Draw(img)
    r = max(2, size // 12)
    for _ in range(count):
        x, y = rng.randint(r, size - r - 1), rng.randint(r, size - r - 1)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(230, 220, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)
    return path


def make_abid_folder(root: Path, counts: dict[int, int], size: int = 48, start_id: int = 1) -> list[str]:
    """An ABID-layout folder: images/<id>.jpg + metadata/<id>.json, `counts` = {count: n images}.

    Ids are zero-padded to 5 digits like the real bucket."""
    ids = []
    next_id = start_id
    for count, n in sorted(counts.items()):
        for _ in range(n):
            id_ = f"{next_id:05d}"
            make_bin_image(root / "images" / f"{id_}.jpg", count, size=size, seed=next_id)
            write_metadata(root / "metadata" / f"{id_}.json", count)
            ids.append(id_)
            next_id += 1
    return ids


def write_metadata(path: Path, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    items = {f"B00TEST{i:03d}": {"asin": f"B00TEST{i:03d}", "quantity": 1} for i in range(count)}
    path.write_text(json.dumps({"BIN_FCSKU_DATA": items, "EXPECTED_QUANTITY": count}))
