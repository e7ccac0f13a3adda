"""Conformance with SageMaker's REAL PyTorch serving stack.

The container's own code (sagemaker-pytorch-inference's serving.main(), sagemaker-inference's
Transformer, TorchServe's Java frontend and Python worker) serves our model.tar.gz on 127.0.0.1,
the way SageMaker would from /opt/ml/model (recipe: ../shared/SAGEMAKER-SERVING.md). The same good
and bad requests go to it and to bincli's own server; both must answer the same statuses and the
same counts. The stack is installed by the `test` extra; without Java or those packages the
module skips and says why.

One TorchServe per machine (its launcher refuses a second ModelServer process): the module
starts one per session, serialised across pytest sessions by a lock file, with one worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from bincli.artifacts.loader import load_model
from bincli.artifacts.modeltar import extract_model
from bincli.backends.local.server import bind
from bincli.core.contract import MAX_PAYLOAD_BYTES
from serving_support import ServerThread, bad_requests, model_tar, sample_images

# One TorchServe per machine: `make test` runs a module's tests on one xdist worker (--dist loadfile).
pytestmark = [pytest.mark.serving_stack, pytest.mark.slow]

LAUNCHER = (
    "import sys\n"
    "from sagemaker_pytorch_serving_container import torchserve, serving\n"
    "torchserve.TS_CONFIG_FILE = sys.argv[1]  # instead of its hard-coded /etc path\n"
    "serving.main()\n"
)
LOCK_FILE = Path(tempfile.gettempdir()) / "bincli-torchserve.lock"
TORCHSERVE_MAX_REQUEST = 6_553_500  # TorchServe's own max_request_size: above it the frontend answers 413


def _missing() -> str | None:
    bin_dir = os.path.dirname(sys.executable)
    if not shutil.which("java"):
        return "java not found (TorchServe's frontend needs Java 11+)"
    for module in ("sagemaker_pytorch_serving_container", "sagemaker_inference", "ts", "yaml", "pkg_resources"):
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed (pip install -e '.[test]')"
    if not shutil.which("torchserve", path=bin_dir + os.pathsep + os.environ.get("PATH", "")):
        return "torchserve CLI not found"
    return None


def _free_port() -> int:
    sock = bind("127.0.0.1", 0)
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


@contextlib.contextmanager
def _machine_lock(timeout: float = 600):
    with open(LOCK_FILE, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"another session holds {LOCK_FILE}"
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="module")
def tar(tmp_path_factory):
    return model_tar(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def sagemaker_stack(tar, tmp_path_factory):
    """Base URL of TorchServe serving `tar` through SageMaker's PyTorch inference toolkit."""
    reason = _missing()
    if reason:
        pytest.skip(f"SageMaker serving stack unavailable: {reason}")
    root = tmp_path_factory.mktemp("sagemaker")
    model_dir = extract_model(tar, root / "ml" / "model")  # what SageMaker does into /opt/ml/model
    assert (model_dir / "code" / "inference.py").is_file()
    work, tmp = root / "work", root / "tmp"
    work.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    with _machine_lock():
        port, metrics, grpc_i, grpc_m = (_free_port() for _ in range(4))
        env.update(
            PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),  # the torchserve CLI
            SAGEMAKER_BASE_DIR=str(root / "ml"), SAGEMAKER_PROGRAM="inference.py",
            SAGEMAKER_BIND_TO_PORT=str(port), SAGEMAKER_MODEL_SERVER_WORKERS="1",
            TS_INFERENCE_ADDRESS=f"http://127.0.0.1:{port}", TS_MANAGEMENT_ADDRESS=f"http://127.0.0.1:{port}",
            TS_METRICS_ADDRESS=f"http://127.0.0.1:{metrics}",
            TS_GRPC_INFERENCE_PORT=str(grpc_i), TS_GRPC_MANAGEMENT_PORT=str(grpc_m),
            TMPDIR=str(tmp), TEMP=str(tmp), LOG_LOCATION=str(work / "logs"), METRICS_LOCATION=str(work / "logs"),
            # As in SageMaker's PyTorch image, which has no onnxruntime: the handler must pick TorchScript.
            BINCLI_RUNTIME="torchscript,eager",
        )
        log_path = root / "serve.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(work / "ts.properties")], cwd=work,
                                    env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:  # /ping says Healthy before the model is loaded: wait for a READY worker
                tail = log_path.read_text(errors="replace")[-3000:]
                assert proc.poll() is None, f"the SageMaker stack exited:\n{tail}"
                assert time.monotonic() < deadline, f"the SageMaker stack did not get ready:\n{tail}"
                try:
                    workers = httpx.get(f"{url}/models/model", timeout=2).json()[0]["workers"]
                    if workers and all(w["status"] == "READY" for w in workers):
                        break
                except (httpx.HTTPError, ValueError, KeyError, IndexError):
                    pass
                time.sleep(0.2)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)  # the launcher forwards it to the Java frontend
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers (java, worker) share the process group
            proc.wait()


@pytest.fixture(scope="module")
def bincli_server(tar):
    model, tmp = load_model(tar)
    with ServerThread(model) as srv:
        yield srv.url
    shutil.rmtree(tmp, ignore_errors=True)


def post(url: str, body: bytes, content_type: str | None, accept: str | None = None) -> httpx.Response:
    headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
    return httpx.post(f"{url}/invocations", content=body, headers=headers, timeout=60)


def test_real_jpegs_get_the_same_answer(sagemaker_stack, bincli_server, abid_sample):
    for path in sample_images(abid_sample, 4):
        body = path.read_bytes()
        theirs, ours = post(sagemaker_stack, body, "image/jpeg"), post(bincli_server, body, "image/jpeg")
        assert (theirs.status_code, ours.status_code) == (200, 200), theirs.text[:500]
        assert theirs.headers["content-type"] == ours.headers["content-type"] == "application/json"
        a, b = theirs.json(), ours.json()
        assert (a["count"], a["label"]) == (b["count"], b["label"]), path.name
        assert list(a["probabilities"]) == list(b["probabilities"])
        assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=1e-4)
        # the count-aware fields (core/counting.py) come back from the real stack too
        assert set(a) == set(b) >= {"expected_count", "median_count", "count_range", "confidence"}
        assert (a["median_count"], a["count_range"]) == (b["median_count"], b["count_range"]), path.name
        assert a["expected_count"] == pytest.approx(b["expected_count"], abs=1e-4)


def test_bad_inputs_get_the_same_4xx(sagemaker_stack, bincli_server, abid_sample):
    jpeg = sample_images(abid_sample, 1)[0].read_bytes()
    cases = [(case, body, ctype, None, status) for case, body, ctype, status in bad_requests(jpeg)]
    cases += [
        ("accept-csv", jpeg, "image/jpeg", "text/csv", 406),
        ("over-torchserve-limit", jpeg + b"\0" * (TORCHSERVE_MAX_REQUEST + 1 - len(jpeg)), "image/jpeg", None, 413),
    ]
    assert MAX_PAYLOAD_BYTES < TORCHSERVE_MAX_REQUEST  # over-6mb reaches the handler in both stacks
    seen = {}
    for case, body, ctype, accept, status in cases:
        theirs, ours = post(sagemaker_stack, body, ctype, accept), post(bincli_server, body, ctype, accept)
        seen[case] = (theirs.status_code, ours.status_code)
        assert seen[case] == (status, status), (case, theirs.text[:300])
        if case != "over-torchserve-limit":  # that one never reaches the handler in TorchServe
            assert theirs.text.startswith(ours.json()["error"]), case  # same message (then a traceback)
    for url in (sagemaker_stack, bincli_server):  # both still serve
        assert httpx.get(f"{url}/ping", timeout=5).status_code == 200
    assert post(sagemaker_stack, jpeg, "image/jpeg").status_code == 200


def test_the_stack_ran_the_handler_bundled_in_model_tar(sagemaker_stack, tmp_path_factory):
    # model_fn logs its own file: in the container it must be the copy in model.tar.gz's code/,
    # not an installed bincli (the container has none).
    logs = "".join(p.read_text(errors="replace")
                   for p in Path(tmp_path_factory.getbasetemp()).glob("sagemaker*/work/logs/*.log"))
    handlers = re.findall(r"with handler (\S+)", logs)
    assert handlers, logs[-2000:]
    assert all(h.endswith("/code/bincli/core/inference.py") for h in handlers), handlers


def test_the_stack_serves_the_optimized_graph(sagemaker_stack, tmp_path_factory):
    # Without onnxruntime (SageMaker's PyTorch image) the handler serves frozen TorchScript, not eager;
    # test_real_jpegs_get_the_same_answer compares its answers with bincli's server (ONNX Runtime if installed).
    logs = "".join(p.read_text(errors="replace")
                   for p in Path(tmp_path_factory.getbasetemp()).glob("sagemaker*/work/logs/*.log"))
    chosen = re.findall(r"runtime (\S+) chosen", logs)
    assert chosen and set(chosen) == {"torchscript"}, logs[-2000:]
