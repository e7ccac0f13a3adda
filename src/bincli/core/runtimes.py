"""The runtimes that run the network's forward pass, fastest first; the handler takes the first that loads.

    cuda         the eager net on the GPU (channels_last, TF32 off so that answers agree with the CPU's),
                 where torch sees one (a SageMaker GPU instance: deploy_instance_type ml.g*). Logits come
                 back to the CPU. One device, cuda:0: a multi-GPU instance's TorchServe workers share it.
    onnxruntime  the ONNX graph packaged beside model.pth (model_info.json "graph"), on ONNX Runtime's
                 CPU provider with all graph optimizations. Needs the `onnxruntime` module (bincli[onnx]).
    torchscript  the eager net scripted, frozen and optimize_for_inference'd (conv+bn folded, MKLDNN
                 layouts) at load: needs nothing but torch. Built here rather than shipped because a
                 TorchScript file saved by the training side's torch need not load in the serving
                 container's older torch (SageMaker's PyTorch image).
    eager        the nn.Module in channels_last: always works, the last resort.

Measured on 2 CPUs, resnet18 at 224 px (issue 14): eager 26-28 ms / 41 img/s at batch 8, channels_last
24 ms / 50 img/s, TorchScript frozen 22 ms / 58 img/s, ONNX Runtime 17 ms / 58 img/s.

Every runtime takes what the request path makes, uint8 pixels (N, 3, S, S) from presets.eval_pixels, and
runs the rest of the ONE eval preset (presets.eval_normalize: to float, normalize) itself: in the ONNX
graph (exported with it, artifacts/export.py), else in torch before the net. So serving has no torch op
per request before the forward when ONNX Runtime serves, and the answers are the eval preset's.

A runtime is kept only if it loads, runs and agrees with the eager net on a probe batch (logits within
PROBE_TOLERANCE): a missing, corrupt or mismatched graph falls through to the next runtime, with one
log line saying why. BINCLI_RUNTIME (e.g. "torchscript,eager") narrows the order, for tests and benches.
onnxruntime is imported lazily: the core needs only torch where it runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .contract import GRAPH_KEY, IMAGENET_MEAN, IMAGENET_STD
from .presets import eval_normalize

log = logging.getLogger(__name__)

RUNTIMES = ("cuda", "onnxruntime", "torchscript", "eager")  # the fixed order: fastest first
RUNTIME_ENV = "BINCLI_RUNTIME"
PROBE_TOLERANCE = 1e-3          # logits; probabilities then agree far inside the 1e-4 the answers promise
# ONNX Runtime's pool threads spin while a forward runs (fast hand-offs between its ops), but not after
# it, when the server's decoding and HTTP need the cores (2 CPUs, loaded machine, one client: 55 ms of
# server CPU per request against 59 with ORT's default, the same p50; turning spinning off altogether
# saved more CPU there; ORT spins by default for a faster forward, not measured quiet here).
ORT_CONFIG = {"session.force_spinning_stop": "1"}


class Runtime:
    """A forward pass: uint8 pixels (N, 3, S, S) -> float logits (N, classes). Thread-safe."""

    name = "runtime"

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelNet(torch.nn.Module):
    """The net behind the eval preset's second half: what the ONNX graph holds (artifacts/export.py)."""

    def __init__(self, net: torch.nn.Module, normalize: Any):
        super().__init__()
        self.net, self.normalize = net, normalize

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(pixels))


def normalize_of(info: dict[str, Any]) -> Any:
    """The eval preset's second half with the model's mean and std (model_info.json)."""
    return eval_normalize(info.get("mean") or IMAGENET_MEAN, info.get("std") or IMAGENET_STD)


class EagerRuntime(Runtime):
    """The nn.Module in channels_last on `device`: "eager" on the CPU, "cuda" on the GPU."""

    name = "eager"

    def __init__(self, net: torch.nn.Module, normalize: Any, device: str = "cpu"):
        self.device = torch.device(device)
        if self.device.type != "cpu":
            import copy

            self.name = self.device.type
            # TF32, on by default for cuDNN convolutions, moves logits by ~1e-3: answers must be the CPU's to 1e-4.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            net = copy.deepcopy(net)  # the reference (and the runtimes after this one) keep the CPU net
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        self.normalize = normalize

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = self.normalize(pixels.to(self.device, non_blocking=True))
            return self.net(x.contiguous(memory_format=torch.channels_last)).float().cpu()


class TorchScriptRuntime(Runtime):
    name = "torchscript"

    def __init__(self, net: torch.nn.Module, normalize: Any):
        import copy
        import warnings

        self.normalize = normalize

        # freeze folds the weights into the graph: a copy, so `net` stays as it was. torch 2.14 marks
        # TorchScript deprecated (FutureWarning): it still runs, and it is what the container's torch has.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            frozen = torch.jit.freeze(torch.jit.script(copy.deepcopy(net).eval()))
            self.graph = torch.jit.optimize_for_inference(frozen)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.graph(self.normalize(pixels)).float()


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: Path, normalize: Any):
        # Read once, at import: without it onnxruntime 1.32 writes a telemetry session file (.ses) into
        # TMPDIR, outside the folders a server may write to.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()  # as torch would use: one knob for both
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        for key, value in ORT_CONFIG.items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph_input = self.session.get_inputs()[0]
        self.input = graph_input.name
        # Graphs exported before the preset's second half moved into them take normalized floats.
        self.normalize = None if graph_input.type == "tensor(uint8)" else normalize

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.normalize is not None:
            with torch.inference_mode():
                pixels = self.normalize(pixels)
        x = pixels.detach().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: x})[0])


def available() -> tuple[str, ...]:
    """The runtimes this process can try, in the fixed order (BINCLI_RUNTIME may narrow it)."""
    wanted = os.environ.get(RUNTIME_ENV, "").strip()
    order = [r.strip() for r in wanted.split(",") if r.strip()] if wanted else list(RUNTIMES)
    unknown = [r for r in order if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"{RUNTIME_ENV}={wanted!r}: unknown runtime {unknown[0]!r}; use some of "
                         f"{', '.join(RUNTIMES)} separated by commas")
    return tuple(r for r in order if _usable(r))


def _usable(name: str) -> bool:
    """Whether this process can try `name`: its module is importable, or for cuda, torch sees a GPU."""
    if name == "onnxruntime":
        return importlib.util.find_spec("onnxruntime") is not None
    if name == "cuda":
        return torch.cuda.is_available()
    return True


def graph_path(model_dir: Path, info: dict[str, Any]) -> Path | None:
    """The ONNX graph model_info.json names, if any (a plain file name inside model_dir)."""
    graph = info.get(GRAPH_KEY)
    if not isinstance(graph, dict) or graph.get("format") != "onnx":
        return None
    name = graph.get("file")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    return Path(model_dir) / name


def build(name: str, net: torch.nn.Module, model_dir: Path, info: dict[str, Any]) -> Runtime:
    normalize = normalize_of(info)
    if name == "onnxruntime":
        path = graph_path(model_dir, info)
        if path is None:
            raise FileNotFoundError("model_info.json names no ONNX graph (an archive packaged before graphs)")
        if not path.is_file():
            raise FileNotFoundError(f"{path.name} is missing")
        return OnnxRuntime(path, normalize)
    if name == "torchscript":
        return TorchScriptRuntime(net, normalize)
    if name == "cuda":
        return EagerRuntime(net, normalize, device="cuda")
    return EagerRuntime(net, normalize)


def select(net: torch.nn.Module, model_dir: Path, info: dict[str, Any], image_size: int,
           order: Sequence[str] | None = None) -> Runtime:
    """The first runtime in `order` that loads and agrees with `net` on a probe batch, warmed up.

    `net` is the eager model with its weights (the reference; eager channels_last is the last resort)."""
    order = tuple(order) if order is not None else available()
    probe = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, image_size, image_size), dtype=torch.uint8, generator=probe)
    with torch.inference_mode():
        reference = net.eval()(normalize_of(info)(x)).float()
    skipped = []
    for name in order:
        t0 = time.perf_counter()
        try:
            runtime = build(name, net, model_dir, info)
            out = runtime(x)
            if out.shape != reference.shape:
                raise ValueError(f"its logits are {tuple(out.shape)}, the weights' {tuple(reference.shape)}")
            diff = float((out - reference).abs().max())
            if not diff <= PROBE_TOLERANCE:
                raise ValueError(f"its logits differ from the weights' by {diff:.2g} (over {PROBE_TOLERANCE:g})")
            warm_up(runtime, image_size)
        except Exception as exc:  # any failure means: try the next one
            skipped.append(f"{name} ({_one_line(exc)})")
            log.warning("runtime %s not used: %s", name, _one_line(exc))
            continue
        log.info("runtime %s chosen (order %s%s; ready in %.2fs)", name, ",".join(order),
                 f"; skipped {', '.join(skipped)}" if skipped else "", time.perf_counter() - t0)
        return runtime
    log.warning("no runtime of %s loaded; serving eager", ",".join(order))
    return warm_up(EagerRuntime(net, normalize_of(info)), image_size)


def warm_up(runtime: Runtime, image_size: int, batches: Sequence[int] = (1, 1, 8)) -> Runtime:
    """A few passes at the sizes served, so the first requests pay for no allocator/kernel/graph setup."""
    for n in batches:
        runtime(torch.zeros(n, 3, image_size, image_size, dtype=torch.uint8))
    return runtime


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."

