"""Hostile data and a hostile disk for `download` and `split`: decompression bombs, objects far
bigger than any ABID file, a full or read-only workdir, two splits interleaved. Each bad file is
one reported id; each disk failure is one line naming the path, with nothing half-written."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import threading
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from PIL import Image
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import DownloadConfig, SplitConfig
from bincli.data import abid
from bincli.data.disk import DiskError, disk_error, writing
from bincli.data.download import DownloadFailed, run_download
from bincli.data.split import publish, run_split, stage_split
from bincli.state import State
from helpers import make_abid_folder, write_metadata

runner = CliRunner()
BINCLI = Path(sys.executable).with_name("bincli")
SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------- hostile files, made small
def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG whose frame header claims width x height: what Pillow sees of a
    decompression bomb, without the gigabytes (open() reads the header only)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (40, 40, 40)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):  # walk the markers to the start-of-frame
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def _rows(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _listed(outputs: dict) -> dict[str, list[str]]:
    return {s: [r["id"] for r in _rows(outputs["manifests"][s])] for s in SPLITS}


# ---------------------------------------------------------------- split: bombs and junk are one bad id each
def test_split_reports_decompression_bombs_and_goes_on(tmp_path):
    data = tmp_path / "data"
    make_abid_folder(data, {1: 8, 2: 8})
    images = data / "images"
    (images / "00001.jpg").write_bytes(jpeg_claiming(20000, 20000))  # past Pillow's own bomb limit: it raises
    (images / "00002.jpg").write_bytes(png_claiming(20000, 20000))  # a PNG bomb named .jpg
    (images / "00003.jpg").write_bytes(jpeg_claiming(6000, 6000))  # under Pillow's limit, over bincli's cap
    write_metadata(data / "metadata" / "00004.json", 1)
    meta = json.loads((data / "metadata" / "00004.json").read_text())
    meta["padding"] = "x" * abid.MAX_METADATA_BYTES  # valid JSON, far bigger than any ABID record
    (data / "metadata" / "00004.json").write_text(json.dumps(meta))

    out = run_split(SplitConfig(input=data, classes="1-2"), tmp_path / "w")

    reasons = {r["id"]: r["reason"] for r in out["rejected_ids"]}
    assert set(reasons) == {"00001", "00002", "00003", "00004"}
    assert reasons["00001"].startswith("image too large") and reasons["00002"].startswith("image too large")
    assert reasons["00003"] == f"image too large (6000x6000 pixels, over {abid.MAX_IMAGE_PIXELS:,} pixels; " \
                               "ABID photos are under 1 MP)"
    assert reasons["00004"].startswith("metadata too large")
    listed = {i for ids in _listed(out).values() for i in ids}
    assert len(listed) == 12 and not listed & set(reasons)
    report = json.loads(Path(out["report"]).read_text())
    assert {r["id"]: r["reason"] for r in report["rejected"]} == reasons


# ---------------------------------------------------------------- download: bombs and oversized objects
@pytest.fixture
def hostile_bucket(moto_url, abid_sample):
    """A public bucket on the moto server with a few real ABID files and three hostile ones."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"abid-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"],
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}))
    # The sample's originals (not the 224x224 copies): bigger than the file-size limit used below.
    good = sorted(p.stem for p in (abid_sample / "images").glob("*.jpg") if p.stat().st_size > 30_000)[:6]
    objects = {}
    for id_ in good:
        objects[abid.image_key(id_)] = (abid_sample / "images" / f"{id_}.jpg").read_bytes()
        objects[abid.metadata_key(id_)] = (abid_sample / "metadata" / f"{id_}.json").read_bytes()
    meta = (abid_sample / "metadata" / f"{good[0]}.json").read_bytes()
    bomb, big, big_meta = "90001", "90002", "90003"
    objects[abid.metadata_key(bomb)] = meta
    objects[abid.image_key(bomb)] = jpeg_claiming(20000, 20000)
    objects[abid.metadata_key(big)] = meta
    objects[abid.image_key(big)] = jpeg_claiming(640, 480)[:-2] + b"\0" * (3 << 20) + b"\xff\xd9"  # 3 MB
    objects[abid.metadata_key(big_meta)] = b"{" + b" " * (3 << 20) + b'"EXPECTED_QUANTITY": 1}'
    objects[abid.image_key(big_meta)] = objects[abid.image_key(good[0])]
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    return SimpleNamespace(url=moto_url, bucket=bucket, good=good, bomb=bomb, big=big, big_meta=big_meta,
                           objects=objects)


def test_download_bombs_and_oversized_objects_fail_alone_unread(hostile_bucket, tmp_path):
    b = hostile_bucket
    ids = [*b.good[:3], b.bomb, b.big, b.big_meta, *b.good[3:]]
    cfg = DownloadConfig(endpoint_url=b.url, bucket=b.bucket, ids=ids, max_object_mb=1)
    out = run_download(cfg, tmp_path / "w", progress=False)

    assert (out["images"], out["failed"]) == (len(b.good), 3)
    failures = {f["id"]: f for f in out["failures"]}
    assert (failures[b.bomb]["file"], failures[b.bomb]["kind"]) == ("image", "too_large")
    assert failures[b.bomb]["reason"].startswith("image too large")
    assert (failures[b.big]["file"], failures[b.big]["kind"]) == ("image", "too_large")
    assert failures[b.big]["reason"] == "object is 3.0 MB, over the download.max_object_mb cap of 1 MB " \
                                        "(ABID files are under 1 MB)"
    assert (failures[b.big_meta]["file"], failures[b.big_meta]["kind"]) == ("metadata", "too_large")
    # The two oversized objects were refused on their Content-Length: not one byte of them was read.
    read = [abid.image_key(i) for i in b.good] + [abid.metadata_key(i) for i in (*b.good, b.bomb, b.big)] + \
        [abid.image_key(b.bomb)]
    assert out["bytes"] == sum(len(b.objects[k]) for k in read)
    data = Path(out["data_dir"])
    for bad in (b.bomb, b.big, b.big_meta):  # no image, no metadata left without its image, no temp file
        assert not (data / "images" / f"{bad}.jpg").exists() and not (data / "metadata" / f"{bad}.json").exists()
    assert not list(data.rglob("*.part"))
    for i in b.good:
        assert (data / "images" / f"{i}.jpg").read_bytes() == b.objects[abid.image_key(i)]
    report = json.loads(Path(out["report"]).read_text())
    assert {f["id"] for f in report["failures"]} == {b.bomb, b.big, b.big_meta}
    assert (data / "download-ids.txt").read_text().split() == b.good


class _Endless(BaseHTTPRequestHandler):
    """GET /<bucket>/<key>: metadata as usual; the image as a body with no Content-Length that
    goes on (HTTP/1.0: it ends when the connection closes), as a broken or hostile server might."""

    metadata = b""
    image_bytes = 64 << 20
    sent: ClassVar[list[int]] = []

    def do_GET(self):
        if self.path.endswith(".json"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.metadata)))
            self.end_headers()
            self.wfile.write(self.metadata)
            return
        self.send_response(200)
        self.end_headers()
        sent = 0
        try:
            while sent < self.image_bytes:
                self.wfile.write(b"\0" * 65536)
                sent += 65536
        except OSError:  # the client hung up: what we want
            pass
        self.sent.append(sent)

    def log_message(self, *args):
        pass


def test_an_object_without_length_is_cut_off_at_the_cap(tmp_path, abid_sample):
    _Endless.metadata = next((abid_sample / "metadata").glob("*.json")).read_bytes()
    _Endless.sent = []
    server = HTTPServer(("127.0.0.1", 0), _Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = DownloadConfig(endpoint_url=f"http://127.0.0.1:{server.server_address[1]}", ids=["00042", "00043"],
                             max_object_mb=1, retries=2)
        with pytest.raises(DownloadFailed, match="nothing usable") as info:
            run_download(cfg, tmp_path / "w", progress=False)
        result = info.value.result
    finally:
        server.shutdown()
        server.server_close()
    assert result["failed"] == 2
    for failure in result["failures"]:
        assert (failure["file"], failure["kind"]) == ("image", "too_large")
        assert "streamed past the download.max_object_mb cap of 1 MB" in failure["reason"]
    assert result["requests"]["image"] == 2  # a too-large object is not retried
    # Read no further than the cap (+ one chunk each): not the 64 MB the server would send.
    assert result["bytes"] <= 2 * (len(_Endless.metadata) + (1 << 20) + (1 << 16))
    assert not list((tmp_path / "w" / "data").rglob("*.part"))
    assert not list((tmp_path / "w" / "data" / "metadata").iterdir())  # no metadata without its image
    assert len(_Endless.sent) == 2 and max(_Endless.sent) < _Endless.image_bytes  # the server was cut off


# ---------------------------------------------------------------- a full or read-only disk
def test_disk_error_is_one_line_naming_the_path_and_cause(tmp_path):
    exc = disk_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), tmp_path / "splits")
    assert str(exc).startswith(f"{tmp_path / 'splits'}: cannot write (No space left on device) (")
    assert exc.exit_code == 1 and "\n" not in str(exc)
    named = disk_error(OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x.part")), tmp_path / "x")
    assert named.message == f"{tmp_path / 'x.part'}: cannot write (Read-only file system)"
    exact = disk_error(OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "x.part")), tmp_path / "x",
                       exact=True)
    assert exact.message == f"{tmp_path / 'x'}: cannot write (Read-only file system)"
    # A real ENOSPC from the kernel: /dev/full takes no bytes.
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    (tmp_path / "full.csv").symlink_to("/dev/full")
    with pytest.raises(DiskError, match=r"full\.csv: cannot write \(No space left on device\)"), \
            writing(tmp_path / "full.csv"), open(tmp_path / "full.csv", "w") as f:
        f.write("id,path,count\n")


def _run_cli(args: list[str], cwd: Path, max_file_bytes: int | None = None) -> subprocess.CompletedProcess:
    """bincli in a child process; with max_file_bytes, every file it writes is capped (RLIMIT_FSIZE):
    a write past it fails with EFBIG, an honest OSError of the same family as ENOSPC."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BINCLI_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([str(BINCLI), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
                          preexec_fn=limit if max_file_bytes else None)


def _assert_one_error_line(stderr: str, *parts: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    for part in parts:
        assert part in errors[0], stderr
    return errors[0]


def test_download_stops_with_one_line_when_a_file_cannot_be_written(hostile_bucket, tmp_path):
    b = hostile_bucket
    work = tmp_path / "w"
    proc = _run_cli(["download", "-w", str(work), "--endpoint-url", b.url, "--bucket", b.bucket,
                     "--ids", ",".join(b.good), "--workers", "2"], tmp_path, max_file_bytes=20_000)
    assert proc.returncode == 1, proc.stderr
    line = _assert_one_error_line(proc.stderr, "cannot write (File too large)", str(work / "data" / "images"))
    assert line.split(": cannot write")[0].endswith(".jpg")  # the file the user knows, not a temp name
    assert not list((work / "data").rglob("*.part")) and not list((work / "data").rglob(".*.tmp"))
    assert not list((work / "data" / "images").glob("*.jpg"))
    assert State(work).outputs("download") is None


@contextlib.contextmanager
def _tmpfs(path: Path, size_kb: int, read_only: bool = False, prepare=None):
    """A small tmpfs at `path` (Linux, root or CAP_SYS_ADMIN); the test is skipped without one."""
    path.mkdir(parents=True, exist_ok=True)
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs Linux and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        if prepare is not None:
            prepare(path)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def _read_only(path: Path, prepare=None):
    """`path` made read-only: by its mode where that binds (not root), else by a read-only tmpfs."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        if prepare is not None:
            prepare(path)
        folders = [path, *(p for p in path.rglob("*") if p.is_dir())]
        for folder in folders:
            folder.chmod(0o555)
        try:
            yield path
        finally:
            for folder in folders:
                folder.chmod(0o755)
        return
    with _tmpfs(path, 1024, read_only=True, prepare=prepare):  # root ignores modes
        yield path


def _data_folders(root: Path) -> None:
    (root / "images").mkdir()
    (root / "metadata").mkdir()


def test_download_on_a_full_disk_names_the_file_and_keeps_the_index_sound(hostile_bucket, tmp_path, in_tmp):
    b = hostile_bucket
    work = tmp_path / "w"
    with _tmpfs(work / "data", 160):  # room for the first few files only
        result = runner.invoke(app, ["download", "-w", str(work), "--endpoint-url", b.url, "--bucket", b.bucket,
                                     "--ids", ",".join(b.good), "--workers", "1"])
        assert result.exit_code == 1, result.output
        _assert_one_error_line(result.stderr, "cannot write (No space left on device)", str(work / "data"))
        data = work / "data"
        assert not list(data.rglob("*.part")) and not list(data.rglob(".*.tmp"))
        for image in (data / "images").glob("*.jpg"):  # what is there is whole
            assert image.read_bytes() == b.objects[abid.image_key(image.stem)]
        index = data / ".download-index.json"
        if index.exists():
            assert set(json.loads(index.read_text())["files"]) <= {
                f"{p.parent.name}/{p.name}" for p in data.rglob("*") if p.is_file()}
    assert State(work).outputs("download") is None


def test_download_into_a_read_only_folder_is_one_line(hostile_bucket, tmp_path, in_tmp):
    """The first id is on disk already (checked, so the index has news to save), the second must be
    fetched: its write fails, and so does the index save on the way out. The line tells the first."""
    b = hostile_bucket
    work = tmp_path / "w"

    def one_present(root: Path) -> None:
        _data_folders(root)
        (root / "images" / f"{b.good[0]}.jpg").write_bytes(b.objects[abid.image_key(b.good[0])])
        (root / "metadata" / f"{b.good[0]}.json").write_bytes(b.objects[abid.metadata_key(b.good[0])])

    with _read_only(work / "data", prepare=one_present):
        result = runner.invoke(app, ["download", "-w", str(work), "--endpoint-url", b.url, "--bucket", b.bucket,
                                     "--ids", f"{b.good[0]},{b.good[1]}", "--workers", "1"])
        assert result.exit_code == 1, result.output
        line = _assert_one_error_line(result.stderr, str(work / "data" / "metadata" / f"{b.good[1]}.json"))
        assert "(Read-only file system)" in line or "(Permission denied)" in line
        assert not list((work / "data").rglob("*.part")) and not (work / "data" / ".download-index.json").exists()


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    make_abid_folder(root, {1: 20, 2: 20, 3: 20}, size=48)
    return root


def _assert_previous_split_intact(work: Path, before: dict) -> None:
    now = State(work).outputs("split")
    assert now == before
    assert {s: len(ids) for s, ids in _listed(now).items()} == {s: now[s] for s in SPLITS}
    assert not list((work / "splits").glob(".staging-*"))


def test_split_where_a_file_blocks_the_folder_is_one_line(data, tmp_path, in_tmp):
    work = tmp_path / "w"
    work.mkdir()
    (work / "splits").write_text("not a folder")
    result = runner.invoke(app, ["split", "-w", str(work), "--input", str(data)])
    assert result.exit_code == 1, result.output
    _assert_one_error_line(result.stderr, f"{work / 'splits'}: cannot write (a file is in the way of a folder)")
    assert State(work).outputs("split") is None


def test_split_that_cannot_write_leaves_the_previous_split_as_it_was(data, tmp_path):
    work = tmp_path / "w"
    run_split(SplitConfig(input=data, seed=1), work)
    before = State(work).outputs("split")
    proc = _run_cli(["split", "-w", str(work), "--input", str(data), "--seed", "2"], tmp_path,
                    max_file_bytes=600)  # train.csv alone is about 1.2 kB
    assert proc.returncode == 1, proc.stderr
    _assert_one_error_line(proc.stderr, f"{work / 'splits'}: cannot write (File too large)")
    _assert_previous_split_intact(work, before)
    assert _split_folders(work) == [Path(before["manifests_dir"]).name]
    # the published names still show the recorded split
    assert (work / "splits" / "train.csv").read_bytes() == Path(before["manifests"]["train"]).read_bytes()


def test_split_on_a_full_disk_leaves_the_previous_split_as_it_was(data, tmp_path, in_tmp):
    work = tmp_path / "w"
    with _tmpfs(work / "splits", 160):
        run_split(SplitConfig(input=data, seed=1), work)
        before = State(work).outputs("split")
        # The folder layout copies every image (no hard links across filesystems): the disk fills up.
        result = runner.invoke(app, ["split", "-w", str(work), "--input", str(data), "--seed", "2",
                                     "--layout", "folders"])
        assert result.exit_code == 1, result.output
        _assert_one_error_line(result.stderr, f"{work / 'splits'}: cannot write (No space left on device)")
        _assert_previous_split_intact(work, before)


def test_split_into_a_read_only_folder_is_one_line(data, tmp_path, in_tmp):
    work = tmp_path / "w"
    with _read_only(work / "splits"):
        result = runner.invoke(app, ["split", "-w", str(work), "--input", str(data)])
        assert result.exit_code == 1, result.output
        line = _assert_one_error_line(result.stderr, f"{work / 'splits'}: cannot write (")
        assert "(Read-only file system)" in line or "(Permission denied)" in line
    assert State(work).outputs("split") is None


# ---------------------------------------------------------------- the split is one unit
def test_interleaved_splits_leave_state_and_manifests_from_the_same_one(data, tmp_path):
    work = tmp_path / "w"
    a_cfg, b_cfg = SplitConfig(input=data, seed=1), SplitConfig(input=data, seed=2, ratios=(0.5, 0.25, 0.25))
    a = stage_split(a_cfg, State(work))
    b = stage_split(b_cfg, State(work))
    assert State(work).outputs("split") is None and a.target != b.target
    assert not a.target.exists() and not b.target.exists()  # staged, not visible
    publish(State(work), b, b_cfg.model_dump(mode="json"))
    publish(State(work), a, a_cfg.model_dump(mode="json"))  # finishes last: it wins, whole

    recorded = State(work).outputs("split")
    assert recorded == a.outputs and State(work).step("split")["config"]["seed"] == 1
    listed = _listed(recorded)
    assert {s: len(ids) for s, ids in listed.items()} == {s: recorded[s] for s in SPLITS} == \
           {"train": 48, "valid": 6, "test": 6}
    alone = run_split(a_cfg, tmp_path / "alone")
    assert _listed(alone) == listed  # the same bytes a split on its own writes
    assert _split_folders(work) == [a.target.name]  # b's folder superseded
    for name in SPLITS:  # <workdir>/splits/<name>.csv, what CI scripts read, is the recorded split
        assert (work / "splits" / f"{name}.csv").read_bytes() == (a.target / f"{name}.csv").read_bytes()


def _split_folders(work: Path) -> list[str]:
    """The split folders under <workdir>/splits (not the published names beside them)."""
    return sorted(p.name for p in (work / "splits").iterdir() if p.is_dir() and not p.is_symlink())


def test_a_split_killed_before_its_record_changes_nothing(data, tmp_path):
    work = tmp_path / "w"
    first = run_split(SplitConfig(input=data, seed=1), work)
    before = State(work).outputs("split")
    staged = stage_split(SplitConfig(input=data, seed=2), State(work))  # ... and the process dies here
    assert State(work).outputs("split") == before
    assert _listed(before) == {s: [r["id"] for r in _rows(first["manifests"][s])] for s in SPLITS}
    # What a dead process left is removed by the next split; a live one's staging is left alone.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left = staged.folder.rename(staged.folder.with_name(f".staging-{dead}-0000"))
    live = work / "splits" / f".staging-{os.getpid()}-live"
    live.mkdir()
    run_split(SplitConfig(input=data, seed=3), work)
    assert not left.exists() and live.is_dir()
    live.rmdir()


def test_the_same_split_again_keeps_its_folder_and_repairs_it(data, tmp_path):
    work = tmp_path / "w"
    first = run_split(SplitConfig(input=data, layout="folders"), work)
    Path(first["manifests"]["valid"]).unlink()
    shutil.rmtree(Path(first["folders"]) / "train")
    second = run_split(SplitConfig(input=data, layout="folders"), work)
    assert second["manifests_dir"] == first["manifests_dir"]  # later steps' recorded paths stay valid
    assert Path(second["manifests"]["valid"]).is_file() and (Path(second["folders"]) / "train").is_dir()
    assert not [p for p in Path(second["manifests_dir"]).rglob(".*")]
    other = run_split(SplitConfig(input=data, layout="manifest"), work)
    assert other["manifests_dir"] != first["manifests_dir"] and not Path(first["manifests_dir"]).exists()


# ---------------------------------------------------------------- special files, deep JSON, odd names (issue 28)
def _hostile_folder(data: Path) -> None:
    """Good photos and, among them: a FIFO photo, metadata linked to /dev/zero, metadata nested
    200,000 levels deep, a name that is not UTF-8 and a name that is a spreadsheet formula."""
    make_abid_folder(data, {1: 8, 2: 8})
    images, meta = data / "images", data / "metadata"
    (images / "00001.jpg").unlink()
    os.mkfifo(images / "00001.jpg")  # opened, it would block until a writer came
    (meta / "00002.json").unlink()
    (meta / "00002.json").symlink_to("/dev/zero")  # read, it would never end
    (meta / "00003.json").write_bytes(b"[" * 200_000 + b"]" * 200_000)  # 400 KB
    good = (images / "00004.jpg").read_bytes()
    for stem in (b"\xff\xfe", b'=HYPERLINK("http:\\x")'):
        with open(bytes(images) + b"/" + stem + b".jpg", "wb") as f:
            f.write(good)
        with open(bytes(meta) + b"/" + stem + b".json", "w") as f:
            f.write('{"EXPECTED_QUANTITY": 1}')


def _within(seconds: float, fn, *args):
    """fn(*args) in a thread, failing the test (not hanging it) if it has not returned in time."""
    out: dict[str, object] = {}
    thread = threading.Thread(target=lambda: out.setdefault("value", fn(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} still running after {seconds} s"
    return out["value"]


def test_split_lists_special_files_deep_metadata_and_odd_names_and_goes_on(tmp_path):
    data = tmp_path / "data"
    _hostile_folder(data)
    out = _within(120, run_split, SplitConfig(input=data, classes="1-2"), tmp_path / "w")
    reasons = {r["id"]: r["reason"] for r in out["rejected_ids"]}
    assert reasons["images/00001.jpg"].startswith("not a regular file")
    assert reasons["metadata/00002.json"].startswith("not a regular file")
    assert reasons["00003"] == "metadata is nested too deeply to be ABID metadata"
    assert reasons["images/'\\udcff\\udcfe.jpg'"].startswith("not an ABID id")
    assert reasons["""images/'=HYPERLINK("http:\\\\x").jpg'"""].startswith("not an ABID id")
    listed = {i for ids in _listed(out).values() for i in ids}
    assert len(listed) == 13 and all(i.isdigit() for i in listed)  # 16 made, 00001-00003 set aside
    manifests = "".join(Path(p).read_text() for p in out["manifests"].values())
    assert "HYPERLINK" not in manifests
    json.loads(Path(out["report"]).read_text())  # the report is written (and is JSON) whatever the names


def test_inspect_lists_special_files_deep_metadata_and_odd_names_and_goes_on(tmp_path):
    from bincli.config import Config, InspectConfig
    from bincli.steps.data_report import run_inspect

    data = tmp_path / "data"
    _hostile_folder(data)
    out = _within(120, run_inspect, Config(workdir=tmp_path / "w", inspect=InspectConfig(input=data)))
    problems = {p["id"]: p["reason"] for p in out["problems"]}
    assert problems["images/00001.jpg"].startswith("not a regular file")
    assert problems["metadata/00002.json"].startswith("not a regular file")
    assert problems["00003"] == "metadata is nested too deeply to be ABID metadata"
    assert sum(why.startswith("not an ABID id") for why in problems.values()) == 4  # each name's image and json


def test_deep_metadata_is_one_value_error_wherever_it_is_parsed():
    """download, split and inspect parse metadata with abid.parse_metadata: one bad id, no RecursionError."""
    with pytest.raises(ValueError, match="nested too deeply"):
        abid.parse_metadata(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)  # 600 KB
    with pytest.raises(ValueError, match="nested too deeply"):
        abid.read_label(io.BytesIO(b"[" * 200_000 + b"]" * 200_000))


def test_ctrl_c_stops_splits_scan_at_once_not_after_every_queued_photo(tmp_path, monkeypatch):
    """Ctrl-C reaches the main thread while a worker is stuck on a photo (a slow disk, a network
    mount): split stops at once (before, leaving the pool waited for the stuck read to end)."""
    import time

    from bincli.data import split

    data = tmp_path / "data"
    make_abid_folder(data, {1: 8, 2: 8})
    real, checked = split._check_image, []

    first = min(p.name for p in (data / "images").glob("*.jpg"))  # the photo scan answers first (id order)

    def check(path):
        checked.append(path.name)
        if path.name == first:  # by name, not by call: the other worker may start before this one
            raise KeyboardInterrupt  # as the first answer reaches the main thread
        time.sleep(5)  # a read that takes long (a stalled mount)
        return real(path)

    monkeypatch.setattr(split, "_check_image", check)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        split.scan(data, workers=2)
    assert time.monotonic() - t0 < 3 and len(checked) <= 3  # the queued ones are never started
