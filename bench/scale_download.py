"""Data steps that talk to S3, at scale (issue 27): `download` of --small vs --large photos, a
per-class selection over --keys metadata keys, and `upload` of --large files; each step run as
the CLI in a child process, wall time and the child's peak RSS (ru_maxrss from wait4).

    .venv/bin/python bench/scale_download.py [--small 3000] [--large 30000] [--keys 100000]
                                             [--sections download,select,upload]

Workload (a temp folder, never the project): the sample's photos hard-linked under new ids
(400000, 400001, ...) with their metadata, served by moto as ../shared/tools/abid_mirror.py
serves them (filled faster: see serve()).
--large ids have a photo and metadata; up to --keys more ids have metadata only, all of them
bins of more than 5 items, so a selection of class 0 (`--classes 0-0`) must read every key's metadata to know it
has found every empty bin, and never picks an id without a photo.
  download  `bincli download --ids-file` of the first --small ids, then of all --large ids (a
            fresh workdir each), then a no-op rerun of the large one. Targets: peak RSS under
            300 MB and flat, large time at most 10.5x small (per photo within 5%), rerun < 3 s.
  select    `bincli download --per-class N --classes 0` with N above the empty bins there
            are (it reads every metadata key), then again with another seed and N: the second
            must read no metadata (the label index); the report's request counts are printed.
  upload    `bincli upload` of a split of --large photos to a bucket on the same moto server,
            then a rerun (must send nothing), against `aws s3 sync` of the same files laid out the
            same way (hard links), first and rerun; without the aws CLI, a plain s3transfer loop.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
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
FIRST_ID = 400000


def run_child(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """Like run(), but the peak RSS of this child alone: through a wrapper that reports it."""
    wrapper = ("import json,os,resource,subprocess,sys,time;t=time.perf_counter();"
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


def build(sample: Path, dest: Path, n_photos: int, n_keys: int) -> list[str]:
    """dest/images + dest/metadata: n_photos ids with both, then metadata-only ids up to n_keys
    (bins of more than 5 items). Hard links: no bytes copied."""
    ids = sorted(p.stem for p in (sample / "images").glob("*.jpg"))
    many = [i for i in ids if json.loads((sample / "metadata" / f"{i}.json").read_text())["EXPECTED_QUANTITY"] > 5]
    (dest / "images").mkdir(parents=True)
    (dest / "metadata").mkdir()
    for k in range(max(n_photos, n_keys)):
        new = str(FIRST_ID + k)
        if k < n_photos:
            src = ids[k % len(ids)]
            os.link(sample / "images" / f"{src}.jpg", dest / "images" / f"{new}.jpg")
        else:
            src = many[k % len(many)]
        os.link(sample / "metadata" / f"{src}.json", dest / "metadata" / f"{new}.json")
    return [str(FIRST_ID + k) for k in range(n_photos)]


def serve(data: Path, url_file: Path) -> None:
    """The bucket stand-in of ../shared/tools/abid_mirror.py (moto's S3 server, public bucket, the
    real keys), filled through moto's backend in this process rather than one PUT per object:
    130,000 PUTs to moto on 2 shared cores take most of an hour; this takes a minute."""
    import logging

    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(SHARED / "tools"))
    from abid_mirror import BUCKET

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="mirror",
                      aws_secret_access_key="mirror")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
                       "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for m in sorted((data / "metadata").iterdir()):
        backend.put_object(BUCKET, f"metadata/{m.name}", m.read_bytes())
    for img in sorted((data / "images").iterdir()):
        backend.put_object(BUCKET, f"bin-images/{img.name}", img.read_bytes())
    url_file.write_text(url + "\n")
    while True:
        time.sleep(3600)


def start_mirror(data: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    url_file = tmp / "mirror-url"
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(data), str(url_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        if url_file.is_file() and url_file.read_text().strip():
            return proc, url_file.read_text().strip()
        if proc.poll() is not None:
            raise SystemExit(f"mirror exited: {proc.stderr.read().decode()}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("mirror did not start")


def download(url: str, ids: list[str], n: int, tmp: Path, tag: str, rerun: bool = False) -> dict:
    ids_file = tmp / f"ids-{tag}.txt"
    ids_file.write_text("\n".join(ids[:n]) + "\n")
    work = tmp / f"work-{tag}"
    s, rss, out = run_child([BINCLI, "-q", "download", "-w", str(work), "--json", "--s3-endpoint-url", url,
                             "--ids-file", str(ids_file)], tmp)
    got = {"s": s, "rss": rss, "result": json.loads(out)}
    if rerun:
        got["rerun"] = run_child([BINCLI, "-q", "download", "-w", str(work), "--json", "--s3-endpoint-url", url,
                                  "--ids-file", str(ids_file)], tmp)
    return got


def section_download(url: str, ids: list[str], args, tmp: Path) -> None:
    print(f"\ndownload --ids-file (image + metadata per id; {os.cpu_count()} cores shared with the mirror)")
    small = download(url, ids, args.small, tmp, "small")
    large = download(url, ids, args.large, tmp, "large", rerun=True)
    print(f"{'ids':>8}{'seconds':>10}{'ids/s':>9}{'peak RSS MB':>13}{'fetched':>9}{'failed':>8}")
    for n, r in ((args.small, small), (args.large, large)):
        print(f"{n:>8}{r['s']:>10.1f}{n / r['s']:>9.0f}{r['rss']:>13.0f}{r['result']['fetched']:>9}"
              f"{r['result']['failed']:>8}")
    ratio = large["s"] / small["s"]
    print(f"time ratio {ratio:.2f}x for {args.large / args.small:.0f}x the ids (target <= 10.5x); "
          f"no-op rerun of {args.large}: {large['rerun'][0]:.2f} s, RSS {large['rerun'][1]:.0f} MB (target < 3 s)")


def section_select(url: str, ids: list[str], args, tmp: Path) -> None:
    empty = sum(1 for i in ids[: args.large]
                if json.loads((tmp / "bucket" / "metadata" / f"{i}.json").read_text())["EXPECTED_QUANTITY"] == 0)
    keys = max(args.large, args.keys)
    print(f"\nper-class selection over {keys} metadata keys, class 0 ({empty} empty bins there)")
    work = tmp / "work-select"
    for label, per_class, seed in (("cold", empty + 10, 0), ("other seed", empty // 2, 1)):
        s, rss, out = run_child([BINCLI, "-q", "download", "-w", str(work), "--json", "--s3-endpoint-url", url,
                                 "--per-class", str(per_class), "--classes", "0-0", "--seed", str(seed)], tmp)
        r = json.loads(out)
        print(f"  {label:<11} per_class {per_class:>5}: {s:7.1f} s, peak RSS {rss:5.0f} MB, images {r['images']}, "
              f"requests {r['requests']}")


def section_upload(url: str, ids: list[str], args, tmp: Path) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    from bincli.state import State

    n = args.large
    data = tmp / "bucket"
    work = tmp / "work-upload"
    manifests = work / "manifests"
    manifests.mkdir(parents=True)
    cut = {"train": ids[: int(n * 0.8)], "valid": ids[int(n * 0.8): int(n * 0.9)], "test": ids[int(n * 0.9): n]}
    for name, members in cut.items():
        (manifests / f"{name}.csv").write_text("id,path,label\n" + "".join(f"{i},images/{i}.jpg,1\n" for i in members))
    State(work).record("split", {"data_root": str(data), "manifests_dir": str(manifests),
                                 "manifests": {k: str(manifests / f"{k}.csv") for k in cut}}, {})
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bench",
                      aws_secret_access_key="bench")
    s3.create_bucket(Bucket="bench-upload")
    s3.create_bucket(Bucket="bench-plain")
    workers = 16

    aws = shutil.which("aws")
    tree = tmp / "sync-tree"  # what bincli sends, as a folder for `aws s3 sync` (hard links)
    for name, members in cut.items():
        (tree / name / "images").mkdir(parents=True)
        shutil.copy(manifests / f"{name}.csv", tree / name / f"{name}.csv")
        for i in members:
            os.link(data / "images" / f"{i}.jpg", tree / name / "images" / f"{i}.jpg")
    t0 = time.perf_counter()
    if aws:
        subprocess.run([aws, "s3", "sync", str(tree), "s3://bench-plain/abid", "--endpoint-url", url,
                        "--only-show-errors"], check=True, env=env)
    else:
        with create_transfer_manager(s3, TransferConfig(max_concurrency=workers)) as mgr:
            for path in tree.rglob("*"):
                if path.is_file():
                    mgr.upload(str(path), "bench-plain", f"abid/{path.relative_to(tree).as_posix()}")
    plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    if aws:
        subprocess.run([aws, "s3", "sync", str(tree), "s3://bench-plain/abid", "--endpoint-url", url,
                        "--only-show-errors"], check=True, env=env)
    plain_rerun = time.perf_counter() - t0

    cmd = [BINCLI, "-q", "upload", "-w", str(work), "--json", "--s3-uri", "s3://bench-upload/abid",
           "--set", f"upload.endpoint_url={url}", "--set", f"upload.workers={workers}"]
    first = run_cmd_env(cmd, tmp, env)
    again = run_cmd_env(cmd, tmp, env)
    what = "aws s3 sync (its default 10 requests)" if aws else "s3transfer loop (no aws CLI here)"
    print(f"\nupload of {n} photos + 3 manifests to moto (bincli: {workers} threads)")
    print(f"  {what:<22}: {plain:7.1f} s  {n / plain:6.0f} files/s" + (f"; rerun {plain_rerun:.1f} s" if aws else ""))
    print(f"  bincli upload         : {first[0]:7.1f} s  {n / first[0]:6.0f} files/s, peak RSS {first[1]:.0f} MB, "
          f"uploaded {first[2]['uploaded']}")
    print(f"  bincli upload (rerun) : {again[0]:7.1f} s  uploaded {again[2]['uploaded']}, "
          f"skipped {again[2]['skipped']}, peak RSS {again[1]:.0f} MB")


def run_cmd_env(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, dict]:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        s, rss, out = run_child(cmd, cwd)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return s, rss, json.loads(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "abid-sample")
    ap.add_argument("--small", type=int, default=3000)
    ap.add_argument("--large", type=int, default=30000)
    ap.add_argument("--keys", type=int, default=100000, help="metadata keys in the bucket (select)")
    ap.add_argument("--sections", default="download,select,upload")
    ap.add_argument("--serve", nargs=2, type=Path, metavar=("DATA", "URL_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    if not (args.data / "images").is_dir():
        print(f"skipped: no ABID sample at {args.data}")
        return 0
    sections = args.sections.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bincli-scale-"))
    proc = None
    try:
        t0 = time.perf_counter()
        keys = args.keys if "select" in sections else args.large
        ids = build(args.data, tmp / "bucket", args.large, keys)
        proc, url = start_mirror(tmp / "bucket", tmp)
        print(f"mirror {url}: {args.large} photos, {max(args.large, keys)} metadata keys, "
              f"seeded in {time.perf_counter() - t0:.0f} s; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")
        if "download" in sections:
            section_download(url, ids, args, tmp)
        if "select" in sections:
            section_select(url, ids, args, tmp)
        if "upload" in sections:
            section_upload(url, ids, args, tmp)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
