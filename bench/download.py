"""Download throughput on the local ABID mirror: the starter's loop, `aws s3 sync`, a plain
thread pool, and `bincli download`, on the same objects, several rounds; medians and ratios.

    .venv/bin/python bench/download.py [--rounds 3] [--data ../shared/abid-sample]

Workload: every id of the sample, image AND metadata (what `bincli download` keeps), from
../shared/tools/abid_mirror.py (moto's S3 server on 127.0.0.1, which tops out near one CPU core:
on it the best any client can do is a few times the starter). Methods:
  (a) starter   boto3 `download_file` for one key after another (the Udacity starter's loop);
                run on the first --starter-ids ids only (it is slow; its rate does not depend on n)
  (b) aws sync  `aws s3 sync s3://aft-vbi-pds/ DIR --no-sign-request` with its defaults
  (c) pool      32 threads of `get_object` + write, nothing checked
  (d) bincli    `run_download` in-process (what `bincli download` runs), which also checks
                each body against Content-Length, each JPEG (Pillow verify + end marker) and
                each metadata file (JSON with a label), writes temp files and renames them;
                plus the CLI end to end (process start included) for reference
Then a no-op rerun of 3,000 files already present: `bincli download` (CLI, process start
included) against `aws s3 sync`. And client CPU per object, the figure that decides whether
the design stays network-bound against the real bucket, where each request waits tens of ms:
a last section serves the same objects from a plain HTTP server (another process, keep-alive,
no CPU to speak of) that waits --latency-ms before each answer, and compares (c) and (d) there
with the ideal workers / latency.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = Path(os.environ.get("BINCLI_SHARED", ROOT.parent / "shared"))
BUCKET = "aft-vbi-pds"


def start_mirror(data: Path, url_file: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(SHARED / "tools" / "abid_mirror.py"), "--data", str(data),
                             "--port", "0", "--url-file", str(url_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if url_file.is_file() and url_file.read_text().strip():
            return proc, url_file.read_text().strip()
        if proc.poll() is not None:
            raise SystemExit(f"mirror exited: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("mirror did not start in 120 s")


def client(url: str, pool: int = 10):
    import boto3
    import botocore
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        config=Config(signature_version=botocore.UNSIGNED, max_pool_connections=pool))


def keys_for(ids: list[str]) -> list[tuple[str, str]]:
    return [(f"bin-images/{i}.jpg", f"images/{i}.jpg") for i in ids] + \
           [(f"metadata/{i}.json", f"metadata/{i}.json") for i in ids]


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------- the four methods
def starter(url: str, ids: list[str], out: Path) -> None:
    s3 = client(url)
    (out / "images").mkdir(parents=True)
    (out / "metadata").mkdir(parents=True)
    for key, rel in keys_for(ids):
        s3.download_file(BUCKET, key, str(out / rel))


def aws_sync(url: str, ids: list[str], out: Path, aws: list[str]) -> None:
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}
    subprocess.run([*aws, "s3", "sync", f"s3://{BUCKET}/", str(out), "--endpoint-url", url,
                    "--no-sign-request", "--only-show-errors"], check=True, env=env)


def pool(url: str, ids: list[str], out: Path, workers: int = 32) -> None:
    s3 = client(url, workers)
    (out / "images").mkdir(parents=True)
    (out / "metadata").mkdir(parents=True)

    def get(job: tuple[str, str]) -> None:
        key, rel = job
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        with open(out / rel, "wb") as f:
            f.write(body)

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(get, keys_for(ids)))


def bincli_step(url: str, ids_file: Path, work: Path, workers: int = 32) -> dict:
    from bincli.config import DownloadConfig
    from bincli.data.download import run_download

    cfg = DownloadConfig(endpoint_url=url, ids_file=ids_file, workers=workers)
    return run_download(cfg, work, progress=False)


def bincli_cli(url: str, ids_file: Path, work: Path) -> float:
    """Wall seconds of the CLI, process start included."""
    t = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("bincli")), "-q", "download", "-w", str(work),
                    "--endpoint-url", url, "--ids-file", str(ids_file)], check=True,
                   stdout=subprocess.DEVNULL, cwd=work.parent)
    return time.perf_counter() - t


# ---------------------------------------------------------------- main
def serve_with_latency(data: Path, delay: float) -> None:
    """A stand-in for a far-away bucket: the sample's objects from memory, after `delay` seconds."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    objects = {f"bin-images/{p.name}": p.read_bytes() for p in (data / "images").glob("*.jpg")}
    objects |= {f"metadata/{p.name}": p.read_bytes() for p in (data / "metadata").glob("*.json")}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3
        disable_nagle_algorithm = True  # else headers and body in two writes meet delayed ACKs: +40 ms

        def do_GET(self):
            body = objects.get(self.path.split("/", 2)[2].split("?")[0])
            time.sleep(delay)
            status = 200 if body is not None else 404
            body = body if body is not None else b"<Error><Code>NoSuchKey</Code></Error>"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def latency_section(data: Path, ids: list[str], ids_file: Path, tmp: Path, latencies: list[float]) -> None:
    print("\nlatency-bound (a plain HTTP server that waits before each answer; 32 workers):")
    print(f"{'latency':>8}{'ideal obj/s':>13}{'pool obj/s':>12}{'bincli obj/s':>14}{'bincli client CPU':>19}")
    for ms in latencies:
        proc = subprocess.Popen([sys.executable, __file__, "--serve-latency", str(data), str(ms / 1000)],
                                stdout=subprocess.PIPE, text=True)
        try:
            url = proc.stdout.readline().strip()
            rates = []
            for run in (lambda out, url=url: pool(url, ids, out),
                        lambda out, url=url: bincli_step(url, ids_file, out)):
                out = tmp / "latency"
                c0, t0 = cpu(), time.perf_counter()
                run(out)
                dt = time.perf_counter() - t0
                rates.append((2 * len(ids) / dt, (cpu() - c0) / dt))
                shutil.rmtree(out, ignore_errors=True)
        finally:
            proc.kill()
            proc.wait()
        print(f"{ms:>6.0f}ms{32000 / ms:>13.0f}{rates[0][0]:>12.0f}{rates[1][0]:>14.0f}"
              f"{rates[1][1]:>13.2f} cores")


def find_aws() -> list[str] | None:
    venv_aws = Path(sys.executable).with_name("aws")
    if venv_aws.is_file():
        return [str(venv_aws)]
    return [shutil.which("aws")] if shutil.which("aws") else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "abid-sample")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--starter-ids", type=int, default=400, help="ids for (a), the slow sequential loop")
    ap.add_argument("--noop-files", type=int, default=3000, help="files for the no-op rerun figure")
    ap.add_argument("--latency-ms", default="30,100", help="latencies for the last section ('' = skip)")
    ap.add_argument("--serve-latency", nargs=2, metavar=("DATA", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_latency:
        serve_with_latency(Path(args.serve_latency[0]), float(args.serve_latency[1]))
        return 0
    if not (args.data / "images").is_dir():
        print(f"no ABID sample at {args.data}", file=sys.stderr)
        return 1
    aws = find_aws()
    tmp = Path(tempfile.mkdtemp(prefix="bincli-bench-"))
    procs = []
    try:
        proc, url = start_mirror(args.data, tmp / "url")
        procs.append(proc)
        ids = sorted(p.stem for p in (args.data / "images").glob("*.jpg"))
        ids_file = tmp / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        n_bytes = dir_bytes(args.data / "images") + sum(
            (args.data / "metadata" / f"{i}.json").stat().st_size for i in ids)
        starter_ids = ids[: args.starter_ids]
        print(f"mirror {url}: {len(ids)} ids = {2 * len(ids)} objects (image + metadata), {n_bytes / 1e6:.1f} MB; "
              f"{os.cpu_count()} CPU cores shared by the server and the client")
        print(f"aws: {' '.join(aws) if aws else 'not found (pip install -e .[bench]); (b) skipped'}")

        methods = {
            "a starter": lambda out: starter(url, starter_ids, out),
            "c pool": lambda out: pool(url, ids, out),
            "d bincli": lambda out: bincli_step(url, ids_file, out),
        }
        if aws:
            methods["b aws sync"] = lambda out: aws_sync(url, ids, out, aws)
        n_ids = {name: (len(starter_ids) if name == "a starter" else len(ids)) for name in methods}
        secs: dict[str, list[float]] = {name: [] for name in [*methods, "d bincli CLI"]}
        cpus: dict[str, list[float]] = {name: [] for name in methods}
        for r in range(args.rounds):
            order = list(methods)
            order = order[r % len(order):] + order[: r % len(order)]  # rotate: spread the noise
            for name in order:
                out = tmp / f"r{r}-{name.split()[0]}"
                c0, t0 = cpu(), time.perf_counter()
                methods[name](out)
                secs[name].append(time.perf_counter() - t0)
                cpus[name].append(cpu() - c0)
                shutil.rmtree(out, ignore_errors=True)
            secs["d bincli CLI"].append(bincli_cli(url, ids_file, tmp / f"r{r}-cli"))
            shutil.rmtree(tmp / f"r{r}-cli", ignore_errors=True)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in secs.items()))

        mb_per_id = n_bytes / len(ids) / 1e6
        print(f"\nmedians of {args.rounds} rounds (images/s = ids with image + metadata per second)")
        print(f"{'method':<16}{'ids':>6}{'seconds':>10}{'images/s':>10}{'MB/s':>8}{'client CPU ms/object':>22}")
        rate = {}
        for name, values in secs.items():
            n = n_ids.get(name, len(ids))
            med = statistics.median(values)
            rate[name] = n / med
            cpu_ms = f"{1000 * statistics.median(cpus[name]) / (2 * n):.2f}" if name in cpus else "-"
            print(f"{name:<16}{n:>6}{med:>10.2f}{rate[name]:>10.0f}{rate[name] * mb_per_id:>8.2f}{cpu_ms:>22}")
        d = rate["d bincli"]
        print("\nratios (bincli step / other):")
        print(f"  vs (a) starter : {d / rate['a starter']:.2f}x   (target >= 3)")
        if aws:
            print(f"  vs (b) aws sync: {d / rate['b aws sync']:.2f}x   (target >= 1.2)")
        print(f"  vs (c) pool    : {d / rate['c pool']:.2f}x   (target >= 0.9, while verifying every file)")
        print(f"  CLI end to end vs (c) pool: {rate['d bincli CLI'] / rate['c pool']:.2f}x (includes process start)")

        # ------------------------------------------------ no-op rerun, 3,000 files
        big = tmp / "big-sample"
        n_big = max(args.noop_files // 2, 1)
        (big / "images").mkdir(parents=True)
        (big / "metadata").mkdir(parents=True)
        big_ids = []
        for k in range(n_big):  # the sample's files under new ids (symlinks: no bytes copied)
            src = ids[k % len(ids)]
            new = f"{300000 + k}"
            (big / "images" / f"{new}.jpg").symlink_to((args.data / "images" / f"{src}.jpg").resolve())
            (big / "metadata" / f"{new}.json").symlink_to((args.data / "metadata" / f"{src}.json").resolve())
            big_ids.append(new)
        proc.kill()
        proc.wait()
        proc2, url2 = start_mirror(big, tmp / "url2")
        procs.append(proc2)
        big_file = tmp / "big-ids.txt"
        big_file.write_text("\n".join(big_ids) + "\n")
        work = tmp / "noop"
        first = bincli_cli(url2, big_file, work)
        reruns = [bincli_cli(url2, big_file, work) for _ in range(args.rounds)]
        line = (f"\nno-op rerun, {2 * n_big} files present: bincli download {statistics.median(reruns):.2f}s "
                f"(CLI, process start included; first download {first:.1f}s)")
        if aws:
            sync_dir = tmp / "noop-sync"
            aws_sync(url2, big_ids, sync_dir, aws)
            sync_runs = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                aws_sync(url2, big_ids, sync_dir, aws)
                sync_runs.append(time.perf_counter() - t)
            line += f", aws s3 sync {statistics.median(sync_runs):.2f}s"
        print(line + "   (target: bincli < 1 s)")
        proc2.kill()
        if args.latency_ms:
            latency_section(args.data, ids, ids_file, tmp, [float(x) for x in args.latency_ms.split(",")])
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
