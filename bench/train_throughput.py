"""Training throughput on the ABID sample (CPU by default): is the data pipeline the bottleneck?

    .venv/bin/python bench/train_throughput.py [--images 256] [--image-size 224] [--workers 2]

Prints, for resnet18 at 224 px:
  - decode cost per image: PIL vs torchvision.io.decode_jpeg (the one core/data.py uses), for the
    sample's 224-px copies and its original-size photos;
  - the data pipeline alone (decode + resize + train preset, through the DataLoader): first epoch
    (cache cold: decodes and fills the cache) vs later epochs (reads the cache);
  - the training step alone on batches already in memory ("compute only") vs the full loop with the
    pipeline, first and later epochs. Target: the pipeline costs <= 10% of the compute-only figure.
Figures are medians where repeated; on a shared machine they move a lot between runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bincli.core.classes import ClassSpec
from bincli.core.data import CountDataset, Sample, TrainSampler, build_loader, decode, open_cache
from bincli.core.distributed import DistContext
from bincli.core.engine import WarmupSchedule, build_optimizer, train_one_epoch
from bincli.core.model import build_model
from bincli.core.presets import train_transform

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "abid-sample"


def load_samples(root: Path, n: int, spec: ClassSpec) -> list[Sample]:
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # image_id,count,...
    samples = [Sample(r["image_id"], root / "images" / f"{r['image_id']}.jpg", spec.index(int(r["count"])))
               for r in rows if spec.contains(int(r["count"]))]
    rng = np.random.default_rng(0)
    return [samples[i] for i in rng.permutation(len(samples))[:n]]


def decode_costs(root: Path, limit: int = 300) -> dict[str, dict[str, float]]:
    with open(root / "image_info.csv", newline="") as f:
        info = {r["image_id"]: r for r in csv.DictReader(f)}
    groups = {"224-px copies": [i for i, r in info.items() if r["resized_224"] == "1"][:limit],
              "original photos": [i for i, r in info.items() if r["resized_224"] != "1"][:limit]}
    out = {}
    for name, ids in groups.items():
        blobs = [(root / "images" / f"{i}.jpg").read_bytes() for i in ids]
        sizes = [f"{info[i]['width']}x{info[i]['height']}" for i in ids]
        timings = {}
        for label, fn in (("PIL", lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))),
                          ("decode_jpeg", decode)):
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                for b in blobs:
                    fn(b)
                runs.append((time.perf_counter() - t0) / len(blobs) * 1e3)
            timings[label] = statistics.median(runs)
        out[name] = {"n": len(blobs), "example_size": sizes[0], **timings}
    return out


def pipeline_cpu_ms(ds: CountDataset, batch: int) -> float:
    """CPU milliseconds per image of the pipeline, run in this process (workers=0): unlike wall time,
    this barely moves when other jobs share the machine."""
    loader = build_loader(ds, batch, TrainSampler(len(ds), seed=0), 0, drop_last=True)
    t0 = time.process_time()
    n = sum(x.shape[0] for x, _ in loader)
    return (time.process_time() - t0) / n * 1e3


def pipeline_epoch(ds: CountDataset, batch: int, workers: int) -> float:
    loader = build_loader(ds, batch, TrainSampler(len(ds), seed=0), workers, drop_last=True)
    t0 = time.perf_counter()
    n = sum(x.shape[0] for x, _ in loader)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=SAMPLE)
    p.add_argument("--images", type=int, default=256, help="subset of the sample per epoch")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--rounds", type=int, default=3, help="interleaved compute-only / full-loop epoch pairs")
    a = p.parse_args()
    if not (a.data / "images").is_dir():
        sys.exit(f"no ABID sample at {a.data} (pass --data)")
    torch.manual_seed(0)
    spec = ClassSpec.parse("0-5+")
    samples = load_samples(a.data, a.images, spec)
    size, bs = a.image_size, a.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.model} at {size} px, batch {bs}, "
          f"{len(samples)} images per epoch, {a.workers} DataLoader workers, CPU")

    print("\n== decode cost per image (median of 3 passes)")
    for name, r in decode_costs(a.data).items():
        print(f"  {name:16s} (n={r['n']}, e.g. {r['example_size']}): PIL {r['PIL']:.2f} ms, "
              f"decode_jpeg {r['decode_jpeg']:.2f} ms  -> {r['PIL'] / r['decode_jpeg']:.2f}x")

    with tempfile.TemporaryDirectory(prefix="bincli-bench-cache-") as tmp:
        run(a, samples, Path(tmp))


def run(a: argparse.Namespace, samples: list[Sample], cache_dir: Path) -> None:
    size, bs = a.image_size, a.batch_size
    spec = ClassSpec.parse("0-5+")
    tf = train_transform(size)
    print("\n== data pipeline alone (decode/cache -> resize -> train preset -> batches)")
    cpu_cold_ds = CountDataset(samples, size, tf, open_cache(cache_dir / "cpu", samples, size))
    cpu_cold = pipeline_cpu_ms(cpu_cold_ds, bs)
    cpu_warm = pipeline_cpu_ms(cpu_cold_ds, bs)
    uncached = pipeline_epoch(CountDataset(samples, size, tf), bs, a.workers)
    cold_ds = CountDataset(samples, size, tf, open_cache(cache_dir / "a", samples, size))
    cold = pipeline_epoch(cold_ds, bs, a.workers)
    warm = pipeline_epoch(cold_ds, bs, a.workers)
    print(f"  wall, {a.workers} workers: no cache {uncached:.0f} img/s, cache first epoch {cold:.0f} img/s, "
          f"cache later epochs {warm:.0f} img/s")
    print(f"  CPU per image, in-process: first epoch (decode + resize + fill cache) {cpu_cold:.2f} ms, "
          f"later epochs (cache) {cpu_warm:.2f} ms")

    ctx = DistContext()
    model = build_model(a.model, spec.num_classes).to(memory_format=torch.channels_last)
    criterion = torch.nn.CrossEntropyLoss()
    opt = build_optimizer("adamw", model, 1e-3, 1e-4)
    sched = WarmupSchedule(opt, "none", epochs=10, warmup_epochs=0)
    steps = len(samples) // bs

    def epoch(loader, n=1) -> float:
        return train_one_epoch(model, loader, criterion, opt, sched, epoch=n, steps_per_epoch=steps, ctx=ctx)[
            "train_img_s"]

    batches = list(build_loader(CountDataset(samples, size, tf), bs, TrainSampler(len(samples)), 0, drop_last=True))
    epoch(batches[:2])  # warm-up: first-iteration kernel selection
    t0 = time.process_time()
    epoch(batches)
    step_cpu = (time.process_time() - t0) / (len(batches) * bs) * 1e3
    print(f"\n== training ({steps} steps per epoch; compute-only and full-loop epochs interleaved, "
          f"{a.rounds} rounds, medians)")
    ds = CountDataset(samples, size, tf, open_cache(cache_dir / "b", samples, size))
    sampler = TrainSampler(len(ds), seed=0)
    loader = build_loader(ds, bs, sampler, a.workers, drop_last=True)
    full_first = epoch(loader, 1)  # cache cold: decodes every JPEG and fills the cache
    compute, full = [], []
    for r in range(a.rounds):
        compute.append(epoch(batches))
        sampler.set_epoch(2 + r)
        full.append(epoch(loader, 2 + r))
    base, later = statistics.median(compute), statistics.median(full)
    print(f"  compute only (batches in memory): {base:.1f} img/s (runs: {', '.join(f'{c:.1f}' for c in compute)})")
    print(f"  full loop, first epoch (cache cold): {full_first:.1f} img/s -> pipeline overhead "
          f"{100 * (1 - full_first / base):+.1f}%")
    print(f"  full loop, later epochs (cache warm): {later:.1f} img/s (runs: {', '.join(f'{c:.1f}' for c in full)}) "
          f"-> pipeline overhead {100 * (1 - later / base):+.1f}%")
    print(f"  CPU per image: training step {step_cpu:.1f} ms (all threads) vs pipeline {cpu_warm:.2f} ms "
          f"(cache) / {cpu_cold:.2f} ms (first epoch) -> the pipeline needs {100 * cpu_warm / step_cpu:.1f}% / "
          f"{100 * cpu_cold / step_cpu:.1f}% of the step's CPU")
    overhead = 100 * (1 - later / base)
    print(f"\n  target: the pipeline adds <= 10% over compute only; later epochs: {overhead:+.1f}% "
          f"({'met' if overhead <= 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
