"""Safe model.tar.gz reading (bincli.artifacts.modeltar): hostile archives are refused before any write."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from bincli.artifacts.modeltar import extract_model, read_model_info
from bincli.errors import DataError

INFO = json.dumps({"arch": "resnet18", "classes": "1-5", "image_size": 64}).encode()


def make_tar(path, members):
    """members: (name, kind, payload): kind 'file' (payload bytes), 'dir', 'sym'/'hard' (payload target), 'fifo'."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "hard"):
                info.linkname = payload
            tar.addfile(info)
    return path


GOOD = [("model.pth", "file", b"weights"), ("model_info.json", "file", INFO),
        ("code", "dir", None), ("code/inference.py", "file", b"# handler\n")]


def test_a_good_archive_extracts(tmp_path):
    tar = make_tar(tmp_path / "model.tar.gz", GOOD)
    out = extract_model(tar, tmp_path / "out")
    assert (out / "model.pth").read_bytes() == b"weights"
    assert (out / "code" / "inference.py").read_bytes() == b"# handler\n"
    assert (out / "model.pth").stat().st_mode & 0o777 == 0o644
    assert (out / "code").stat().st_mode & 0o777 == 0o755
    assert read_model_info(tar)["arch"] == "resnet18"


@pytest.mark.parametrize(("member", "why"), [
    (("/tmp/evil.py", "file", b"x"), "absolute path"),
    (("../evil.py", "file", b"x"), "'..'"),
    (("code/../../evil.py", "file", b"x"), "'..'"),
    (("code/link.py", "sym", "inference.py"), "symlink"),  # even one that stays inside
    (("code/up", "sym", "../../etc/passwd"), "symlink"),
    (("code/abs", "sym", "/etc/passwd"), "symlink"),
    (("code/hard", "hard", "/etc/passwd"), "hardlink"),
    (("code/pipe", "fifo", None), "not a regular file"),
])
def test_hostile_members_are_refused_before_anything_is_written(tmp_path, member, why):
    tar = make_tar(tmp_path / "model.tar.gz", [*GOOD, member])
    dest = tmp_path / "out"
    with pytest.raises(DataError, match=why) as exc:
        extract_model(tar, dest)
    assert repr(member[0]) in exc.value.message
    assert not dest.exists()
    with pytest.raises(DataError):
        read_model_info(tar)


def test_missing_weights_and_not_a_tar(tmp_path):
    tar = make_tar(tmp_path / "model.tar.gz", [("model_info.json", "file", INFO)])
    with pytest.raises(DataError, match=r"model\.pth missing"):
        read_model_info(tar)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="not a readable tar archive"):
        extract_model(junk, tmp_path / "out")
    with pytest.raises(DataError, match="not found"):
        read_model_info(tmp_path / "absent.tar.gz")


def test_model_info_must_be_the_contract(tmp_path):
    tar = make_tar(tmp_path / "model.tar.gz", [("model.pth", "file", b"w"), ("model_info.json", "file", b"[1]")])
    with pytest.raises(DataError, match="not a JSON object with arch, classes, image_size"):
        read_model_info(tar)


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_plain_and_compressed_archives_open(tmp_path, mode):
    """The archive is decompressed by bincli (to cap what tarfile reads), so each format is checked."""
    tar = tmp_path / "model.tar"
    with tarfile.open(tar, mode) as t:
        for name, kind, payload in GOOD:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
    assert read_model_info(tar)["image_size"] == 64
    assert (extract_model(tar, tmp_path / "out") / "model.pth").read_bytes() == b"weights"
