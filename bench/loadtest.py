"""Local endpoint throughput and p95 at 1, 8 and 32 clients, 1 vs 2 instances, and the load generator's cost.

    .venv/bin/python bench/loadtest.py [--image-size 224] [--duration 10s] [--max-requests 400]
                                       [--clients 1 8 32] [--instances 1 2] [--data ../shared/abid-sample]

An untrained resnet18 at the model's input size (weights do not change the cost), packaged as
model.tar.gz and served by `bincli deploy --instances N` (N server processes on one port, each
with cores/N torch threads). Real ABID JPEGs from the sample. `bincli loadtest`'s own step
function drives it (threads, boto3's keep-alive pool), every step run whatever its latency.
Figures per (instances, clients): requests/s, p50/p95/p99, errors, and the load generator's CPU
per request; "client cores" is that CPU times the rate: the share of the machine the load test
itself used, which must stay well below the server's or the figures measure the client.
A control row (--no-control drops it): 1 instance with the torch threads of one of 2 instances, so
the gain of 2 processes can be told apart from the gain of fewer threads per request.
Prints figures and `uptime` (other work on the machine skews them); asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
SHARED = Path(os.environ.get("BINCLI_SHARED", ROOT.parent / "shared"))


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--duration", default="10s", help="time per step (default 10s)")
    p.add_argument("--max-requests", type=int, default=400, help="requests per step at most (default 400)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    p.add_argument("--data", type=Path, default=SHARED / "abid-sample")
    p.add_argument("--no-control", action="store_true", help="skip the 1-instance, cores/2-threads control run")
    args = p.parse_args()
    images = args.data / "images"
    if not images.is_dir():
        print(f"no sample photos at {images} (pass --data)", file=sys.stderr)
        return 2

    from serve import build_model_tar  # bench/serve.py: the same untrained model

    from bincli.backends.local.endpoint import deploy, teardown, torch_threads
    from bincli.config import load_config
    from bincli.steps.loadtest import run_loadtest

    print(f"before: {uptime()}")
    print(f"cpus: {os.cpu_count()}, image size {args.image_size}, steps of {args.duration} "
          f"(at most {args.max_requests} requests)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bincli-bench-loadtest-") as tmp:
        tar = build_model_tar(Path(tmp), args.image_size)
        runs = [(n, None) for n in args.instances]
        if not args.no_control and "OMP_NUM_THREADS" not in os.environ:
            runs.insert(1, (1, torch_threads(2)))
        for n, omp in runs:
            cfg = load_config(None, {"workdir": Path(tmp) / f"work-{n}-{omp}", "deploy.port": 0,
                                     "deploy.instances": n}, env={}).config
            if omp is not None:
                os.environ["OMP_NUM_THREADS"] = str(omp)  # the server inherits it
            try:
                record = deploy(cfg, model=tar)
            finally:
                if omp is not None:
                    del os.environ["OMP_NUM_THREADS"]
            try:
                result = run_loadtest(cfg, images=images, clients=args.clients, slo_p95_ms=1e9,
                                      duration=args.duration, max_requests=args.max_requests)
            finally:
                teardown(cfg)
            threads = omp or record.get("torch_threads", "all")  # one server: torch's default (every core)
            for s in result["steps"]:
                rows.append({"instances": n, "threads": threads, **s})
    print(f"\n{'inst':>4} {'thr':>3} {'clients':>7} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
          f"{'errors':>6} {'client CPU ms/req':>17} {'client cores':>12}")
    for r in rows:
        cpu = r["client_cpu_ms_per_request"] or 0.0
        print(f"{r['instances']:>4} {r['threads']!s:>3} {r['clients']:>7} {r['rps']:>7.1f} {r['p50_ms']!s:>7} "
              f"{r['p95_ms']!s:>7} {r['p99_ms']!s:>7} {r['errors']:>6} {cpu:>17.2f} {cpu * r['rps'] / 1000:>12.2f}")
    by = {(r["instances"], r["clients"]): r for r in rows if r["threads"] == "all" or r["instances"] > 1}
    if len(args.instances) > 1:
        a, b = args.instances[0], args.instances[-1]
        ratios = [f"{c} clients x{by[(b, c)]['rps'] / by[(a, c)]['rps']:.2f}" for c in args.clients
                  if by.get((a, c)) and by.get((b, c)) and by[(a, c)]["rps"]]
        print(f"\nthroughput {b} vs {a} instance(s): " + ", ".join(ratios))
    print(f"after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
