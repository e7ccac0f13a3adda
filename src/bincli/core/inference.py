"""The SageMaker inference handler: model_fn, input_fn, predict_fn, output_fn.

The same four functions run in three places, so an answer is the same wherever it comes from:
  - SageMaker's PyTorch serving container (TorchServe + sagemaker-inference), through the
    `code/inference.py` shim that bincli.artifacts.bundle puts in model.tar.gz;
  - bincli's local endpoint (bincli/backends/local/server.py);
  - `bincli predict --model` and `bincli evaluate --model` (in-process).

Request:  the image bytes, Content-Type image/jpeg, image/png or application/x-image (JPEG or PNG
          data), any size (resized to the model's input by the training eval transform), at most
          6 MB. Grayscale, palette, CMYK and alpha images are converted to RGB.
Response: application/json
          {"count": 3, "label": "3", "confidence": 0.41, "probabilities": {"1": 0.1, ..., "5": 0.05},
           "expected_count": 2.9, "median_count": 3, "count_range": [2, 4]}
          `count` is the count the predicted class stands for ("5+" answers 5). The count-aware
          fields are defined once in core/counting.py; count_range holds 80% of the probability
          (model_info.json's "count_range_level" changes it). The probabilities are those of the
          logits divided by model_info.json's "temperature" (fitted on the valid split; 1 if absent).

A request the handler refuses raises `InferenceError(status, message)`: a subclass of
sagemaker-inference's `GenericInferenceToolkitError` when that toolkit is installed (in the
container), so the container answers that 4xx instead of turning it into a 500. Messages never
echo the request (in the container they become the HTTP reason phrase).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .classes import ClassSpec
from .contract import (
    IMAGE_CONTENT_TYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    JSON_CONTENT_TYPE,
    MAX_PAYLOAD_BYTES,
    MODEL_INFO_FILE,
    MODEL_INFO_KEYS,
    WEIGHTS_FILE,
)
from .counting import DEFAULT_RANGE_LEVEL
from .counting import describe as describe_counts
from .model import build_model
from .presets import eval_pixels, eval_transform
from .runtimes import normalize_of
from .runtimes import select as select_runtime

log = logging.getLogger(__name__)

# Decoded-size cap against decompression bombs: a few KB of PNG can declare gigapixels.
# 40 MP is far above any bin photo (ABID's are under 1 MP) and above common phone cameras.
MAX_IMAGE_PIXELS = 40_000_000
IMAGE_FORMATS = ("JPEG", "PNG")

try:  # inside SageMaker's container: its toolkit maps this error's status_code to the HTTP answer
    from sagemaker_inference.errors import GenericInferenceToolkitError as _ToolkitError
except ImportError:  # bincli's own server and tests without the toolkit: same interface

    class _ToolkitError(Exception):  # type: ignore[no-redef]
        def __init__(self, status_code: int, message: str | None = None, phrase: str | None = None):
            self.status_code = status_code
            self.message = message or "Invalid Request"
            self.phrase = phrase or self.message
            super().__init__(status_code, self.message, self.phrase)


class InferenceError(_ToolkitError):
    """A request the handler refuses, with the HTTP status the client gets (4xx)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code, message)
        self.status_code = status_code
        self.message = message

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


@dataclass
class LoadedModel:
    """What model_fn returns: the network, its eval transform and its classes.

    The request path runs the eval transform in two halves: `pixels` (presets.eval_pixels: decode's image
    -> uint8 (3, S, S)) per request, the rest inside the runtime's forward (core/runtimes.py)."""

    net: torch.nn.Module
    transform: Any
    classes: ClassSpec
    info: dict[str, Any] = field(default_factory=dict)
    runtime: Any = None  # core.runtimes.Runtime that runs the forward pass (None: the eager net)
    pixels: Any = None   # the eval transform's first half (None: eval_pixels at info's image_size)

    def __post_init__(self) -> None:
        if self.pixels is None and "image_size" in self.info:
            self.pixels = eval_pixels(int(self.info["image_size"]))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits for a batch (N, 3, S, S): uint8 pixels (`pixels`' output) by the runtime model_fn chose;
        a float batch already through the whole eval `transform` by the eager net (the reference)."""
        if batch.dtype == torch.uint8:
            if self.runtime is not None:
                return self.runtime(batch)
            batch = normalize_of(self.info)(batch)
        with torch.inference_mode():
            return self.net(batch)

    @property
    def labels(self) -> list[str]:
        return self.classes.labels

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def temperature(self) -> float:
        return float(self.info.get("temperature") or 1.0)

    def describe(self, probs: torch.Tensor | list[float]) -> dict[str, Any]:
        """The answer for one image from its class probabilities (1-D: a tensor, or its tolist())."""
        values = probs.tolist() if isinstance(probs, torch.Tensor) else [float(p) for p in probs]
        idx = values.index(max(values))  # the first of equal maxima, as numpy's argmax
        labels = self.labels  # built per call by ClassSpec: once here
        level = float(self.info.get("count_range_level") or DEFAULT_RANGE_LEVEL)
        return {
            "count": self.classes.count_of(idx),
            "label": labels[idx],
            "confidence": values[idx],
            "probabilities": dict(zip(labels, values, strict=True)),
            **{k: v for k, v in describe_counts(values, self.classes.counts, level).items() if k != "confidence"},
        }


# ---------------------------------------------------------------- the SageMaker contract
def model_fn(model_dir: str | Path) -> LoadedModel:
    """Load model_info.json and the state_dict in model.pth (weights_only) from `model_dir`."""
    model_dir = Path(model_dir)
    info = read_model_info(model_dir / MODEL_INFO_FILE)
    classes = ClassSpec.parse(info["classes"])
    if info.get("labels") is not None and list(info["labels"]) != classes.labels:
        raise ValueError(f"{model_dir / MODEL_INFO_FILE}: labels {info['labels']} do not match "
                         f"classes {info['classes']!r} ({classes.labels})")
    net = load_net(model_dir, info["arch"], classes.num_classes)
    temperature = info.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0 < temperature < 1e3:
        raise ValueError(f"{model_dir / MODEL_INFO_FILE}: temperature must be a number > 0, got {temperature!r}")
    transform = eval_transform(int(info["image_size"]), info.get("mean") or IMAGENET_MEAN,
                               info.get("std") or IMAGENET_STD)
    log.info("loaded %s (%s classes %s, %spx) from %s with handler %s", info["arch"], classes.num_classes,
             classes, info["image_size"], model_dir, __file__)
    runtime = select_runtime(net, model_dir, info, int(info["image_size"]))  # fastest that loads; warmed up
    return LoadedModel(net=net, transform=transform, classes=classes, info=info, runtime=runtime,
                       pixels=eval_pixels(int(info["image_size"])))


def load_net(model_dir: Path, arch: str, num_classes: int) -> torch.nn.Module:
    """The eager net with model_dir's model.pth (a plain state_dict, weights_only), in eval mode."""
    net = build_model(arch, num_classes)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: the model archive has no weights")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k.removeprefix("module."): v for k, v in state.items()}
    net.load_state_dict(state)
    return net.eval()


def input_fn(body: bytes | bytearray | str | None, content_type: str | None) -> Image.Image:
    """Request body -> a decoded RGB image; InferenceError (4xx) for anything else.

    The model's eval transform is applied in predict_fn: input_fn's signature has no model.
    """
    if media_type(content_type) not in IMAGE_CONTENT_TYPES:
        raise InferenceError(415, f"unsupported Content-Type: send the image as {' or '.join(IMAGE_CONTENT_TYPES)}")
    if isinstance(body, str):  # only if a server decoded it as text; an image never is
        raise InferenceError(400, "request body is text, not image bytes")
    data = bytes(body or b"")
    check_payload_size(len(data))
    return decode_image(data)


def predict_fn(data: Image.Image | list[Image.Image] | torch.Tensor,
               model: LoadedModel) -> dict[str, Any] | list[dict[str, Any]]:
    """The answer dict for an image (a list of them for a list of images, or for a batch tensor
    (N, 3, S, S): uint8 pixels from model.pixels, or floats already through the whole eval transform)."""
    if isinstance(data, Image.Image):
        batch = model.pixels(data).unsqueeze(0)
    elif isinstance(data, list):
        batch = torch.stack([model.pixels(img) for img in data])
    else:
        batch = data
    return answer_logits(model, model.forward(batch), single=isinstance(data, Image.Image))


def answer_logits(model: LoadedModel, logits: torch.Tensor, single: bool = False):
    """The answers for a batch's logits (the first alone when `single`)."""
    with torch.inference_mode():
        probs = torch.softmax(logits.float() / model.temperature, dim=1)
    answers = [model.describe(p) for p in probs.tolist()]  # one conversion for the batch: plain floats
    return answers[0] if single else answers


def output_fn(prediction: Any, accept: str | None) -> tuple[str, str]:
    """JSON, the only format served; a client that will not take JSON gets 406."""
    if not accepts_json(accept):
        raise InferenceError(406, f"cannot answer in the Accept type: answers are {JSON_CONTENT_TYPE}")
    return json.dumps(prediction), JSON_CONTENT_TYPE


# ---------------------------------------------------------------- helpers (also used by bincli's server)
def handle_request(model: LoadedModel, body: bytes | bytearray | str | None, content_type: str | None,
                   accept: str | None = None) -> tuple[str, str]:
    """input_fn -> predict_fn -> output_fn, as SageMaker's toolkit chains them."""
    return output_fn(predict_fn(input_fn(body, content_type), model), accept)


def read_model_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a model dir needs {WEIGHTS_FILE} and {MODEL_INFO_FILE}")
    info = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in MODEL_INFO_KEYS if k not in info]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
    return info


def media_type(content_type: str | None) -> str | None:
    """'Image/JPEG; q=1' -> 'image/jpeg'; None stays None."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def accepts_json(accept: str | None) -> bool:
    if not accept or not accept.strip():
        return True
    ranges = {media_type(part) for part in accept.split(",")}
    return bool(ranges & {JSON_CONTENT_TYPE, "application/*", "*/*"})


def check_payload_size(size: int) -> None:
    if size == 0:
        raise InferenceError(400, "empty request body: send the image bytes")
    if size > MAX_PAYLOAD_BYTES:
        raise InferenceError(413, f"payload is over the {MAX_PAYLOAD_BYTES}-byte limit (6 MB)")


def decode_image(data: bytes) -> Image.Image:
    """JPEG/PNG bytes -> a fully decoded RGB image; InferenceError for anything else."""
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise InferenceError(413, f"image has too many pixels (limit {MAX_IMAGE_PIXELS})") from None
    except Exception:  # Pillow raises many types for garbage; none of them is a server error
        raise InferenceError(400, "request body is not a JPEG or PNG image") from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InferenceError(413, f"image is {width}x{height}: over the {MAX_IMAGE_PIXELS}-pixel limit")
    try:
        img.load()
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit/float grayscale: scale to 8 bits
            img = _to_8bit(img)
        return img if img.mode == "RGB" else img.convert("RGB")
    except InferenceError:
        raise
    except Exception:
        raise InferenceError(400, "image data is truncated or corrupt") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    import numpy as np

    arr = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
    return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
