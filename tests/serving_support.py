"""Shared by the serving tests (test_inference*, test_serve*, test_predict*, test_serving_stack*):
a small untrained model packaged as model.tar.gz, bad request bodies, and a real HTTP server in a
thread. Not a test module itself."""

from __future__ import annotations

import io
import json
import shutil
import struct
import threading
import zlib
from pathlib import Path

import pytest

from bincli.artifacts.bundle import package_model
from bincli.core.classes import ClassSpec
from bincli.core.contract import IMAGENET_MEAN, IMAGENET_STD, MAX_PAYLOAD_BYTES, MODEL_INFO_FILE, WEIGHTS_FILE

IMAGE_SIZE = 64  # small input: fast on 2 CPUs; resizing any size to it is part of what is tested


def make_model_dir(dest: Path, image_size: int = IMAGE_SIZE, classes: str = "1-5", seed: int = 0) -> Path:
    """model.pth (an untrained resnet18's state_dict) + model_info.json, the data contract."""
    import torch

    from bincli.core.model import build_model

    spec = ClassSpec.parse(classes)
    torch.manual_seed(seed)
    net = build_model("resnet18", spec.num_classes)
    dest.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), dest / WEIGHTS_FILE)
    info = {"arch": "resnet18", "classes": str(spec), "labels": spec.labels, "counts": spec.counts,
            "image_size": image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "metrics": {}}
    (dest / MODEL_INFO_FILE).write_text(json.dumps(info))
    return dest


def model_tar(base: Path, image_size: int = IMAGE_SIZE, classes: str = "1-5", seed: int = 0) -> Path:
    """A packaged model.tar.gz under `base` (pytest's session temp dir), built once per session."""
    root = base / f"model-{classes}-{image_size}-{seed}"
    tar = root / "model.tar.gz"
    if not tar.is_file():
        package_model(make_model_dir(root / "dir", image_size, classes, seed), tar)
    return tar


def sample_images(sample_dir: Path, n: int = 8) -> list[Path]:
    """The first n real ABID JPEGs of the sample (sorted by id)."""
    return sorted((sample_dir / "images").glob("*.jpg"))[:n]


# ---------------------------------------------------------------- request bodies
def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds (almost) no data: a decompression-bomb probe."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def bad_requests(jpeg: bytes) -> list[tuple[str, bytes, str | None, int]]:
    """(case id, body, Content-Type, expected status) for every input the handler must refuse."""
    from PIL import Image

    gif = encode(Image.new("RGB", (8, 8), "red"), "GIF")
    return [
        ("empty-body", b"", "image/jpeg", 400),
        ("text-as-jpeg", b"this is not an image", "image/jpeg", 400),
        ("gif-as-x-image", gif, "application/x-image", 400),
        ("truncated-jpeg", jpeg[: len(jpeg) // 3], "image/jpeg", 400),
        ("wrong-content-type", jpeg, "text/plain", 415),
        ("json-content-type", b'{"image": "x"}', "application/json", 415),
        ("no-content-type", jpeg, None, 415),
        ("over-6mb", jpeg + b"\0" * (MAX_PAYLOAD_BYTES + 1 - len(jpeg)), "image/jpeg", 413),
        ("bomb-50mp", png_header_only(10_000, 5_000), "image/png", 413),
        ("bomb-huge", png_header_only(60_000, 60_000), "image/png", 413),
    ]


# ---------------------------------------------------------------- a real server in a thread
class ServerThread:
    """bincli's endpoint app served by uvicorn on host:port (127.0.0.1:<free port>), in a background thread, with the
    server's own protocol and limits (`limits`: DeployConfig's body_timeout, keep_alive_timeout, max_connections)."""

    def __init__(self, model, name: str = "bincli-test", threads: int = 4, host: str = "127.0.0.1", port: int = 0,
                 **limits):
        from bincli.backends.local.server import bind, create_app, make_server, settings, url_of

        self.name = name
        self.settings = settings(name=name, threads=threads, **limits)
        self.app = create_app(model, self.settings)
        self.sock = bind(host, port)
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.url = url_of(host, self.port)
        self.server = make_server(self.app, self.settings)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:  # poll the condition, with a deadline
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


# ---------------------------------------------------------------- fixtures: `from serving_support import model, server`
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The loaded test model (model_fn of model_tar's archive), once per module."""
    from bincli.artifacts.loader import load_model

    loaded, tmp = load_model(model_tar(tmp_path_factory.getbasetemp()))
    yield loaded
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def server(model):
    """`model` served by a ServerThread named bincli-test, once per module."""
    with ServerThread(model, name="bincli-test") as srv:
        yield srv


def held_by(gate: threading.Event, model):
    """`model` with its forward by the eager net, which first waits for `gate` (a request held in the
    handler for as long as a test needs)."""
    import dataclasses

    import torch

    class GatedNet(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            assert gate.wait(30)
            return self.net(x)

    return dataclasses.replace(model, net=GatedNet(model.net), runtime=None)
