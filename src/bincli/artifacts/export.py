"""The inference graph packaged beside model.pth: the net exported to ONNX (what core.runtimes serves first).

Why ONNX, and this exporter (measured on 2 CPUs, resnet18, issue 14):
  - ONNX Runtime is the fastest runtime (17 ms at batch 1 against 22 ms for frozen TorchScript and
    26-28 ms eager), and an ONNX file at opset 17 loads in any onnxruntime of the last years, while a
    TorchScript file need not load in an older torch (SageMaker's PyTorch image); TorchScript is built
    at load instead (core/runtimes.py), which needs no file.
  - torch.onnx's TorchScript-based exporter (dynamo=False): 1.2 s for resnet18, one self-contained
    file, needs only the `onnx` package. The torch.export-based one took 7.7 s, needs onnxscript too,
    writes the weights to a second file, and served no faster.
The graph holds the eval preset's second half too (presets.eval_normalize: uint8 -> float, normalize,
taken from the one preset, not rewritten): it takes uint8 pixels (N, 3, S, S), what presets.eval_pixels
makes, so the request path runs no torch op between the resize and the forward (about 0.4 ms of torch
per image there, ~0.05 ms in the graph). model_info.json's graph record says so ("input_dtype": "uint8");
graphs exported before took normalized floats, and core/runtimes.py still serves them.
It runs where bincli packages the model (both backends package locally), never in a container.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from bincli.core.contract import MODEL_INFO_FILE, ONNX_INPUT, ONNX_OUTPUT

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_OPSET = 17  # onnxruntime >= 1.13 (2022) runs it


def export_onnx(model_dir: Path, dest: Path) -> dict[str, Any]:
    """Export model_dir's net (model.pth + model_info.json) to dest/model.onnx, checked against the eager
    net; returns the model_info.json "graph" record. Raises on any failure (the caller decides)."""
    import warnings

    import torch

    from bincli.core.classes import ClassSpec
    from bincli.core.inference import load_net
    from bincli.core.runtimes import PixelNet, normalize_of

    model_dir, dest = Path(model_dir), Path(dest)
    info = json.loads((model_dir / MODEL_INFO_FILE).read_text(encoding="utf-8"))
    net = load_net(model_dir, info["arch"], ClassSpec.parse(info["classes"]).num_classes)
    size = int(info["image_size"])
    pixel_net = PixelNet(net, normalize_of(info)).eval()
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    path = dest / ONNX_FILE
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notices about its successor
        torch.onnx.export(pixel_net, (x,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
                          dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}})
    seconds = time.perf_counter() - t0
    _check(path, pixel_net, x)
    log.info("exported %s (%s, %.1f MB) in %.1fs", path.name, info["arch"], path.stat().st_size / 1e6, seconds)
    return {"format": "onnx", "file": ONNX_FILE, "opset": ONNX_OPSET, "input": ONNX_INPUT, "output": ONNX_OUTPUT,
            "input_dtype": "uint8", "dynamic_batch": True,
            "exporter": f"torch {torch.__version__} torch.onnx (dynamo=False)"}


def _check(path: Path, pixel_net, x) -> None:
    """The graph must hold the model: the ONNX checker passes, and where onnxruntime is installed its
    logits match the eager net's (the handler checks again at load, where it runs)."""
    import importlib.util

    import onnx
    import torch

    onnx.checker.check_model(str(path))
    if importlib.util.find_spec("onnxruntime") is None:
        return
    from bincli.core.runtimes import PROBE_TOLERANCE, OnnxRuntime

    with torch.inference_mode():
        diff = float((OnnxRuntime(path, pixel_net.normalize)(x) - pixel_net(x)).abs().max())
    if not diff <= PROBE_TOLERANCE:
        raise ValueError(f"the exported graph's logits differ from the weights' by {diff:.2g}")
