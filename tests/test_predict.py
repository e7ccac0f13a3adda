"""deploy -> predict -> teardown on a real local endpoint process, and predict in-process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from bincli.backends.local.endpoint import deploy, ping, teardown
from bincli.cli import app
from bincli.config import load_config
from bincli.errors import BincliError, DataError, StateError, UsageError
from bincli.state import State
from bincli.steps.predict import InProcessPredictor, collect_images, run_predict
from serving_support import model_tar, sample_images

# Runs the CLI in a fresh interpreter and reports which heavy packages it imported.
PROBE = (
    "import sys\n"
    "from bincli.cli import app\n"
    "try:\n"
    "    app(args=sys.argv[1:], prog_name='bincli')\n"
    "    rc = 0\n"
    "except SystemExit as e:\n"
    "    rc = e.code or 0\n"
    "heavy = sorted(m for m in ('torch', 'torchvision', 'fastapi', 'uvicorn', 'sagemaker', 'onnxruntime',\n"
    "                            'boto3', 'botocore', 'numpy') if m in sys.modules)\n"
    "sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')\n"
    "sys.exit(rc)\n"
)


def bincli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def cfg_for(workdir, **overrides):
    return load_config(None, {"workdir": workdir, "deploy.port": 0, **overrides}, env={}).config


@pytest.fixture(scope="module")
def tar(tmp_path_factory):
    return model_tar(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def local(tar):
    predictor = InProcessPredictor(tar)
    yield predictor
    predictor.close()


@pytest.mark.slow
def test_deploy_predict_update_teardown(tmp_path, tar, local, abid_sample, monkeypatch):
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(server_tmp))  # the system temp folder: the server must not use it
    work = tmp_path / "work"
    cfg = cfg_for(work)
    record = deploy(cfg, model=tar)
    assert record["url"].startswith("http://127.0.0.1:") and ping(record["url"])
    saved = State(work).outputs("deploy")
    assert {k: saved[k] for k in ("name", "url", "pid", "model", "port")} == {
        "name": "bincli-local", "url": record["url"], "pid": record["pid"], "model": str(tar), "port": record["port"]}
    extracted = list((work / "endpoints" / "bincli-local").rglob("model.pth"))
    assert len(extracted) == 1 and list(server_tmp.iterdir()) == []  # inside the workdir, not in TMPDIR

    img = sample_images(abid_sample, 1)[0]
    want = local.invoke(img.read_bytes(), "image/jpeg")
    p = bincli("predict", img, "--json", "-w", work)
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout.splitlines()[0])
    assert row["image"] == str(img)
    assert {k: row[k] for k in want} == want  # the endpoint answers what the in-process model answers
    # predict against an endpoint imports no torch (nor the server stack, boto3 or numpy): a fast cold start
    assert "HEAVY=\n" in p.stderr

    # an order check: a mismatch threshold between the least and the most likely count's probability
    other = min(row["probabilities"], key=row["probabilities"].get)
    cut = (row["probabilities"][other] + row["confidence"]) / 2
    check = ["--set", f"predict.mismatch_threshold={cut}", "--set", "predict.match_threshold=1.0", "-w", work]
    p = bincli("predict", img, "--expected", other, *check)
    assert p.returncode == 1 and f"counted other than the expected {other}" in p.stderr
    p = bincli("predict", img, "--expected", row["count"], "--json", *check)
    assert p.returncode == 0 and json.loads(p.stdout)["verdict"] == "review"  # sure of neither: exit 0 by default
    assert bincli("predict", img, "--expected", row["count"], "--review-exit-code", "1", *check).returncode == 1

    with pytest.raises(BincliError, match="already exists"):
        deploy(cfg, model=tar)

    tar2 = tmp_path / "v2" / "model.tar.gz"  # a new archive for the same name
    tar2.parent.mkdir()
    shutil.copy(tar, tar2)
    updated = deploy(cfg, model=tar2, update=True)
    assert (updated["name"], updated["url"], updated["model"]) == ("bincli-local", record["url"], str(tar2))
    assert updated["pid"] != record["pid"] and not psutil.pid_exists(record["pid"])
    assert httpx.get(f"{updated['url']}/info").json()["model"] == str(tar2)  # the new server serves it
    answer = run_predict(cfg, [img])["results"][0]
    assert {k: answer[k] for k in want} == want

    out = teardown(cfg)
    assert out["stopped"] and not psutil.pid_exists(updated["pid"])
    assert State(work).outputs("deploy") is None
    assert list(server_tmp.iterdir()) == [] and not (work / "endpoints").exists()  # nothing left anywhere
    again = teardown(cfg)
    assert again["removed"] == [] and again["message"].startswith("nothing to remove")
    p = bincli("predict", img, "-w", work)
    assert p.returncode == 1 and "error: no endpoint" in p.stderr


@pytest.mark.slow
def test_foreground_deploy_serves_until_teardown(tmp_path, tar, abid_sample):
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "bincli", "deploy", "--foreground", "--model", str(tar),
                             "--port", "0", "-w", str(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while (State(work).outputs("deploy") or {}).get("pid") != proc.pid:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cfg = cfg_for(work)
        assert run_predict(cfg, sample_images(abid_sample, 1))["failed"] == 0
        assert teardown(cfg)["stopped"]
        assert proc.wait(30) == 0
        assert State(work).outputs("deploy") is None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_deploy_reports_a_server_that_fails_to_start(tmp_path):
    from bincli.artifacts.bundle import package_model
    from serving_support import make_model_dir

    d = make_model_dir(tmp_path / "m")
    (d / "model.pth").write_bytes(b"not a state dict")
    bad = package_model(d, tmp_path / "bad.tar.gz")
    cfg = cfg_for(tmp_path / "work")
    with pytest.raises(BincliError, match="exited while starting") as exc:
        deploy(cfg, model=bad)
    assert "server.log" in exc.value.hint
    assert State(cfg.workdir).outputs("deploy") is None


def test_deploy_refuses_before_starting_anything(tmp_path, tar):
    cfg = cfg_for(tmp_path / "work")
    with pytest.raises(StateError, match="step 'train' has not run"):
        deploy(cfg)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable tar archive"):
        deploy(cfg, model=junk)
    from bincli.backends.local.server import bind

    taken = bind("127.0.0.1", 0)
    taken.listen(1)
    try:
        with pytest.raises(UsageError, match="cannot listen"):
            deploy(cfg_for(tmp_path / "work", **{"deploy.port": taken.getsockname()[1]}), model=tar)
    finally:
        taken.close()
    assert not (tmp_path / "work" / "endpoints").exists()


def _fake_record(proc, **changes):
    ps = psutil.Process(proc.pid)
    record = {"name": "bincli-local", "url": "http://127.0.0.1:9", "port": 9, "host": "127.0.0.1", "model": "m",
              "pid": proc.pid, "pid_started": ps.create_time(), "cmdline": ps.cmdline()}
    record.update(changes)
    return record


def test_teardown_never_signals_a_process_it_did_not_start(tmp_path):
    cfg = cfg_for(tmp_path / "work")
    state = State(cfg.workdir)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for changes in ({"pid_started": 12345.0}, {"cmdline": ["python", "-m", "bincli.backends.local.server"]}):
            state.record("deploy", _fake_record(sleeper, **changes))  # same pid, but not the same process
            out = teardown(cfg)
            assert not out["stopped"] and "left alone" in out["message"]
            assert sleeper.poll() is None
            assert state.outputs("deploy") is None
        state.record("deploy", _fake_record(sleeper))  # the very process: this one it stops
        assert teardown(cfg)["stopped"]
        sleeper.wait(10)  # ends well before its 60 s sleep: teardown stopped it
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_predict_says_when_the_recorded_endpoint_is_down(tmp_path, abid_sample):
    cfg = cfg_for(tmp_path / "work")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    record = _fake_record(gone)
    gone.wait()
    State(cfg.workdir).record("deploy", record)
    with pytest.raises(StateError, match="is not running"):
        run_predict(cfg, sample_images(abid_sample, 1))
    with pytest.raises(StateError, match="no endpoint 'other'"):
        run_predict(cfg, sample_images(abid_sample, 1), endpoint="other")


def test_predict_in_process_through_the_cli(tmp_path, tar, local, abid_sample):
    folder = tmp_path / "bins"
    folder.mkdir()
    images = sample_images(abid_sample, 3)
    for img in images:
        (folder / img.name).write_bytes(img.read_bytes())
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = CliRunner().invoke(app, ["predict", "--model", str(tar), "--json", "-w", str(tmp_path / "w"),
                                      str(folder), str(broken)])
    assert result.exit_code == 1  # one image failed
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(folder / i.name) for i in images] + [str(broken)]
    for row, img in zip(rows, images, strict=False):
        want = local.invoke(img.read_bytes(), "image/jpeg")
        assert {k: row[k] for k in want} == want
    assert rows[-1]["status"] == 400 and rows[-1]["error"] == "request body is not a JPEG or PNG image"
    assert "1 of 4 image(s) failed" in result.stderr


def test_predict_inputs_are_checked(tmp_path, tar):
    with pytest.raises(UsageError, match="no such file or folder"):
        collect_images([tmp_path / "absent.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no \.jpg"):
        collect_images([tmp_path / "empty"])
    img = tmp_path / "x.jpg"
    img.write_bytes(b"x")
    with pytest.raises(UsageError, match="do not combine"):
        run_predict(cfg_for(tmp_path / "w"), [img], endpoint="e", model=tar)
    with pytest.raises(StateError, match="no endpoint: none is deployed"):
        run_predict(cfg_for(tmp_path / "w"), [img])
