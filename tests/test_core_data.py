"""core/data.py: manifests and channels, decoding, the image cache, samplers."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from bincli.core.classes import ClassSpec
from bincli.core.data import (
    CountDataset,
    InputDataError,
    ShardSampler,
    TrainSampler,
    build_loader,
    decode,
    find_manifest,
    load_channel,
    open_cache,
    read_image,
    read_manifest,
)
from bincli.core.presets import eval_transform, train_transform
from train_blobs import blob_image, make_channels, make_split

SPEC = ClassSpec.parse("0-5")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("split"), {"train": 4, "valid": 2, "test": 1}, "0-5", size=40)


def _write_csv(path, text):
    path.write_text(text)
    return path


def test_manifest_keeps_string_ids_and_maps_counts_to_class_indices(tmp_path):
    (tmp_path / "images").mkdir()
    m = _write_csv(tmp_path / "train.csv", "id,path,count\n00002,images/00002.jpg,1\n100313,images/100313.jpg,5\n")
    samples = read_manifest(m, ClassSpec.parse("1-5"))
    assert [s.id for s in samples] == ["00002", "100313"]
    assert [s.target for s in samples] == [0, 4]
    assert samples[0].path == tmp_path / "images" / "00002.jpg"
    assert read_manifest(m, ClassSpec.parse("0-5+"), data_root="/data")[1].path.as_posix() == "/data/images/100313.jpg"


def test_manifest_errors_name_file_and_line(tmp_path):
    bad_header = _write_csv(tmp_path / "a.csv", "id,file,label\n1,x.jpg,1\n")
    with pytest.raises(InputDataError, match=r"a\.csv: expected the header id,path,count"):
        read_manifest(bad_header, SPEC)
    outside = _write_csv(tmp_path / "b.csv", "id,path,count\n1,x.jpg,1\n2,y.jpg,9\n")
    with pytest.raises(InputDataError, match=r"b\.csv:3: count '9' is not in classes 0-5"):
        read_manifest(outside, SPEC)


def test_channel_manifest_names_and_fallbacks(tmp_path, split):
    ch = tmp_path / "ch"
    ch.mkdir()
    assert find_manifest(ch, "train") is None
    _write_csv(ch / "manifest.csv", "id,path,count\n")
    assert find_manifest(ch, "train") == ch / "manifest.csv"
    _write_csv(ch / "train.csv", "id,path,count\n")
    assert find_manifest(ch, "train") == ch / "train.csv"
    with pytest.raises(InputDataError, match="train channel: no images"):
        load_channel(ch, "train", SPEC)
    # the split's manifests resolve against the data root
    samples = load_channel(split["manifests_dir"], "valid", SPEC, split["data_root"])
    assert len(samples) == 12 and all(s.path.is_file() for s in samples)
    with pytest.raises(InputDataError, match=r"valid channel: 12 image\(s\) missing.*check --data-root"):
        load_channel(split["manifests_dir"], "valid", SPEC)  # without the root the paths do not exist


def test_sagemaker_channel_layout_and_folder_layout(tmp_path):
    channels = make_channels(tmp_path / "sm", {"train": 2, "valid": 1, "test": 1}, "0-5", size=24)
    assert len(load_channel(channels["train"], "train", SPEC)) == 12  # train.csv + images/ in the channel dir
    folders = tmp_path / "folders"
    for label, n in (("0", 2), ("3", 1)):
        (folders / label).mkdir(parents=True)
        for i in range(n):
            blob_image(int(label), 24, random.Random(i)).save(folders / label / f"{label}{i:04d}.jpg")
    samples = load_channel(folders, "train", SPEC)
    assert sorted((s.id, s.target) for s in samples) == [("00000", 0), ("00001", 0), ("30000", 3)]


def test_decode_jpeg_matches_pil_and_handles_png_and_garbage(tmp_path):
    img = blob_image(3, 64, random.Random(1))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    fast = decode(buf.getvalue())
    pil = torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))).permute(2, 0, 1)
    assert fast.shape == (3, 64, 64) and fast.dtype == torch.uint8
    assert (fast.int() - pil.int()).abs().float().mean() < 1.5  # same libjpeg family; IDCT rounding differs a little
    png = io.BytesIO()
    img.save(png, format="PNG")
    assert torch.equal(decode(png.getvalue()), torch.from_numpy(np.array(img)).permute(2, 0, 1))
    gray = io.BytesIO()
    img.convert("L").save(gray, format="JPEG")
    assert decode(gray.getvalue()).shape == (3, 64, 64)  # always RGB
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputDataError, match=r"bad\.jpg: cannot read image"):
        read_image(tmp_path / "bad.jpg")


def test_cache_gives_the_same_images_and_is_filled_by_worker_processes(tmp_path, split):
    samples = load_channel(split["manifests_dir"], "train", SPEC, split["data_root"])
    plain = CountDataset(samples, 32, eval_transform(32))
    cache = open_cache(tmp_path / "cache", samples, 32)
    cached = CountDataset(samples, 32, eval_transform(32), cache)
    assert cache.filled() == 0
    # a DataLoader worker (another process) fills the cache...
    loader = build_loader(cached, 8, ShardSampler(len(cached)), workers=1)
    first = torch.cat([x for x, _ in loader])
    assert cache.filled() == len(samples)
    # ...which this process then reads, and both equal the uncached pipeline bit for bit
    second = torch.cat([cached[i][0][None] for i in range(len(cached))])
    reference = torch.cat([plain[i][0][None] for i in range(len(plain))])
    assert torch.equal(first, reference) and torch.equal(second, reference)
    # the same data set reopens the same (already full) cache; another image size gets its own file
    assert open_cache(tmp_path / "cache", samples, 32).filled() == len(samples)
    assert open_cache(tmp_path / "cache", samples, 48).filled() == 0
    # the train preset takes the cached uint8 image too
    x, y = CountDataset(samples, 32, train_transform(32), cache)[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == samples[0].target


def test_train_sampler_shards_pads_and_resumes():
    n, world = 11, 3
    shards = []
    for rank in range(world):
        s = TrainSampler(n, rank, world, seed=5)
        s.set_epoch(2)
        shards.append(list(s))
    assert {len(x) for x in shards} == {4} and all(len(s) == 4 for s in [TrainSampler(n, 0, world)])
    flat = [i for x in shards for i in x]
    assert set(flat) == set(range(n)) and len(flat) == 12  # one padded repeat
    s = TrainSampler(n, 0, 1, seed=5)
    s.set_epoch(2)
    perm = list(s)
    s.set_epoch(3)
    assert list(s) != perm and sorted(list(s)) == list(range(n))  # reshuffled each epoch, reproducibly
    # resuming after 6 samples: the ranks together see exactly the rest of the epoch's permutation
    rest = []
    for rank in range(2):
        r = TrainSampler(n, rank, 2, seed=5)
        r.set_epoch(2, start=6)
        rest += list(r)
    assert len(rest) == 6 and set(rest) == set(perm[6:])  # 5 left, padded to a multiple of 2


def test_shard_sampler_counts_every_image_once():
    shards = [list(ShardSampler(10, r, 4)) for r in range(4)]
    assert sorted(i for s in shards for i in s) == list(range(10))
