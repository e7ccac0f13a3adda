"""The inference graph (artifacts/export.py) and the runtimes the handler picks from (core/runtimes.py):
each one answers real photos as the eager net does, and a missing or broken graph falls back."""

from __future__ import annotations

import importlib.util
import json
import logging
import tarfile

import pytest
import torch
from PIL import Image

from bincli.artifacts.bundle import package_model
from bincli.artifacts.modeltar import extract_model, read_model_info
from bincli.core import inference, runtimes
from bincli.core.contract import GRAPH_KEY, MODEL_INFO_FILE
from bincli.errors import DataError
from serving_support import make_model_dir, sample_images

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed (pip install -e '.[onnx]')")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """(model dir as the archive holds it, archive) of a packaged 64-px resnet18 with its graph."""
    root = tmp_path_factory.mktemp("runtimes")
    tar = package_model(make_model_dir(root / "src", seed=3), root / "model.tar.gz")
    return extract_model(tar, root / "model"), tar


def load(model_dir, monkeypatch, order: str):
    monkeypatch.setenv(runtimes.RUNTIME_ENV, order)
    return inference.model_fn(model_dir)


def test_package_exports_the_graph_and_records_it(packaged):
    model_dir, tar = packaged
    with tarfile.open(tar) as t:
        assert "model.onnx" in t.getnames()
    graph = read_model_info(tar)[GRAPH_KEY]
    assert graph["format"] == "onnx" and graph["file"] == "model.onnx" and graph["opset"] == 17
    assert graph["dynamic_batch"] is True
    assert graph["input_dtype"] == "uint8"  # the eval normalize is inside: the request path hands it pixels
    assert (model_dir / "model.onnx").stat().st_size > 1_000_000  # the weights are inside the one file


@pytest.mark.parametrize("order", [pytest.param("cuda", marks=needs_cuda), pytest.param("onnxruntime", marks=needs_ort),
                                   "torchscript", "eager"])
def test_each_runtime_answers_real_photos_as_the_eager_net(packaged, monkeypatch, abid_sample, order):
    model_dir, _ = packaged
    model = load(model_dir, monkeypatch, order)
    assert model.runtime.name == order
    photos = [Image.open(p).convert("RGB") for p in sample_images(abid_sample, 8)]
    batch = torch.stack([model.transform(img) for img in photos])
    with torch.inference_mode():
        reference = torch.softmax(inference.load_net(model_dir, "resnet18", 5)(batch), dim=1)
    for answers in (inference.predict_fn(photos, model), [inference.predict_fn(img, model) for img in photos]):
        for got, want in zip(answers, reference, strict=True):
            assert got["count"] == model.classes.count_of(int(want.argmax()))
            assert list(got["probabilities"].values()) == pytest.approx(want.tolist(), abs=1e-4)


def test_the_serving_halves_make_the_one_eval_transform(packaged, monkeypatch, abid_sample):
    """The request path resizes (model.pixels) and the runtime normalizes: together, exactly the eval preset
    that training's validation uses, on real photos of several sizes."""
    model = load(packaged[0], monkeypatch, "eager")
    normalize = runtimes.normalize_of(model.info)
    for path in sample_images(abid_sample, 8):
        img = Image.open(path).convert("RGB")
        pixels = model.pixels(img)
        assert pixels.dtype == torch.uint8 and pixels.shape == (3, model.image_size, model.image_size)
        assert torch.equal(normalize(pixels.unsqueeze(0))[0], model.transform(img))


@needs_ort
def test_a_graph_exported_before_the_normalize_moved_in_still_serves(packaged, tmp_path, monkeypatch, abid_sample):
    """Archives whose model.onnx takes normalized floats (no "input_dtype" in the record): ONNX Runtime
    serves them, normalizing in torch first, with the eager net's answers."""
    import shutil
    import warnings

    model_dir = tmp_path / "model"
    shutil.copytree(packaged[0], model_dir)
    net = inference.load_net(model_dir, "resnet18", 5)
    size = json.loads((model_dir / MODEL_INFO_FILE).read_text())["image_size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, size, size),), str(model_dir / "model.onnx"), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    info = json.loads((model_dir / MODEL_INFO_FILE).read_text())
    info[GRAPH_KEY].pop("input_dtype")
    (model_dir / MODEL_INFO_FILE).write_text(json.dumps(info))
    model = load(model_dir, monkeypatch, "onnxruntime")
    assert model.runtime.name == "onnxruntime" and model.runtime.normalize is not None
    photos = [Image.open(p).convert("RGB") for p in sample_images(abid_sample, 4)]
    with torch.inference_mode():
        reference = torch.softmax(net(torch.stack([model.transform(img) for img in photos])), dim=1)
    for got, want in zip(inference.predict_fn(photos, model), reference, strict=True):
        assert got["count"] == model.classes.count_of(int(want.argmax()))
        assert list(got["probabilities"].values()) == pytest.approx(want.tolist(), abs=1e-4)


def test_the_fastest_importable_runtime_is_chosen_and_logged(packaged, monkeypatch, caplog):
    monkeypatch.delenv(runtimes.RUNTIME_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="bincli.core.runtimes"):
        model = inference.model_fn(packaged[0])
    chosen = "cuda" if torch.cuda.is_available() else "onnxruntime" if HAS_ORT else "torchscript"
    assert model.runtime.name == chosen
    assert f"runtime {chosen} chosen" in caplog.text


def test_an_archive_without_a_graph_serves_torchscript(tmp_path, monkeypatch, caplog):
    tar = package_model(make_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz", graph=False)
    assert GRAPH_KEY not in read_model_info(tar)  # an archive packaged before graphs: still valid
    monkeypatch.delenv(runtimes.RUNTIME_ENV, raising=False)
    with caplog.at_level(logging.INFO, logger="bincli.core.runtimes"):
        model = inference.model_fn(extract_model(tar, tmp_path / "model"))
    assert model.runtime.name == "torchscript"
    if HAS_ORT:
        assert "runtime onnxruntime not used: model_info.json names no ONNX graph" in caplog.text


@needs_ort
@pytest.mark.parametrize("damage", ["missing", "corrupt", "other-weights"])
def test_a_broken_graph_falls_back_to_the_next_runtime(packaged, tmp_path, monkeypatch, caplog, damage):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(packaged[0], model_dir)
    graph = model_dir / "model.onnx"
    if damage == "missing":
        graph.unlink()
    elif damage == "corrupt":
        graph.write_bytes(graph.read_bytes()[:5000])
    else:  # a graph of the same shape but other weights: loads and runs, and must still be refused
        other = make_model_dir(tmp_path / "other", seed=99)
        package_model(other, tmp_path / "other.tar.gz")
        extract_model(tmp_path / "other.tar.gz", tmp_path / "other-x")
        shutil.copy(tmp_path / "other-x" / "model.onnx", graph)
    with caplog.at_level(logging.INFO, logger="bincli.core.runtimes"):
        model = load(model_dir, monkeypatch, "onnxruntime,torchscript")
    assert model.runtime.name == "torchscript"
    assert "runtime onnxruntime not used" in caplog.text
    if damage == "other-weights":
        assert "logits differ from the weights'" in caplog.text


def test_the_gpu_comes_first_where_torch_sees_one(monkeypatch):
    monkeypatch.delenv(runtimes.RUNTIME_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtimes.available()[:1] == ("cuda",)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in runtimes.available()
    monkeypatch.setenv(runtimes.RUNTIME_ENV, "cuda,eager")  # asked for, but no GPU: not tried
    assert runtimes.available() == ("eager",)


def test_a_gpu_that_fails_to_load_falls_back_to_the_next_runtime(packaged, monkeypatch, caplog):
    """torch says a GPU is there, but moving the net to it fails (no driver here): the CPU runtimes serve."""
    if torch.cuda.is_available():
        pytest.skip("a real GPU here: the fallback is for hosts where CUDA fails")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.INFO, logger="bincli.core.runtimes"):
        model = load(packaged[0], monkeypatch, "cuda,torchscript")
    assert model.runtime.name == "torchscript"
    assert "runtime cuda not used" in caplog.text
    assert next(model.net.parameters()).device.type == "cpu"  # the reference net stayed where it was


def test_no_runtime_of_the_order_loads_serves_eager(tmp_path, monkeypatch, caplog):
    tar = package_model(make_model_dir(tmp_path / "src"), tmp_path / "model.tar.gz", graph=False)
    with caplog.at_level(logging.INFO, logger="bincli.core.runtimes"):
        model = load(extract_model(tar, tmp_path / "model"), monkeypatch, "onnxruntime")
    assert model.runtime.name == "eager"
    assert "serving eager" in caplog.text


def test_an_unknown_runtime_name_is_one_clear_error(packaged, monkeypatch):
    with pytest.raises(ValueError, match=r"BINCLI_RUNTIME='tensorrt': unknown runtime 'tensorrt'; use some of "
                                         r"cuda, onnxruntime, torchscript, eager"):
        load(packaged[0], monkeypatch, "tensorrt")


def test_a_failed_export_packages_the_archive_without_a_graph(tmp_path, caplog, monkeypatch):
    src = make_model_dir(tmp_path / "src")
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # as where the onnx package is missing
    with caplog.at_level(logging.WARNING, logger="bincli.artifacts.bundle"):
        tar = package_model(src, tmp_path / "model.tar.gz")
    assert "model.tar.gz without an ONNX graph" in caplog.text
    assert GRAPH_KEY not in read_model_info(tar)
    with tarfile.open(tar) as t:
        assert "model.onnx" not in t.getnames()


@pytest.mark.parametrize(("graph", "message"), [
    ("model.onnx", "is not an inference graph record"),
    ({"format": "tensorrt", "file": "model.plan"}, "is not an inference graph record"),
    ({"format": "onnx", "file": "../model.onnx"}, "is not a file name at the top of the archive"),
    ({"format": "onnx", "file": "model.pth"}, "is not a file name at the top of the archive"),
    ({"format": "onnx", "file": "model.onnx", "opset": "17"}, "graph.opset \"17\" is not a whole number"),
])
def test_a_malformed_graph_record_is_refused_in_one_line(packaged, tmp_path, graph, message):
    model_dir, _ = packaged
    info = json.loads((model_dir / MODEL_INFO_FILE).read_text())
    with tarfile.open(tmp_path / "bad.tar.gz", "w:gz", compresslevel=0) as t:  # 90 MB: level 9 took 5 s
        for name in ("model.pth", "model.onnx"):
            t.add(model_dir / name, arcname=name)
        (tmp_path / MODEL_INFO_FILE).write_text(json.dumps({**info, GRAPH_KEY: graph}))
        t.add(tmp_path / MODEL_INFO_FILE, arcname=MODEL_INFO_FILE)
    with pytest.raises(DataError, match=message) as exc:
        read_model_info(tmp_path / "bad.tar.gz")
    assert "\n" not in str(exc.value)
