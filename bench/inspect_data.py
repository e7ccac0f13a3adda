"""`bincli inspect` on 10,000 photos: cold (nothing cached) and cached, and the near-duplicate search.

    .venv/bin/python bench/inspect_data.py [--n 10000] [--data ../shared/abid-sample]

Workload: the sample's full-size originals (the photos not already resized to 224x224, so each
costs what a real ABID photo costs to read and decode), linked under new ids in a temp folder
until there are --n (metadata linked alongside). Copies share bytes, so the report's duplicate
groups are not realistic; the per-photo work is (every photo is read, hashed and decoded once
when cold: the cache is keyed by file, then by sha256 of what it read). The pairwise
near-duplicate search on that folder only sees a few hundred distinct hashes, so it is timed
apart on --n random 64-bit hashes, its worst case. Targets (issue 13, 2 cores): under 5 min
cold, under 1 min cached. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def build(data: Path, dest: Path, n: int) -> None:
    with open(data / "image_info.csv", newline="") as f:
        originals = [row["image_id"] for row in csv.DictReader(f) if row["resized_224"] == "0"]
    (dest / "images").mkdir(parents=True)
    (dest / "metadata").mkdir()
    for k in range(n):
        src = originals[k % len(originals)]
        new = f"{k:06d}"
        os.symlink((data / "images" / f"{src}.jpg").resolve(), dest / "images" / f"{new}.jpg")
        os.symlink((data / "metadata" / f"{src}.json").resolve(), dest / "metadata" / f"{new}.json")
    print(f"workload: {n} photos linked from {len(originals)} full-size originals of {data}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "abid-sample")
    args = parser.parse_args()
    if not (args.data / "image_info.csv").is_file():
        print(f"skipped: no ABID sample at {args.data}")
        return
    from bincli.config import Config, InspectConfig
    from bincli.data.near_duplicates import near_pairs
    from bincli.steps.data_report import run_inspect

    with tempfile.TemporaryDirectory(prefix="bench-inspect-") as tmp:
        tmp = Path(tmp)
        build(args.data, tmp / "data", args.n)
        cfg = Config(workdir=tmp / "work", inspect=InspectConfig(input=tmp / "data"))
        for label in ("cold (empty cache)", "cached (rerun)", "cached (rerun)"):
            t0 = time.perf_counter()
            out = run_inspect(cfg)
            dt = time.perf_counter() - t0
            print(f"{label:20s} {dt:7.1f} s  ({out['images']} photos, {out['cache']['read']} read, "
                  f"{args.n / dt:,.0f} photos/s); page {os.path.getsize(out['page']) / 1e6:.1f} MB")
    rng = random.Random(0)
    hashes = {f"{k:06d}": rng.getrandbits(64) for k in range(args.n)}
    t0 = time.perf_counter()
    near_pairs(hashes)
    print(f"near-duplicate search, {args.n} distinct hashes: {time.perf_counter() - t0:.2f} s")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
