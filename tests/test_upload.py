"""`bincli upload`: channel layout on a real (moto) S3 server, incremental reruns, the local no-op."""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import UploadConfig
from bincli.data.upload import run_upload
from bincli.errors import BincliError, ConfigError, StateError
from bincli.state import State
from helpers import make_abid_folder

runner = CliRunner()
SPLITS = ("train", "valid", "test")


@pytest.fixture
def s3(aws_env):
    """A fresh bucket on the moto server; boto3's env chain aimed at it (as a user would)."""
    import boto3

    client = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    bucket = f"bincli-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket
    return client


def _write_split(workdir: Path, data_root: Path, rows: dict[str, list[tuple[str, str, int]]]) -> dict:
    """Manifests + the state record, as `bincli split` writes them (its data contract)."""
    out = workdir / "splits"
    out.mkdir(parents=True, exist_ok=True)
    manifests = {}
    for name in SPLITS:
        path = out / f"{name}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(("id", "path", "count"))
            writer.writerows(rows[name])
        manifests[name] = str(path.resolve())
    outputs = {"data_root": str(data_root.resolve()), "manifests_dir": str(out.resolve()), "manifests": manifests,
               "classes": "1-5", **{name: len(rows[name]) for name in SPLITS}}
    State(workdir).record("split", outputs)
    return outputs


@pytest.fixture
def split(tmp_path) -> tuple[Path, Path, dict]:
    data = tmp_path / "data"
    ids = make_abid_folder(data, {1: 4, 2: 4, 3: 4}, size=32)
    counts = {i: 1 + n // 4 for n, i in enumerate(ids)}
    parts = {"train": ids[:8], "valid": ids[8:10], "test": ids[10:]}
    rows = {name: [(i, f"images/{i}.jpg", counts[i]) for i in members] for name, members in parts.items()}
    workdir = tmp_path / "work"
    return workdir, data, _write_split(workdir, data, rows)


def _objects(s3) -> dict[str, dict]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
    return {obj["Key"]: obj for page in pages for obj in page.get("Contents", [])}


def test_local_backend_without_s3_uri_records_the_local_channels(split):
    workdir, data, split_out = split
    out = run_upload(UploadConfig(), workdir)
    assert out["backend"] == "local" and out["uploaded"] == 0
    recorded = State(workdir).outputs("upload")
    assert recorded["channels"] == {name: split_out["manifests_dir"] for name in SPLITS}
    assert recorded["data_root"] == str(data.resolve())
    for name in SPLITS:  # each channel folder holds its <channel>.csv (the training contract)
        assert (Path(recorded["channels"][name]) / f"{name}.csv").is_file()


def test_sagemaker_backend_needs_an_s3_uri(split):
    with pytest.raises(ConfigError, match=r"upload\.s3_uri"):
        run_upload(UploadConfig(), split[0], require_s3=True)


def test_upload_needs_a_split(tmp_path):
    with pytest.raises(StateError, match="'split' has not run"):
        run_upload(UploadConfig(s3_uri="s3://some-bucket/x"), tmp_path)


def test_channel_layout_bytes_and_a_rerun_sends_nothing(split, s3):
    workdir, data, split_out = split
    cfg = UploadConfig(s3_uri=f"s3://{s3.bucket}/abid/run1")
    out = run_upload(cfg, workdir, progress=False)

    objects = _objects(s3)
    expected = {f"abid/run1/{name}/{name}.csv" for name in SPLITS}
    for name in SPLITS:
        with open(split_out["manifests"][name]) as f:
            expected |= {f"abid/run1/{name}/{row['path']}" for row in csv.DictReader(f)}
    assert set(objects) == expected and out["uploaded"] == len(expected) == 15
    image_key = next(k for k in expected if k.endswith(".jpg"))
    body = s3.get_object(Bucket=s3.bucket, Key=image_key)
    assert body["Body"].read() == (data / "images" / Path(image_key).name).read_bytes()
    assert body["ContentType"] == "image/jpeg"
    csv_body = s3.get_object(Bucket=s3.bucket, Key="abid/run1/valid/valid.csv")["Body"].read()
    assert csv_body == Path(split_out["manifests"]["valid"]).read_bytes()
    recorded = State(workdir).outputs("upload")
    assert recorded["uri"] == f"s3://{s3.bucket}/abid/run1"
    assert recorded["channels"]["train"] == f"s3://{s3.bucket}/abid/run1/train"

    again = run_upload(cfg, workdir, progress=False)
    assert (again["uploaded"], again["skipped"]) == (0, 15)
    after = _objects(s3)
    assert {k: (o["ETag"], o["LastModified"]) for k, o in after.items()} == \
           {k: (o["ETag"], o["LastModified"]) for k, o in objects.items()}  # nothing re-sent

    # One image changed locally, one object lost remotely: the rerun sends exactly those two.
    changed = data / "images" / Path(image_key).name
    changed.write_bytes(changed.read_bytes() + b"\0")
    lost = "abid/run1/test/test.csv"
    s3.delete_object(Bucket=s3.bucket, Key=lost)
    third = run_upload(cfg, workdir, progress=False)
    assert (third["uploaded"], third["skipped"]) == (2, 13)
    assert s3.get_object(Bucket=s3.bucket, Key=image_key)["Body"].read() == changed.read_bytes()
    restored = s3.head_object(Bucket=s3.bucket, Key=lost)["ContentLength"]
    assert restored == Path(split_out["manifests"]["test"]).stat().st_size


@pytest.mark.slow
def test_multipart_file_is_recognised_on_rerun_even_with_another_part_size(tmp_path, s3):
    """A file above the multipart threshold: its multipart ETag is computed locally, so a rerun
    skips it; uploaded by another tool with another part size, the stored sha256 decides."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    big = data / "images" / "big.jpg"
    big.write_bytes(os.urandom(17 * 1024 * 1024))
    rows = {"train": [("big", "images/big.jpg", 1)], "valid": [], "test": []}
    workdir = tmp_path / "work"
    _write_split(workdir, data, rows)
    cfg = UploadConfig(s3_uri=f"s3://{s3.bucket}/mp")
    assert run_upload(cfg, workdir, progress=False)["uploaded"] == 4
    assert _objects(s3)["mp/train/images/big.jpg"]["ETag"].strip('"').endswith("-3")  # 3 parts of 8 MB
    assert run_upload(cfg, workdir, progress=False)["uploaded"] == 0

    import hashlib

    other = boto3.client("s3", region_name="us-east-1")  # from the env: the moto server
    other.upload_file(str(big), s3.bucket, "mp/train/images/big.jpg",
                      ExtraArgs={"Metadata": {"sha256": hashlib.sha256(big.read_bytes()).hexdigest()}},
                      Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
    assert _objects(s3)["mp/train/images/big.jpg"]["ETag"].strip('"').endswith("-4")
    assert run_upload(cfg, workdir, progress=False)["uploaded"] == 0


def _real_split(tmp_path, layout: str) -> tuple[Path, Path]:
    """A split made by `bincli split` itself on generated ABID data."""
    from bincli.config import SplitConfig
    from bincli.data.split import run_split

    data = tmp_path / "data"
    make_abid_folder(data, {1: 5, 2: 5, 3: 5}, size=32)
    workdir = tmp_path / "work"
    run_split(SplitConfig(input=data, ratios=(0.6, 0.2, 0.2), classes="1-3", layout=layout), workdir)
    return workdir, data


def test_folders_layout_uploads_count_folders_the_core_reads(tmp_path, s3):
    """--layout folders: `<split>/<count>/<id>.jpg`, no manifest; a rerun sends nothing; the
    channel, copied back down, is read by the core with the labels the metadata gave."""
    from bincli.core.classes import ClassSpec
    from bincli.core.data import load_channel

    workdir, data = _real_split(tmp_path, "folders")
    cfg = UploadConfig(s3_uri=f"s3://{s3.bucket}/f", layout="folders")
    out = run_upload(cfg, workdir, progress=False)
    keys = set(_objects(s3))
    assert out["uploaded"] == len(keys) == 15 and out["manifests"] is None and out["layout"] == "folders"
    assert all(k.endswith(".jpg") and len(k.split("/")) == 4 for k in keys)  # f/<split>/<count>/<id>.jpg
    assert {k.split("/")[1] for k in keys} == set(SPLITS)
    assert run_upload(cfg, workdir, progress=False)["uploaded"] == 0

    down = tmp_path / "channel"
    for key in keys:
        if key.startswith("f/train/"):
            target = down / key.removeprefix("f/train/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
    spec = ClassSpec.parse("1-3")
    samples = load_channel(down, "train", spec)
    for sample in samples:
        meta = json.loads((data / "metadata" / f"{sample.id}.json").read_text())
        assert sample.target == spec.index(meta["EXPECTED_QUANTITY"])
    assert len(samples) == 9


def test_folders_layout_needs_a_split_with_folders(tmp_path, s3):
    workdir, _ = _real_split(tmp_path, "manifest")
    with pytest.raises(ConfigError, match=r"upload\.layout: folders needs the split's folder layout"):
        run_upload(UploadConfig(s3_uri=f"s3://{s3.bucket}/f", layout="folders"), workdir, progress=False)
    with pytest.raises(ConfigError, match="split --layout folders"):
        run_upload(UploadConfig(layout="folders"), workdir)  # local backend: same check
    assert _objects(s3) == {}


def test_missing_bucket_is_one_clear_error(split, s3):
    with pytest.raises(BincliError, match="bucket does not exist"):
        run_upload(UploadConfig(s3_uri="s3://no-such-bucket-here/x"), split[0], progress=False)


def test_missing_image_fails_before_anything_is_sent(split, s3):
    workdir, data, _ = split
    next((data / "images").glob("*.jpg")).unlink()
    with pytest.raises(BincliError, match="not on disk"):
        run_upload(UploadConfig(s3_uri=f"s3://{s3.bucket}/x"), workdir, progress=False)
    assert _objects(s3) == {}


def test_cli_upload_json(split, s3, in_tmp):
    workdir = split[0]
    result = runner.invoke(app, ["upload", "-w", str(workdir), "--s3-uri", f"s3://{s3.bucket}/cli", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["channels"]["test"] == f"s3://{s3.bucket}/cli/test" and out["uploaded"] == 15


def test_parallel_listing_finds_every_key_once_in_order(s3):
    """s3.list_objects fans a long listing out over key ranges (how download lists the 536K
    metadata keys): same keys as a plain paginated listing, in order, none twice."""
    from concurrent.futures import ThreadPoolExecutor

    from bincli.data.s3 import list_objects

    keys = [f"metadata/{i}.json" for i in ("00001", "00002", "00150", "09999", "1", "10", "100313", "1000",
                                           "10999", "11000", "25", "250000", "3", "4999", "536000", "99999")]
    keys += [f"metadata/{n:05d}.json" for n in range(20000, 20040)] + ["other/x.json"]
    for key in keys:
        s3.put_object(Bucket=s3.bucket, Key=key, Body=b"{}")
    cuts = [f"metadata/{a}{b}" for a in "0123456789" for b in "0123456789"]
    pages = []
    with ThreadPoolExecutor(8) as pool:
        found = list_objects(s3, s3.bucket, "metadata/", cuts, pool.map, on_page=lambda: pages.append(1),
                             project=lambda o: o["Key"], page_size=5)
    assert found == sorted(k for k in keys if k.startswith("metadata/"))
    assert len(pages) > 2 + 9  # it did fan out (ranges after the first two pages)
    small = list_objects(s3, s3.bucket, "other/", cuts)
    assert [o["Key"] for o in small] == ["other/x.json"] and small[0]["Size"] == 2


def test_a_listing_of_more_than_two_pages_without_cuts_reads_to_the_end(s3):
    """What upload's rerun lists (no key cuts): a prefix of more than two pages once raised
    ValueError from the empty fan-out (any rerun over 2,000 objects)."""
    from bincli.data.s3 import list_objects

    keys = [f"p/{n:03d}" for n in range(11)]
    for key in keys:
        s3.put_object(Bucket=s3.bucket, Key=key, Body=b"x")
    assert [o["Key"] for o in list_objects(s3, s3.bucket, "p/", page_size=3)] == keys


def test_transfer_keeps_a_bounded_window_of_futures(tmp_path, monkeypatch):
    """30,000 files are not 30,000 transfer futures at once: uploads are submitted at most a
    window ahead of the oldest unfinished one (a stand-in transfer manager counts them)."""
    import boto3.s3.transfer

    from bincli.data import upload as upload_mod

    class Future:
        def __init__(self, manager):
            self.manager = manager

        def result(self):
            self.manager.open -= 1

    class Manager:
        open = most = 0

        def __init__(self, client, config):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def upload(self, *args, **kwargs):
            Manager.open += 1
            Manager.most = max(Manager.most, Manager.open)
            return Future(Manager)

    monkeypatch.setattr(boto3.s3.transfer, "create_transfer_manager", Manager)
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x")
    items = [upload_mod.Item(path, f"k/{n}.jpg", 1) for n in range(2000)]
    assert upload_mod._transfer(None, "b", items, workers=4, progress=False) == {}
    assert Manager.open == 0 and Manager.most == upload_mod.WINDOW
