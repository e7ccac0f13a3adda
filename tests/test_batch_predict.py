"""`bincli predict ... --out results.jsonl`: many photos streamed to a file, resumed after a kill."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from bincli.cli import app
from bincli.steps.answering import answers
from helpers import make_bin_image
from serving_support import ServerThread, model, model_tar  # noqa: F401 (model: a module fixture)

runner = CliRunner()


@pytest.fixture(scope="module")
def tar(tmp_path_factory):
    return model_tar(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """24 synthetic bin photos (counts 1-5) in one folder."""
    folder = tmp_path_factory.mktemp("photos")
    for i in range(24):
        make_bin_image(folder / f"bin-{i:03d}.jpg", 1 + i % 5, seed=i)
    return folder


@pytest.fixture(scope="module")
def endpoint(model):  # noqa: F811
    """The test model behind a local endpoint for the module (no model load per command)."""
    with ServerThread(model, name="bincli-local") as srv:  # the name a workspace without a deploy calls
        yield srv.url


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def predict(*args, cwd=None):
    return runner.invoke(app, ["predict", *map(str, args), "-w", str(cwd or os.getcwd())])


def test_answers_every_photo_once_and_a_rerun_sends_nothing(tar, photos, in_tmp):
    out = in_tmp / "results.jsonl"
    r = predict(photos, "--model", tar, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["n"], summary["answered"], summary["failed"], summary["earlier"]) == (24, 24, 0, 0)
    rows = lines(out)
    assert sorted(row["image"] for row in rows) == sorted(str(p) for p in photos.glob("*.jpg"))
    assert all(row["count"] in (1, 2, 3, 4, 5) and "expected_count" in row for row in rows)
    before = out.read_bytes()

    r = predict(photos, "--model", tar, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    again = json.loads(r.stdout)
    assert (again["answered"], again["earlier"], again["source"]) == (0, 24, None)  # the model was not even loaded
    assert out.read_bytes() == before


def test_the_same_answers_as_predict_json(tar, photos, in_tmp):
    """--out writes what `predict --json` prints (in-process: batched there, one at a time here)."""
    some = sorted(photos.glob("*.jpg"))[:3]
    r = predict(*some, "--model", tar, "--json")
    assert r.exit_code == 0, r.output
    single = {row["image"]: row for row in map(json.loads, r.stdout.splitlines())}
    assert predict(*some, "--model", tar, "--out", in_tmp / "o.jsonl").exit_code == 0
    for row in lines(in_tmp / "o.jsonl"):
        one = single[row["image"]]
        assert row["count"] == one["count"] and row["count_range"] == one["count_range"]
        assert row["probabilities"] == pytest.approx(one["probabilities"], abs=1e-5)


def test_a_rerun_drops_errors_and_torn_lines_and_asks_those_photos_again(endpoint, photos, in_tmp):
    out = in_tmp / "results.jsonl"
    assert predict(photos, "--endpoint-url", endpoint, "--out", out).exit_code == 0
    rows = lines(out)
    kept, lost = rows[:10], rows[10:]
    failed = {"image": lost[0]["image"], "error": "endpoint timed out", "status": None}
    torn = json.dumps(lost[1])[:40]  # a kill while the line was being written
    out.write_text("".join(json.dumps(r) + "\n" for r in kept) + json.dumps(failed) + "\n" + "not json\n" + torn)

    r = predict(photos, "--endpoint-url", endpoint, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["earlier"], summary["answered"]) == (10, 14)
    after = lines(out)
    assert [row["image"] for row in after[:10]] == [row["image"] for row in kept]
    assert sorted(row["image"] for row in after) == sorted(row["image"] for row in rows)  # each photo once
    assert not any("error" in row for row in after)


def test_a_list_file_names_the_photos(endpoint, photos, in_tmp):
    listed = sorted(photos.glob("*.jpg"))[:5]
    (in_tmp / "night.txt").write_text("# tonight's photos\n" + "\n".join(map(str, listed)) + "\n\n")
    r = predict(in_tmp / "night.txt", "--endpoint-url", endpoint, "--out", in_tmp / "o.jsonl", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(row["image"] for row in lines(in_tmp / "o.jsonl")) == [str(p) for p in listed]  # as they came
    (in_tmp / "empty.txt").write_text("# nothing\n")
    r = predict(in_tmp / "empty.txt", "--endpoint-url", endpoint, "--out", in_tmp / "o.jsonl")
    assert r.exit_code == 2 and "empty.txt: the list names no photos" in r.stderr


def test_one_writer_per_file(tar, photos, in_tmp):
    out = in_tmp / "results.jsonl"
    with open(out, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        r = predict(photos, "--model", tar, "--out", out)
    assert r.exit_code == 2 and "another bincli predict is writing to it" in r.stderr
    assert out.read_text() == ""
    r = predict(photos, "--model", tar, "--out", in_tmp)
    assert r.exit_code == 2 and "is a folder" in r.stderr


def test_through_an_endpoint_with_a_failed_photo_and_an_order_check(endpoint, photos, in_tmp):
    good = sorted(photos.glob("*.jpg"))[:6]
    bad = in_tmp / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    r = predict(*good, bad, "--endpoint-url", endpoint, "--out", in_tmp / "o.jsonl", "--json",
                "--expected", "3", "--concurrency", "3")
    assert r.exit_code == 1, (r.stdout, r.stderr, r.exception)  # a photo failed
    summary = json.loads(r.stdout)
    assert (summary["n"], summary["answered"], summary["failed"]) == (7, 6, 1)
    assert summary["mismatched"] + summary["review"] <= 6
    rows = {row["image"]: row for row in lines(in_tmp / "o.jsonl")}
    assert rows[str(bad)]["status"] == 400 and all("verdict" in rows[str(p)] for p in good)
    assert "1 of 7 image(s) failed" in r.stderr


def test_requests_in_flight_never_pass_the_concurrency(tmp_path):
    """answers() keeps `concurrency` requests going and queues nothing more: memory stays flat."""
    paths = [tmp_path / f"{i}.jpg" for i in range(200)]
    for p in paths:
        p.write_bytes(b"x")
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Counting:
        def invoke(self, body, content_type):
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.001)  # the request's own work, not a wait for the test
            with lock:
                state["now"] -= 1
            return {"count": 1}

    got = dict(answers(Counting(), paths, concurrency=4))
    assert sorted(got) == list(range(200)) and state["most"] <= 4


@pytest.mark.slow
def test_ctrl_c_keeps_what_was_answered_and_the_same_command_resumes(tar, photos, in_tmp):
    many = in_tmp / "many"
    many.mkdir()
    for i in range(400):  # the same photos under many names: enough to interrupt part-way
        os.link(sorted(photos.glob("*.jpg"))[i % 24], many / f"{i:05d}.jpg")
    out = in_tmp / "results.jsonl"
    cmd = [sys.executable, "-m", "bincli", "predict", str(many), "--model", str(tar), "--out", str(out),
           "-w", str(in_tmp)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") >= 16):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)  # polling interval of a wait on the file, not a wait for time to pass
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command again to go on where it stopped" in stderr
    answered = len(lines(out))
    assert 16 <= answered < 400

    r = predict(many, "--model", tar, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["earlier"] == answered and summary["answered"] == 400 - answered
    assert sorted(row["image"] for row in lines(out)) == sorted(str(p) for p in many.iterdir())
    shutil.rmtree(many)


def test_an_s3_prefix_is_a_batch_job_of_backend_sagemaker_and_needs_out(in_tmp):
    r = predict("s3://bucket/night/", "--out", in_tmp / "o.jsonl")
    assert r.exit_code == 2 and "predict s3://: not available on backend local (available on: sagemaker)" in r.stderr
    r = predict("s3://bucket/night/")
    assert r.exit_code == 2 and "goes with --out results.jsonl" in r.stderr
    r = predict("s3://bucket/night/", in_tmp, "--out", in_tmp / "o.jsonl")
    assert r.exit_code == 2 and "give it alone" in r.stderr
