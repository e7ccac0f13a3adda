"""`bincli predict DIR --out results.jsonl` at scale: photos/s against loadtest's best requests/s.

    .venv/bin/python bench/batch_predict.py [--photos 10000] [--image-size 224] [--clients 1 2 4 8]
                                            [--concurrency 8] [--data ../shared/abid-sample]

An untrained resnet18 (bench/serve.py's model: weights do not change the cost) served by `bincli deploy`
(one local endpoint). First `bincli loadtest`'s step function at each client count (photos held in
memory): its best requests/s is what the endpoint takes. Then the batch: --photos names (hard links
to the sample's JPEGs, in a temp folder; nothing is copied into the project) through
`run_batch_predict` to the same endpoint, streamed to a JSONL, with `predict.concurrency` requests in
flight; the same for a rerun (resume: nothing left, no request sent) and for --model in-process
batches. Figures: photos/s, the ratio to loadtest's best (goal: at least 0.9), peak RSS of this
process (ru_maxrss: the batch holds no answers in memory). Prints figures and `uptime` (other work on
the machine skews them); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("BINCLI_SHARED", ROOT.parent / "shared"))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=int, default=10_000)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--concurrency", type=int, default=8, help="predict.concurrency for the batch (default 8)")
    p.add_argument("--duration", default="10s", help="loadtest: time per step (default 10s)")
    p.add_argument("--data", type=Path, default=SHARED / "abid-sample")
    p.add_argument("--skip-in-process", action="store_true", help="leave out the --model in-process batch")
    args = p.parse_args()
    sample = sorted((args.data / "images").glob("*.jpg"))
    if not sample:
        print(f"no sample photos in {args.data / 'images'} (pass --data)", file=sys.stderr)
        return 2

    from serve import build_model_tar  # bench/serve.py: the same untrained model

    from bincli.backends.local.endpoint import deploy, teardown
    from bincli.config import load_config
    from bincli.console import set_quiet
    from bincli.steps.batch_predict import run_batch_predict
    from bincli.steps.loadtest import run_loadtest

    set_quiet(True)  # no progress lines in the figures
    print(f"before: {uptime()}")
    print(f"cpus: {os.cpu_count()}, image size {args.image_size}, {args.photos} photos, "
          f"batch concurrency {args.concurrency}")
    with tempfile.TemporaryDirectory(prefix="bincli-bench-batch-") as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        for i in range(args.photos):
            os.link(sample[i % len(sample)], photos / f"{i:06d}.jpg")
        tar = build_model_tar(tmp, args.image_size)
        cfg = load_config(None, {"workdir": tmp / "work", "deploy.port": 0,
                                 "predict.concurrency": args.concurrency}, env={}).config
        deploy(cfg, model=tar)
        try:
            lt = run_loadtest(cfg, images=args.data / "images", clients=args.clients, slo_p95_ms=1e9,
                              duration=args.duration, max_requests=2000)
            best = max(s["rps"] for s in lt["steps"])
            for s in lt["steps"]:
                print(f"loadtest {s['clients']:>2} clients: {s['rps']:7.1f} req/s  p95 {s['p95_ms']} ms")
            rows = []
            t0 = time.monotonic()
            first = run_batch_predict(cfg, [photos], tmp / "endpoint.jsonl")
            rows.append(("endpoint", first, time.monotonic() - t0))
            t0 = time.monotonic()
            again = run_batch_predict(cfg, [photos], tmp / "endpoint.jsonl")
            rows.append(("endpoint, rerun", again, time.monotonic() - t0))
        finally:
            teardown(cfg)
        if not args.skip_in_process:
            t0 = time.monotonic()
            local = run_batch_predict(cfg, [photos], tmp / "in-process.jsonl", model=tar)
            rows.append(("--model in-process", local, time.monotonic() - t0))
    print(f"\nloadtest best: {best:.1f} req/s")
    print(f"{'batch':<20} {'answered':>8} {'failed':>6} {'seconds':>8} {'photos/s':>9} {'/ loadtest best':>15}")
    for name, r, seconds in rows:
        rate = r["answered"] / seconds if r["answered"] else 0.0
        print(f"{name:<20} {r['answered']:>8} {r['failed']:>6} {seconds:>8.1f} {rate:>9.1f} {rate / best:>15.2f}")
    print(f"peak RSS of this process (server excluded): {peak_rss_mb():.0f} MB")
    print(f"after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
