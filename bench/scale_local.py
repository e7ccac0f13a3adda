"""Local data steps at scale (issue 27): `split` and `inspect` over --small vs --large photos,
inspect's cached rerun, the near-duplicate search alone, then `status` and `pipeline --dry-run`
on that workspace. Each step runs as the CLI in a child process: wall time and peak RSS.

    .venv/bin/python bench/scale_local.py [--small 3000] [--large 100000] [--hashes 10000,30000]

Workload (a temp folder, never the project): the sample's 1,473 photos (most already resized to
224x224, 198 originals) hard-linked under new ids until there are N, with their metadata. Every
photo is read, hashed and decoded as if it were new (the facts cache is keyed by path first);
but copies share bytes, so split keeps one photo per distinct file (the rest are reported as
duplicates, each by id) and inspect's duplicate groups are copies of the same 1,473 photos:
the per-photo work scales, the split's size does not. The near-duplicate search is therefore
also timed alone on --hashes random 64-bit hashes (all distinct, its worst case).
Targets: time per photo of --large at most 1.1x that of --small, RSS under 500 MB, inspect's
cached rerun under 1 min, status and pipeline --dry-run under 2 s. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("BINCLI_SHARED", ROOT.parent / "shared"))
BINCLI = str(Path(sys.executable).with_name("bincli"))


def run_child(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, stdout) of one command, through a wrapper that reads its rusage."""
    wrapper = ("import json,resource,subprocess,sys,time;t=time.perf_counter();"
               "p=subprocess.run(sys.argv[1:],capture_output=True);"
               "r=resource.getrusage(resource.RUSAGE_CHILDREN);"
               "sys.stderr.buffer.write(p.stderr);"
               "print(json.dumps({'rc':p.returncode,'rss':r.ru_maxrss/1024,'s':time.perf_counter()-t,"
               "'out':p.stdout.decode()}))")
    proc = subprocess.run([sys.executable, "-c", wrapper, *args], cwd=cwd, capture_output=True, text=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if got["rc"]:
        raise SystemExit(f"{' '.join(args[1:3])} failed: {proc.stderr[-2000:]}")
    return got["s"], got["rss"], got["out"]


def build(sample: Path, dest: Path, n: int) -> None:
    ids = sorted(p.stem for p in (sample / "images").glob("*.jpg"))
    (dest / "images").mkdir(parents=True)
    (dest / "metadata").mkdir()
    for k in range(n):
        src, new = ids[k % len(ids)], f"{500000 + k}"
        os.link(sample / "images" / f"{src}.jpg", dest / "images" / f"{new}.jpg")
        os.link(sample / "metadata" / f"{src}.json", dest / "metadata" / f"{new}.json")


def steps(n: int, sample: Path, tmp: Path, rerun: bool) -> dict[str, tuple[float, float]]:
    data, work = tmp / f"data-{n}", tmp / f"work-{n}"
    build(sample, data, n)
    got = {}
    got["split"] = run_child([BINCLI, "-q", "split", "-w", str(work), "--input", str(data), "--json"], tmp)[:2]
    inspect = [BINCLI, "-q", "inspect", "-w", str(work), "--set", f"inspect.input={data}", "--json"]
    got["inspect"] = run_child(inspect, tmp)[:2]
    if rerun:
        got["inspect cached"] = run_child(inspect, tmp)[:2]
        got["status"] = run_child([BINCLI, "-q", "status", "-w", str(work), "--json"], tmp)[:2]
        got["pipeline --dry-run"] = run_child([BINCLI, "-q", "pipeline", "-w", str(work), "--dry-run",
                                               "--set", f"split.input={data}"], tmp)[:2]
    shutil.rmtree(data)
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "abid-sample")
    ap.add_argument("--small", type=int, default=3000)
    ap.add_argument("--large", type=int, default=100000)
    ap.add_argument("--hashes", default="10000,30000", help="sizes for the search alone ('' = skip)")
    args = ap.parse_args()
    if not (args.data / "images").is_dir():
        print(f"skipped: no ABID sample at {args.data}")
        return 0
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    tmp = Path(tempfile.mkdtemp(prefix="bincli-scale-local-"))
    try:
        small = steps(args.small, args.data, tmp, rerun=False)
        large = steps(args.large, args.data, tmp, rerun=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'step':<20}{'small s':>9}{'large s':>9}{'ratio':>7}{'per photo':>11}{'RSS small':>11}{'RSS large':>11}")
    for name, (s, rss) in large.items():
        if name in small:
            s0, rss0 = small[name]
            per = (s / args.large) / (s0 / args.small)
            print(f"{name:<20}{s0:>9.1f}{s:>9.1f}{s / s0:>7.1f}{per:>10.2f}x{rss0:>10.0f}M{rss:>10.0f}M")
        else:
            print(f"{name:<20}{'':>9}{s:>9.2f}{'':>7}{'':>11}{'':>11}{rss:>10.0f}M")
    print(f"({args.small} vs {args.large} photos; per photo = large's seconds per photo / small's; "
          "target <= 1.1x)")

    from bincli.data.near_duplicates import near_pairs

    for n in [int(x) for x in args.hashes.split(",") if x]:
        rng = random.Random(0)
        hashes = {str(k): rng.getrandbits(64) for k in range(n)}
        t0 = time.perf_counter()
        near_pairs(hashes)
        print(f"near-duplicate search alone, {n} distinct hashes: {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
