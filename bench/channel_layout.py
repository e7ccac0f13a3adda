"""A training channel of many small JPEGs: loose files (what `bincli upload` makes) vs tar shards.

    .venv/bin/python bench/channel_layout.py [--photos 10000] [--workers 2] [--shard-size 1000]

Makes --photos synthetic bin-like JPEGs (512x384, dark noise and bright blobs, ~15 KB: an ABID photo's
average size; never ABID photos) in a temp dir, laid out two ways: loose files with a manifest, as a
File or FastFile channel shows them (<channel>/images/<id>.jpg), and tar shards of --shard-size photos
each. Then prints, for each layout:
  - read only: files/s and MB/s of opening and reading every photo (loose: one open per photo;
    shards: one sequential read per shard);
  - the loader: images/s through the core's first-epoch path (read, decode, resize to 224, the train
    preset, batches of 32 through a DataLoader with --workers processes): what a training step waits for.
The files sit in the page cache (just written): this measures the per-file cost on this machine, not
a disk's or S3's. Under FastFile each first open of a loose file is an S3 request (tens of ms, on paper);
a shard is one request per --shard-size photos.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bincli.core.classes import ClassSpec
from bincli.core.data import CountDataset, TrainSampler, build_loader, decode, load_channel, resize_square
from bincli.core.presets import train_transform

SIZE, BATCH = 224, 32


def photo(rng: random.Random, count: int) -> bytes:
    img = Image.effect_noise((512, 384), 10).convert("RGB").point(lambda v: v // 4)
    draw = ImageDraw.Draw(img)
    for _ in range(count):
        x, y, r = rng.randint(40, 470), rng.randint(40, 340), rng.randint(15, 40)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randint(150, 250),) * 3)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def make_layouts(root: Path, n: int, shard_size: int) -> tuple[Path, list[Path], int]:
    """root/train (loose: images/ + train.csv) and root/shards/*.tar; returns them and the total bytes.
    64 distinct photos, each file its own copy: the bytes read and decoded per photo are real."""
    rng = random.Random(0)
    distinct = [(photo(rng, k % 5 + 1), k % 5 + 1) for k in range(64)]
    channel, shards_dir = root / "train", root / "shards"
    (channel / "images").mkdir(parents=True)
    shards_dir.mkdir()
    total = 0
    with open(channel / "train.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("id", "path", "count"))
        for i in range(n):
            data, count = distinct[i % len(distinct)]
            (channel / "images" / f"{i:06d}.jpg").write_bytes(data)
            w.writerow((f"{i:06d}", f"images/{i:06d}.jpg", count))
            total += len(data)
    shards = []
    for start in range(0, n, shard_size):
        path = shards_dir / f"train-{start // shard_size:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(n, start + shard_size)):
                data, count = distinct[i % len(distinct)]
                for name, blob in ((f"{i:06d}.jpg", data), (f"{i:06d}.cls", str(count).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
        shards.append(path)
    return channel, shards, total


class ShardDataset(IterableDataset):
    """Tar shards read front to back, each DataLoader worker its own shards (WebDataset's layout)."""

    def __init__(self, shards: list[Path], spec: ClassSpec, transform=None, decode_images: bool = True):
        self.shards, self.spec, self.transform, self.decode_images = shards, spec, transform, decode_images

    def __iter__(self):
        info = get_worker_info()
        mine = self.shards[info.id::info.num_workers] if info else self.shards
        for shard in mine:
            with tarfile.open(shard, "r|") as tar:  # a stream: one sequential read per shard
                image = None
                for member in tar:
                    data = tar.extractfile(member).read()
                    if member.name.endswith(".jpg"):
                        image = data
                        continue
                    target = self.spec.index(int(data))
                    if not self.decode_images:
                        yield len(image), target
                        continue
                    img = resize_square(decode(image), SIZE)
                    yield (self.transform(img) if self.transform else img), target


def read_loose(channel: Path) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for path in sorted((channel / "images").iterdir()):
        with open(path, "rb") as f:
            f.read()
        n += 1
    return n, time.perf_counter() - start


def read_shards(shards: list[Path], spec: ClassSpec) -> tuple[int, float]:
    start = time.perf_counter()
    n = sum(1 for _ in ShardDataset(shards, spec, decode_images=False))
    return n, time.perf_counter() - start


def loader_rate(loader) -> tuple[int, float]:
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=1000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = ClassSpec.parse("1-5")
    with tempfile.TemporaryDirectory(prefix="bincli-bench-") as tmp:
        t0 = time.perf_counter()
        channel, shards, total = make_layouts(Path(tmp), args.photos, args.shard_size)
        mb = total / 1e6
        print(f"{args.photos} photos, {mb:.0f} MB ({total / args.photos / 1e3:.0f} KB each), {len(shards)} shards; "
              f"made in {time.perf_counter() - t0:.0f} s", flush=True)
        for name, (n, s) in (("loose files", read_loose(channel)), ("tar shards", read_shards(shards, spec))):
            print(f"read only    {name:12s} {n / s:9.0f} files/s  {mb / s:7.0f} MB/s  ({s:.1f} s)", flush=True)
        samples = load_channel(channel, "train", spec)
        loose = build_loader(CountDataset(samples, SIZE, train_transform(SIZE)), BATCH,
                             TrainSampler(len(samples), seed=0), args.workers)
        sharded = DataLoader(ShardDataset(shards, spec, train_transform(SIZE)), batch_size=BATCH,
                             num_workers=args.workers)
        for name, loader in (("loose files", loose), ("tar shards", sharded)):
            n, s = loader_rate(loader)
            print(f"loader       {name:12s} {n / s:9.1f} images/s ({n} in {s:.1f} s, {args.workers} workers, "
                  f"decode + resize {SIZE} + train preset)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
