"""Hostile model archives: each is refused with one DataError line and nothing is written outside
the extraction folder (traversal, absolute paths, links, link chains, the PATH_MAX chain of
CVE-2025-4517, devices, too many members, too many bytes); bad model_info.json and weights that do
not fit give one line too, through load_model and through `bincli predict --model`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import typing

import pytest
from typer.testing import CliRunner

from bincli.artifacts import modeltar
from bincli.artifacts.bundle import package_model
from bincli.artifacts.loader import load_model
from bincli.artifacts.modeltar import extract_model, read_model_info
from bincli.cli import app
from bincli.errors import DataError
from helpers import make_bin_image

INFO = json.dumps({"arch": "resnet18", "classes": "1-5", "image_size": 64}).encode()
TYPES = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
         "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE}


def make_tar(path, members, fmt=tarfile.PAX_FORMAT):
    """members: (name, kind, payload): 'file' (payload bytes), 'dir', 'sym'/'hard' (payload: the
    target), 'fifo'/'chr'/'blk', or 'header' (payload: a declared size, no data follows)."""
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            elif kind == "header":
                info.size = payload
                tar.addfile(info)  # a header that promises data the archive does not hold
            else:
                info.type = TYPES[kind]
                info.linkname = payload or ""
                tar.addfile(info)
    return path


GOOD = [("model_info.json", "file", INFO), ("model.pth", "file", b"weights"), ("code", "dir", None),
        ("code/inference.py", "file", b"# handler\n")]


def snapshot(root):
    """Every path under root (links not followed) with its kind and content."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                out[p] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[p] = ("dir", None)
            else:
                with open(p, "rb") as f:
                    out[p] = ("file", hashlib.sha256(f.read()).hexdigest())
    return out


class Arena(typing.NamedTuple):
    root: object      # tmp_path: holds the archive and `parent`
    parent: object    # where the extraction folder is made
    dest: object      # parent/dest, the extraction folder
    outside: object   # parent/outside: a sibling holding keep.txt, a target for escapes


@pytest.fixture
def arena(tmp_path):
    parent = tmp_path / "parent"
    outside = parent / "outside"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_bytes(b"original")
    return Arena(tmp_path, parent, parent / "dest", outside)


def refused(arena, tar, *fragments):
    """Extract `tar` into arena.dest: a DataError of one line naming the archive, nothing written."""
    before = snapshot(arena.root)
    with pytest.raises(DataError) as exc:
        extract_model(tar, arena.dest)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{tar}: ")
    for fragment in fragments:
        assert fragment in message
    assert not arena.dest.exists()
    assert snapshot(arena.root) == before
    assert sorted(os.listdir(arena.outside)) == ["keep.txt"]
    assert (arena.outside / "keep.txt").read_bytes() == b"original"
    with pytest.raises(DataError):  # deploy's check before starting a server refuses it too
        read_model_info(tar)
    return message


def path_max_chain(escape_to: str) -> list:
    """The CVE-2025-4517 proof of concept: symlinked folders whose resolved path runs past PATH_MAX,
    so os.path.realpath stops resolving, then a link through them to `escape_to` and a file in it."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    members, path = [], ""
    for step in steps:
        members.append((os.path.join(path, comp), "dir", None))
        members.append((os.path.join(path, step), "sym", comp))
        path = os.path.join(path, comp)
    long_link = os.path.join(*steps, "l" * 254)  # resolves back to the extraction folder
    members.append((long_link, "sym", os.path.join(*[".."] * len(steps))))
    members.append(("escape", "sym", f"{long_link}/../{escape_to}"))
    members.append(("escape/pwned.txt", "file", b"pwned\n"))
    return members


# ---------------------------------------------------------------- hostile members
CASES = {
    "traversal": ([("../outside/pwned.txt", "file", b"x")], ["'../outside/pwned.txt'", "'..'"]),
    "nested-traversal": ([("code/../../outside/pwned.txt", "file", b"x")], ["'..'"]),
    "absolute": ([("{outside}/pwned.txt", "file", b"x")], ["absolute path"]),
    "drive-letter": ([("C:/pwned.txt", "file", b"x")], ["absolute path"]),
    "backslash": ([("..\\outside\\pwned.txt", "file", b"x")], ["backslash"]),
    "newline-in-name": ([("code/a\nb.py", "file", b"x")], ["control character", "'code/a\\nb.py'"]),
    "nul-in-pax-name": ([("code/" + "x" * 100 + "\x00b.py", "file", b"x")], ["control character"]),
    "symlink-inside": ([("code/link.py", "sym", "inference.py")], ["'code/link.py' is a symlink"]),
    "symlink-out": ([("code/up", "sym", "../../outside"), ("code/up/pwned.txt", "file", b"x")],
                    ["'code/up' is a symlink"]),
    "symlink-absolute": ([("code/abs", "sym", "{outside}")], ["symlink"]),
    # a hardlink to a file outside, then a regular member of the same name overwriting it
    "hardlink-overwrite": ([("model.pth", "hard", "{outside}/keep.txt"), ("model.pth", "file", b"overwritten")],
                           ["'model.pth' is a hardlink"]),
    "hardlink-inside": ([("code/copy.py", "hard", "code/inference.py")], ["hardlink"]),
    # each link lexically stays inside; resolved through the earlier one ('s' -> '.') it leaves
    "symlink-chain": ([("s", "sym", "."), ("s/s/s/up", "sym", "../outside"), ("s/s/s/up/pwned.txt", "file", b"x")],
                      ["member 's' is a symlink"]),
    "path-max-chain": (path_max_chain("outside"), ["member 'a' is a symlink"]),
    "fifo": ([("code/pipe", "fifo", None)], ["is a fifo, not a regular file"]),
    "char-device": ([("code/null", "chr", None)], ["character device"]),
    "block-device": ([("code/disk", "blk", None)], ["block device"]),
    "duplicate-file": ([("model.pth", "file", b"again")], ["'model.pth' appears twice"]),
    "file-under-a-file": ([("model.pth/x", "file", b"x")], ["sits under a file"]),
    "too-deep": ([("/".join(["d"] * 40) + "/x", "file", b"x")], ["nested deeper"]),
    "name-part-too-long": ([("code/" + "n" * 300, "file", b"x")], ["name part over 255"]),
    "member-over-cap": ([("code/huge.bin", "header", 3 * 1024**3)], ["'code/huge.bin' is over 1 GiB"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_members_are_refused_and_nothing_is_written_outside(arena, case):
    members, fragments = CASES[case]
    members = [(n.format(outside=arena.outside), kind, p.format(outside=arena.outside) if isinstance(p, str) else p)
               for n, kind, p in members]
    tar = make_tar(arena.root / "evil.tar.gz", [*GOOD, *members])
    refused(arena, tar, *fragments)


def test_the_path_max_chain_defeats_the_stdlib_data_filter_on_this_python(arena):
    """Shows the chain archive is a real exploit: tarfile's own "data" filter lets it write outside
    (Python < 3.11.13 / 3.12.11 / 3.13.4); bincli never relies on that filter."""
    tar = make_tar(arena.root / "chain.tar.gz", path_max_chain("outside"))
    arena.dest.mkdir()
    with tarfile.open(tar) as t:
        try:
            t.extractall(arena.dest, filter="data")
        except tarfile.TarError:
            pytest.skip("this Python's data filter refuses the chain (CVE-2025-4517 fixed)")
    assert (arena.outside / "pwned.txt").read_bytes() == b"pwned\n"


def test_too_many_members(arena):
    many = [(f"code/m{i:04d}.py", "file", b"") for i in range(modeltar.MAX_MEMBERS)]
    tar = make_tar(arena.root / "many.tar.gz", [*GOOD, *many])
    refused(arena, tar, f"more than {modeltar.MAX_MEMBERS} members")


def test_too_many_bytes_in_all(arena, monkeypatch):
    monkeypatch.setattr(modeltar, "MAX_UNPACKED_BYTES", 1000)
    tar = make_tar(arena.root / "big.tar.gz", [*GOOD, ("code/a.bin", "file", b"a" * 600),
                                               ("code/b.bin", "file", b"b" * 600)])
    refused(arena, tar, "unpacks to more than 1000 bytes", "'code/b.bin'")


def test_a_pax_header_declaring_gigabytes_is_not_read(arena):
    tar = arena.root / "pax.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        info = tarfile.TarInfo("pax")
        info.type = tarfile.XHDTYPE  # tarfile would read this header's declared size into memory
        info.size = 3 * 1024**3
        t.addfile(info)
    refused(arena, tar, "more than 2 GiB")


def test_a_truncated_archive_is_refused(arena):
    plain = arena.root / "whole.tar"
    with tarfile.open(plain, "w") as t:
        for name, data in (("model_info.json", INFO), ("code/inference.py", b"# handler\n"),
                           ("model.pth", os.urandom(200_000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    cut = arena.root / "cut.tar"
    cut.write_bytes(plain.read_bytes()[:120_000])  # model.pth's header promises more than is left
    refused(arena, cut, "damaged archive")


def test_a_failure_while_writing_leaves_nothing_half_written(arena, monkeypatch):
    real, calls = modeltar._write_file, []

    def disk_full_on_the_second_file(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(modeltar, "_write_file", disk_full_on_the_second_file)
    tar = make_tar(arena.root / "model.tar.gz", GOOD)
    before = snapshot(arena.root)
    with pytest.raises(DataError, match=r"member 'model.pth': cannot extract \(\[Errno 28\] No space left"):
        extract_model(tar, arena.dest)
    assert not arena.dest.exists() and snapshot(arena.root) == before
    arena.dest.mkdir()  # a folder the caller made (load_model's mkdtemp) is kept, emptied
    calls.clear()
    with pytest.raises(DataError):
        extract_model(tar, arena.dest)
    assert os.listdir(arena.dest) == []


def test_the_extraction_folder_must_be_new_or_empty(arena):
    tar = make_tar(arena.root / "model.tar.gz", GOOD)
    arena.dest.mkdir()
    (arena.dest / "old.txt").write_text("x")
    with pytest.raises(DataError, match="not an empty folder"):
        extract_model(tar, arena.dest)
    assert sorted(os.listdir(arena.dest)) == ["old.txt"]
    (arena.dest / "old.txt").unlink()
    arena.dest.rmdir()
    arena.dest.symlink_to(arena.outside, target_is_directory=True)  # even an empty one behind a link
    (arena.outside / "keep.txt").unlink()
    with pytest.raises(DataError, match="not an empty folder"):
        extract_model(tar, arena.dest)
    assert os.listdir(arena.outside) == []
    arena.dest.unlink()
    assert extract_model(tar, arena.dest) == arena.dest
    assert sorted(os.listdir(arena.dest)) == ["code", "model.pth", "model_info.json"]


def test_predict_refuses_a_crafted_archive_in_one_line(arena):
    tar = make_tar(arena.root / "evil.tar.gz", [*GOOD, *path_max_chain("outside")])
    img = make_bin_image(arena.root / "bin.jpg", 2)
    work = arena.parent / "work"
    before = snapshot(arena.root)
    result = CliRunner().invoke(app, ["predict", str(img), "--model", str(tar), "-w", str(work)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tar}: member 'a' is a symlink"), result.output
    assert "Traceback" not in result.output
    after = snapshot(arena.root)
    assert {p: v for p, v in after.items() if not p.startswith(str(work))} == before
    assert os.listdir(work) == []  # the extraction folder inside the workdir is gone again
    assert sorted(os.listdir(arena.outside)) == ["keep.txt"]


# ---------------------------------------------------------------- bad model contents
def test_the_architecture_list_is_what_the_core_builds():
    from bincli.core.model import ARCHITECTURES

    assert set(modeltar.ARCHITECTURES) == set(ARCHITECTURES)


BASE = {"arch": "resnet18", "classes": "1-5", "labels": ["1", "2", "3", "4", "5"], "image_size": 64,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
BAD_INFO = {
    "not-json": (b"{arch: resnet18", "not a JSON object"),
    "a-list": (b"[1, 2]", "not a JSON object"),
    "no-arch": ({k: v for k, v in BASE.items() if k != "arch"}, "lacks arch"),
    "unknown-arch": ({**BASE, "arch": "resnet9000"}, 'arch "resnet9000" is not one of resnet18, resnet34, resnet50'),
    "arch-not-a-string": ({**BASE, "arch": ["resnet18"]}, "is not one of"),
    "size-a-string": ({**BASE, "image_size": "64"}, 'image_size "64" is not a whole number from 32 to 1024'),
    "size-a-float": ({**BASE, "image_size": 64.0}, "image_size"),
    "size-a-bool": ({**BASE, "image_size": True}, "image_size"),
    "size-too-small": ({**BASE, "image_size": 3}, "image_size"),
    "size-too-big": ({**BASE, "image_size": 100_000}, "image_size"),
    "classes-junk": ({**BASE, "classes": "five"}, "classes must look like '1-5'"),
    "classes-a-number": ({**BASE, "classes": 5}, "classes 5 is not a string"),
    "classes-backwards": ({**BASE, "classes": "5-1"}, "ends before it starts"),
    "labels-mismatch": ({**BASE, "labels": ["a", "b"]}, "do not match classes 1-5"),
    "mean-short": ({**BASE, "mean": [0.5]}, "mean [0.5] is not 3 finite numbers"),
    "std-zero": ({**BASE, "std": [0, 1, 1]}, "std"),
}


def info_bytes(info):
    return info if isinstance(info, bytes) else json.dumps(info).encode()


@pytest.mark.parametrize("case", list(BAD_INFO))
def test_bad_model_info_is_one_line_naming_the_archive(tmp_path, case):
    info, fragment = BAD_INFO[case]
    tar = make_tar(tmp_path / "m.tar.gz", [("model_info.json", "file", info_bytes(info)),
                                           ("model.pth", "file", b"w")])
    with pytest.raises(DataError) as exc:
        read_model_info(tar)
    assert str(exc.value).startswith(f"{tar}: model_info.json")
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from serving_support import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("real") / "m")  # resnet18, classes 1-5, 64 px


def repackaged(model_dir, out, info=None, weights=None):
    """A real archive (bundle.package_model) of model_dir with model_info/model.pth replaced."""
    import shutil

    d = out.parent / f"{out.stem}-dir"
    shutil.copytree(model_dir, d)
    if info is not None:
        (d / "model_info.json").write_bytes(info_bytes(info))
    if weights is not None:
        weights(d / "model.pth")
    return package_model(d, out)


def test_load_model_checks_model_info_before_torch_sees_it(tmp_path, model_dir):
    tar = repackaged(model_dir, tmp_path / "arch.tar.gz", {**BASE, "arch": "resnet9000"})
    work = tmp_path / "work"
    with pytest.raises(DataError, match='arch "resnet9000" is not one of'):
        load_model(tar, work)
    assert os.listdir(work) == []


def save_state(make):
    def write(path):
        import torch

        torch.save(make(), path)
    return write


def resnet34_state():
    from bincli.core.model import build_model

    return build_model("resnet34", 5).state_dict()


def datetime_state():
    import datetime

    return {"fc.weight": datetime.datetime(2020, 1, 1)}  # unpickling it needs a global weights_only refuses


WRONG_WEIGHTS = {
    "other-class-count": ({**BASE, "classes": "1-3", "labels": ["1", "2", "3"]}, None,
                          "model.pth does not load into a resnet18 for classes 1-3 (size mismatch for fc.weight"),
    "other-architecture": (None, save_state(resnet34_state), "does not load into a resnet18"),
    "not-weights-only": (None, save_state(datetime_state), "model.pth is not a plain state_dict; torch.load"
                                                           "(weights_only=True) refused it (Unsupported global"),
    "junk-bytes": (None, lambda p: p.write_bytes(b"not a state dict"), "is not a plain state_dict"),
    "a-tensor": (None, save_state(lambda: __import__("torch").zeros(3)), "does not load into a resnet18"),
}


@pytest.mark.parametrize("case", list(WRONG_WEIGHTS))
def test_weights_that_do_not_fit_are_one_line(tmp_path, model_dir, case):
    info, weights, fragment = WRONG_WEIGHTS[case]
    tar = repackaged(model_dir, tmp_path / "w.tar.gz", info, weights)
    read_model_info(tar)  # the archive and its model_info.json are fine
    work = tmp_path / "work"
    with pytest.raises(DataError) as exc:
        load_model(tar, work)
    message = str(exc.value)
    assert message.startswith(f"{tar}: ") and fragment in message and "\n" not in message
    assert "weights_only` set to `False`" not in message  # torch's advice to run untrusted pickles
    assert os.listdir(work) == []


@pytest.mark.parametrize(("info", "weights", "fragment"), [
    ({**BASE, "image_size": "big"}, None, 'image_size "big" is not a whole number'),
    (None, save_state(resnet34_state), "model.pth does not load into a resnet18"),
], ids=["bad-image-size", "wrong-weights"])
def test_predict_with_a_bad_model_is_one_error_line(tmp_path, model_dir, info, weights, fragment):
    tar = repackaged(model_dir, tmp_path / "bad.tar.gz", info, weights)
    img = make_bin_image(tmp_path / "bin.jpg", 2)
    result = CliRunner().invoke(app, ["predict", str(img), "--model", str(tar), "-w", str(tmp_path / "work")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tar}: ") and fragment in lines[0], result.output
    assert "Traceback" not in result.output
    assert os.listdir(tmp_path / "work") == []


def test_load_model_extracts_inside_the_workdir(tmp_path, model_dir):
    tar = repackaged(model_dir, tmp_path / "ok.tar.gz")
    work = tmp_path / "work"
    model, folder = load_model(tar, work)
    try:
        assert folder.parent == work and folder.name.startswith("bincli-model-")
        assert model.image_size == 64 and model.labels == ["1", "2", "3", "4", "5"]
    finally:
        import shutil

        shutil.rmtree(folder)


# ---------------------------------------------------------------- a graph that never ends (issue 28, item 4)
def _looping_archive(base) -> typing.Any:
    """model_tar's archive with its model.onnx replaced by a graph of the same input and output whose
    Loop runs 10^15 times (what the probe and every forward pass would spin on)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from serving_support import model_tar

    src = model_tar(base)
    out = base / "looping-model.tar.gz"
    if out.is_file():
        return out
    with tarfile.open(src) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    original = onnx.load_from_string(next(data for m, data in members if m.name == "model.onnx"))
    inp, outp = original.graph.input[0], original.graph.output[0]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])])
    classes = outp.type.tensor_type.shape.dim[1].dim_value or 5
    graph = helper.make_graph([
        helper.make_node("Cast", [inp.name], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["xf"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["l0"]),
        helper.make_node("ReduceSum", ["m"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["v0"]),  # depends on the input: nothing to fold away
        helper.make_node("Loop", ["trips", "yes", "v0"], ["v"], body=body),
        helper.make_node("Add", ["l0", "v"], [outp.name]),
    ], "looping", [inp], [outp], initializer=[
        numpy_helper.from_array(np.ones((3, classes), np.float32), "w"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(10**15, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "yes")])
    looping = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with tarfile.open(out, "w:gz") as tar:
        for m, data in members:
            if m.name == "model.onnx":
                data = looping.SerializeToString()
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
    return out


def test_predict_model_with_a_looping_graph_stops_at_the_startup_timeout_and_on_ctrl_c(tmp_path_factory, tmp_path):
    """In a child process: the spinning native thread is left to the process's exit."""
    import signal
    import subprocess
    import sys
    import time

    tar = _looping_archive(tmp_path_factory.getbasetemp())
    photo = tmp_path / "bin.jpg"
    make_bin_image(photo, 2)
    bincli = [sys.executable, "-m", "bincli", "predict", str(photo), "--model", str(tar), "-w", str(tmp_path / "w")]
    env = {**os.environ, "BINCLI_RUNTIME": "onnxruntime,eager"}
    t0 = time.monotonic()
    done = subprocess.run([*bincli, "--set", "deploy.startup_timeout=5"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"loading and warming up {tar}: not done within 5 s; stopped" in done.stderr
    assert time.monotonic() - t0 < 60

    proc = subprocess.Popen(bincli, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import psutil

        deadline = time.monotonic() + 60
        while psutil.Process(proc.pid).cpu_times().user < 8:  # past the imports and the load: spinning
            assert proc.poll() is None and time.monotonic() < deadline, "never reached the graph"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)  # before: only SIGKILL stopped it
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, proc.stderr.read()
