"""The inference handler (bincli.core.inference) called directly: SageMaker's four functions."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from PIL import Image

from bincli.core import inference
from bincli.core.presets import eval_transform
from serving_support import IMAGE_SIZE, bad_requests, encode, make_model_dir, sample_images


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("inference") / "model")


@pytest.fixture(scope="module")
def model(model_dir):
    return inference.model_fn(str(model_dir))


@pytest.fixture
def jpeg(abid_sample) -> bytes:
    return sample_images(abid_sample, 1)[0].read_bytes()


def reference_answer(model, img: Image.Image) -> tuple[int, list[float]]:
    """Count and probabilities computed without the handler: eval transform + network + softmax."""
    x = eval_transform(IMAGE_SIZE)(img.convert("RGB")).unsqueeze(0)
    with torch.inference_mode():
        probs = torch.softmax(model.net(x), dim=1)[0]
    return model.classes.count_of(int(probs.argmax())), probs.tolist()


def test_model_fn_loads_weights_and_classes(model, model_dir):
    state = torch.load(model_dir / "model.pth", weights_only=True)
    assert torch.equal(model.net.state_dict()["fc.weight"], state["fc.weight"])
    assert not model.net.training
    assert model.labels == ["1", "2", "3", "4", "5"]
    assert model.image_size == IMAGE_SIZE


def test_answer_for_a_real_jpeg(model, jpeg):
    from io import BytesIO

    body, ctype = inference.handle_request(model, jpeg, "image/jpeg", "application/json")
    assert ctype == "application/json"
    out = json.loads(body)
    assert {"count", "label", "confidence", "probabilities"} <= set(out)
    assert list(out["probabilities"]) == model.labels
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert out["confidence"] == max(out["probabilities"].values())
    assert out["label"] == str(out["count"])
    count, probs = reference_answer(model, Image.open(BytesIO(jpeg)))
    assert out["count"] == count
    assert list(out["probabilities"].values()) == pytest.approx(probs, abs=1e-6)


def test_predict_fn_batches_give_the_single_answers(model, abid_sample):
    images = [inference.input_fn(p.read_bytes(), "image/jpeg") for p in sample_images(abid_sample, 4)]
    singles = [inference.predict_fn(img, model) for img in images]
    batch = inference.predict_fn(images, model)
    assert [a["count"] for a in batch] == [a["count"] for a in singles]
    for a, b in zip(batch, singles, strict=True):
        assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=1e-5)


@pytest.mark.parametrize(("mode", "fmt"), [
    ("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"), ("I;16", "PNG"),
    ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("RGB", "MPO"),  # MPO: multi-picture JPEG from phones
])
def test_image_modes_are_converted_to_rgb(model, mode, fmt):
    img = Image.effect_noise((80, 60), 60).convert(mode) if mode != "I;16" else \
        Image.effect_noise((80, 60), 60).convert("I").point(lambda v: v * 200).convert("I;16")
    if mode == "P":
        img.info["transparency"] = 0
    body = encode(img, fmt, **({"save_all": True, "append_images": [img]} if fmt == "MPO" else {}))
    decoded = inference.input_fn(body, "image/png" if fmt == "PNG" else "image/jpeg")
    assert decoded.mode == "RGB" and decoded.size == (80, 60)
    out = inference.predict_fn(decoded, model)
    assert out["count"] in model.classes.counts


@pytest.mark.parametrize("size", [(1, 1), (2000, 40), (37, 901)])
def test_any_size_is_resized_to_the_model_input(model, size):
    body = encode(Image.effect_noise(size, 50).convert("RGB"), "JPEG")
    out = inference.predict_fn(inference.input_fn(body, "application/x-image"), model)
    assert out["count"] in model.classes.counts


def test_png_bytes_sent_as_jpeg_are_still_an_image(model):
    body = encode(Image.new("RGB", (30, 30), "blue"), "PNG")
    assert inference.input_fn(body, "Image/JPEG; charset=binary").mode == "RGB"


def test_every_bad_input_is_a_client_error(jpeg):
    for case, body, ctype, status in bad_requests(jpeg):
        with pytest.raises(inference.InferenceError) as exc:
            inference.input_fn(body, ctype)
        assert exc.value.status_code == status, case
        assert exc.value.message and "\n" not in exc.value.message


def test_the_error_is_the_toolkits_so_the_container_answers_4xx():
    errors = pytest.importorskip("sagemaker_inference.errors")
    err = inference.InferenceError(415, "no")
    assert isinstance(err, errors.BaseInferenceToolkitError)
    assert (err.status_code, err.message, err.phrase) == (415, "no", "no")


def test_fallback_error_class_without_the_toolkit(monkeypatch):
    # Load a second copy of the handler as if sagemaker-inference were not installed.
    monkeypatch.setitem(sys.modules, "sagemaker_inference", None)
    monkeypatch.setitem(sys.modules, "sagemaker_inference.errors", None)
    spec = importlib.util.spec_from_file_location("bincli.core._inference_no_toolkit", inference.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    with pytest.raises(module.InferenceError) as exc:
        module.input_fn(b"", "image/jpeg")
    assert exc.value.status_code == 400
    assert type(exc.value).__mro__[1].__module__ == module.__name__  # the fallback, not the toolkit's


@pytest.mark.parametrize(("accept", "ok"), [
    (None, True), ("", True), ("*/*", True), ("application/json", True), ("application/*", True),
    ("text/html, application/json;q=0.9", True), ("text/csv", False), ("image/png", False),
])
def test_output_fn_answers_json_or_406(accept, ok):
    answer = {"count": 2, "label": "2", "confidence": 0.5, "probabilities": {"1": 0.5, "2": 0.5}}
    if ok:
        body, ctype = inference.output_fn(answer, accept)
        assert (json.loads(body), ctype) == (answer, "application/json")
    else:
        with pytest.raises(inference.InferenceError) as exc:
            inference.output_fn(answer, accept)
        assert exc.value.status_code == 406


def test_model_fn_rejects_labels_that_do_not_match_classes(tmp_path):
    d = make_model_dir(tmp_path / "m")
    info = json.loads((d / "model_info.json").read_text())
    info["labels"] = ["a", "b", "c", "d", "e"]
    (d / "model_info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="do not match classes"):
        inference.model_fn(d)


def test_model_fn_reads_open_top_classes_and_ddp_weights(tmp_path, jpeg):
    d = make_model_dir(tmp_path / "m", classes="0-5+")
    state = torch.load(d / "model.pth", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, d / "model.pth")  # as saved from DDP
    model = inference.model_fn(d)
    out = inference.predict_fn(inference.input_fn(jpeg, "image/jpeg"), model)
    assert list(out["probabilities"]) == ["0", "1", "2", "3", "4", "5+"]
    assert out["count"] == model.classes.counts[model.labels.index(out["label"])]
