"""`bincli download` against real local servers: the ABID mirror (moto S3 with the sample under
the real keys, with a missing and a truncated image) and a flaky HTTP server for retries."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import DownloadConfig
from bincli.data import abid
from bincli.data.download import DownloadFailed, run_download
from bincli.errors import UsageError
from bincli.progress import Progress
from bincli.state import State
from conftest import ABID_MIRROR, ABID_SAMPLE

runner = CliRunner()
MISSING = "00048"  # count 1: the mirror lists its metadata but serves no image
CORRUPT = "00025"  # count 2: the mirror serves the first half of its JPEG
BINCLI = Path(sys.executable).with_name("bincli")


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited early with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """The sample served under the real ABID keys, once for this module (seeding takes seconds)."""
    if not ABID_MIRROR.is_file() or not (ABID_SAMPLE / "images").is_dir():
        pytest.skip(f"ABID mirror or sample not found under {ABID_MIRROR.parent.parent}")
    url_file = tmp_path_factory.mktemp("mirror") / "url"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BINCLI_"))}
    proc = subprocess.Popen([sys.executable, str(ABID_MIRROR), "--data", str(ABID_SAMPLE), "--port", "0",
                             "--url-file", str(url_file), "--missing-image", MISSING, "--corrupt-image", CORRUPT],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = _wait_for(lambda: url_file.is_file() and url_file.read_text().strip(), 120, "the mirror", proc)
        labels = {p.stem: abid.label_of(json.loads(p.read_bytes())) for p in (ABID_SAMPLE / "metadata").glob("*.json")}
        yield SimpleNamespace(url=url, sample=ABID_SAMPLE, labels=labels,
                              good=sorted(i for i in labels if i not in {MISSING, CORRUPT}))
    finally:
        proc.kill()
        proc.wait()


def _cfg(mirror, **kw) -> DownloadConfig:
    return DownloadConfig(endpoint_url=mirror.url, **kw)


def _ids_file(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("# a comment\n" + "\n".join(ids) + "\n\n")
    return path


def _assert_identical(mirror, data: Path, ids: list[str]) -> None:
    for i in ids:
        assert (data / "images" / f"{i}.jpg").read_bytes() == (mirror.sample / "images" / f"{i}.jpg").read_bytes(), i
        assert (data / "metadata" / f"{i}.json").read_bytes() == \
               (mirror.sample / "metadata" / f"{i}.json").read_bytes(), i


# ---------------------------------------------------------------- ids, bytes, reruns
def test_download_is_byte_identical_and_a_rerun_fetches_only_what_is_missing_or_bad(mirror, tmp_path):
    ids = mirror.good[::4][:300]
    work = tmp_path / "w"
    out = run_download(_cfg(mirror, ids_file=_ids_file(tmp_path, ids)), work, progress=False)

    data = Path(out["data_dir"])
    assert (out["images"], out["failed"], out["fetched"]) == (300, 0, 300)
    assert out["requests"] == {"image": 300, "metadata": 300}
    _assert_identical(mirror, data, ids)
    assert sorted(p.stem for p in (data / "images").iterdir()) == sorted(ids)  # nothing else, no temp files
    assert (data / "download-ids.txt").read_text().split() == ids
    assert sum(out["counts"].values()) == 300 and out["counts"]["1"] == sum(mirror.labels[i] == 1 for i in ids)
    recorded = State(work).outputs("download")
    assert recorded["data_dir"] == str(data) == str((work / "data").resolve()) and recorded["images"] == 300

    again = run_download(_cfg(mirror, ids_file=_ids_file(tmp_path, ids)), work, progress=False)
    assert (again["fetched"], again["present"], again["requests"], again["bytes"]) == (0, 300, {}, 0)

    # One image deleted, one truncated behind bincli's back, one metadata file garbled:
    (data / "images" / f"{ids[0]}.jpg").unlink()
    broken = data / "images" / f"{ids[1]}.jpg"
    broken.write_bytes(broken.read_bytes()[:1000])
    (data / "metadata" / f"{ids[2]}.json").write_text("{not json")
    third = run_download(_cfg(mirror, ids_file=_ids_file(tmp_path, ids)), work, progress=False)
    assert third["requests"] == {"image": 2, "metadata": 1} and third["fetched"] == 3
    _assert_identical(mirror, data, ids[:3])


def test_faults_are_reported_by_id_and_the_rest_completes(mirror, tmp_path):
    ids = [MISSING, *mirror.good[:40], CORRUPT, "999999"]
    out = run_download(_cfg(mirror, ids=ids), tmp_path / "w", progress=False)
    assert (out["images"], out["failed"]) == (40, 3)
    failures = {f["id"]: f for f in out["failures"]}
    assert failures[MISSING]["kind"] == "missing" and failures[MISSING]["key"] == f"bin-images/{MISSING}.jpg"
    assert failures[CORRUPT]["kind"] == "corrupt" and "truncated" in failures[CORRUPT]["reason"]
    assert failures["999999"]["kind"] == "missing" and failures["999999"]["file"] == "metadata"
    data = Path(out["data_dir"])
    for bad in (MISSING, CORRUPT, "999999"):  # no half file, no metadata without its image
        assert not (data / "images" / f"{bad}.jpg").exists() and not (data / "metadata" / f"{bad}.json").exists()
    assert not list(data.rglob("*.part"))
    report = json.loads(Path(out["report"]).read_text())
    assert {f["id"] for f in report["failures"]} == {MISSING, CORRUPT, "999999"}
    _assert_identical(mirror, data, mirror.good[:40])


def test_cli_exit_codes_summary_and_strict(mirror, tmp_path, in_tmp):
    base = ["download", "-w", str(tmp_path / "w"), "--endpoint-url", mirror.url]
    ok = runner.invoke(app, [*base, "--ids", f"{mirror.good[0]},{MISSING}", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["failed"] == 1

    table = runner.invoke(app, [*base, "--ids", f"{mirror.good[0]},{MISSING}"])
    assert table.exit_code == 0 and MISSING in table.output and "missing" in table.output

    strict = runner.invoke(app, [*base, "--ids", f"{mirror.good[0]},{MISSING}", "--strict"])
    assert strict.exit_code == 1 and "--strict" in strict.output and "error:" in strict.output

    nothing = runner.invoke(app, ["download", "-w", str(tmp_path / "w2"), "--endpoint-url", mirror.url,
                                  "--ids", MISSING])
    assert nothing.exit_code == 1 and "nothing usable came down" in nothing.output
    assert State(tmp_path / "w2").outputs("download") is None


# ---------------------------------------------------------------- sampling
def test_per_class_sample_is_seeded_balanced_and_reads_few_metadata_files(mirror, tmp_path):
    out = run_download(_cfg(mirror, per_class=12, classes="1-5", seed=3), tmp_path / "a", progress=False)
    chosen = (Path(out["data_dir"]) / "download-ids.txt").read_text().split()
    assert out["counts"] == {str(c): 12 for c in range(1, 6)} and len(chosen) == 60
    assert all(1 <= mirror.labels[i] <= 5 for i in chosen)
    assert out["requests"]["metadata"] < 300  # lazily, not all 1,473
    _assert_identical(mirror, Path(out["data_dir"]), [i for i in chosen if i != CORRUPT])

    same = run_download(_cfg(mirror, per_class=12, classes="1-5", seed=3), tmp_path / "b", progress=False)
    assert (Path(same["data_dir"]) / "download-ids.txt").read_text().split() == chosen
    other = run_download(_cfg(mirror, per_class=12, classes="1-5", seed=4), tmp_path / "c", progress=False)
    assert (Path(other["data_dir"]) / "download-ids.txt").read_text().split() != chosen

    rerun = run_download(_cfg(mirror, per_class=12, classes="1-5", seed=3), tmp_path / "a", progress=False)
    assert rerun["requests"] == {} and rerun["images"] == 60  # the finished sample is reused: no listing


def test_per_class_from_the_udacity_list_replaces_ids_that_cannot_be_fetched(mirror, tmp_path):
    """The real file_list.json, as it is: most of its 10,441 ids are not in the 1,473-image mirror,
    and MISSING (class 1) has no image. Each failed pick is replaced by the next of its class."""
    cfg = _cfg(mirror, file_list=mirror.sample / "file_list.json", per_class=4, classes="1-2", seed=0)
    out = run_download(cfg, tmp_path / "w", progress=False)
    assert out["counts"] == {"1": 4, "2": 4} and out["shortfall"] == {}
    assert out["failed"] > 0 and {f["kind"] for f in out["failures"]} <= {"missing", "corrupt"}
    chosen = (Path(out["data_dir"]) / "download-ids.txt").read_text().split()
    assert len(chosen) == 8 and MISSING not in chosen
    assert "image" not in out["requests"] or out["requests"]["image"] < out["requests"]["metadata"]


def test_udacity_file_list_is_read_as_it_is():
    groups = abid.read_file_list(ABID_SAMPLE / "file_list.json") if ABID_SAMPLE.is_dir() else pytest.skip()
    assert [len(groups[c]) for c in "12345"] == [1228, 2299, 2666, 2373, 1875]
    flat = {i for ids in groups.values() for i in ids}
    assert {"100313", "09915", "1000"} <= flat  # 6 digits, zero-padded and unpadded ids all kept as strings


# ---------------------------------------------------------------- interruption
def _start_cli(mirror, work: Path, ids_file: Path, workers: int = 2) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BINCLI_"))}
    return subprocess.Popen([str(BINCLI), "download", "-w", str(work), "--endpoint-url", mirror.url,
                             "--ids-file", str(ids_file), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work.parent)


@pytest.mark.slow
def test_killed_mid_way_leaves_no_half_file_and_the_rerun_fetches_only_the_rest(mirror, tmp_path):
    ids = mirror.good[1::3][:360]
    ids_file = _ids_file(tmp_path, ids)
    work = tmp_path / "w"
    images = work / "data" / "images"
    proc = _start_cli(mirror, work, ids_file)
    _wait_for(lambda: images.is_dir() and sum(1 for p in images.glob("*.jpg")) >= 60, 60, "60 images", proc)
    proc.kill()
    proc.wait()
    # Every file under a final name is complete; only *.part temp names may be partial.
    have_img = {p.stem for p in images.glob("*.jpg")}
    have_meta = {p.stem for p in (work / "data" / "metadata").glob("*.json")}
    assert 60 <= len(have_img) < len(ids), "the kill came too late to test anything"
    _assert_identical(mirror, work / "data", sorted(have_img))
    for i in have_meta:
        assert (work / "data" / "metadata" / f"{i}.json").read_bytes() == \
               (mirror.sample / "metadata" / f"{i}.json").read_bytes()

    out = run_download(_cfg(mirror, ids_file=ids_file), work, progress=False)
    assert (out["images"], out["failed"]) == (len(ids), 0)
    assert out["requests"].get("image", 0) == len(ids) - len(have_img)
    assert out["requests"].get("metadata", 0) == len(ids) - len(have_meta)
    expected_bytes = sum((mirror.sample / "images" / f"{i}.jpg").stat().st_size for i in ids if i not in have_img) + \
        sum((mirror.sample / "metadata" / f"{i}.json").stat().st_size for i in ids if i not in have_meta)
    assert out["bytes"] == expected_bytes
    assert out["present"] == len(have_img & have_meta)
    _assert_identical(mirror, work / "data", ids)
    assert not list((work / "data").rglob("*.part"))


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_exit_130(mirror, tmp_path):
    ids_file = _ids_file(tmp_path, mirror.good[2::3][:300])
    work = tmp_path / "w"
    images = work / "data" / "images"
    proc = _start_cli(mirror, work, ids_file)
    _wait_for(lambda: images.is_dir() and any(images.glob("*.jpg")), 60, "a first image", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr
    assert not list((work / "data").rglob("*.part"))  # temp files removed on the way out
    index = json.loads((work / "data" / ".download-index.json").read_text())["files"]
    assert {f"images/{p.name}" for p in images.glob("*.jpg")} <= set(index)  # so the rerun need not re-read them


# ---------------------------------------------------------------- retries, on a flaky server
class _Flaky(BaseHTTPRequestHandler):
    """GET /<bucket>/<key>. Per key a script of answers: '503', 'drop' (headers promise the full
    length, half the body comes, the connection closes), then the object."""

    objects: ClassVar[dict[str, bytes]] = {}
    scripts: ClassVar[dict[str, list[str]]] = {}
    seen: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def do_GET(self):
        key = self.path.split("/", 2)[2]
        with self.lock:
            n = self.seen.get(key, 0)
            self.seen[key] = n + 1
        script = self.scripts.get(key, [])
        action = script[n] if n < len(script) else "ok"
        body = self.objects.get(key)
        if body is None:
            return self._reply(404, b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>")
        if action == "503":
            return self._reply(503, b"<Error><Code>SlowDown</Code><Message>slow down</Message></Error>")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "binary/octet-stream")
        self.end_headers()
        if action == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky(abid_sample):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    _Flaky.objects = {}
    for i in ("00006", "00010"):
        _Flaky.objects[abid.image_key(i)] = (abid_sample / "images" / f"{i}.jpg").read_bytes()
        _Flaky.objects[abid.metadata_key(i)] = (abid_sample / "metadata" / f"{i}.json").read_bytes()
    _Flaky.seen = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_address[1]}", handler=_Flaky)
    server.shutdown()
    server.server_close()


def test_throttling_and_a_dropped_connection_are_retried(flaky, tmp_path, abid_sample):
    key = abid.image_key("00006")
    flaky.handler.scripts = {key: ["503", "drop"]}
    out = run_download(DownloadConfig(endpoint_url=flaky.url, ids=["00006"], retries=3), tmp_path / "w",
                       progress=False)
    assert (out["images"], out["failed"]) == (1, 0)
    assert flaky.handler.seen[key] == 3 and out["retries"] == 1  # botocore retried the 503, bincli the drop
    assert (Path(out["data_dir"]) / "images" / "00006.jpg").read_bytes() == \
           (abid_sample / "images" / "00006.jpg").read_bytes()


def test_with_no_retries_a_throttled_file_fails_alone(flaky, tmp_path):
    flaky.handler.scripts = {abid.image_key("00006"): ["503"]}
    out = run_download(DownloadConfig(endpoint_url=flaky.url, ids=["00006", "00010"], retries=0), tmp_path / "w",
                       progress=False)
    assert (out["images"], out["failed"]) == (1, 1)
    assert out["failures"][0]["id"] == "00006" and "SlowDown" in out["failures"][0]["reason"]


def test_nothing_usable_raises_with_the_report_written(flaky, tmp_path):
    with pytest.raises(DownloadFailed, match="nothing usable") as info:
        run_download(DownloadConfig(endpoint_url=flaky.url, ids=["12345"]), tmp_path / "w", progress=False)
    assert Path(info.value.result["report"]).is_file() and info.value.result["failures"][0]["kind"] == "missing"


# ---------------------------------------------------------------- inputs, config, progress
@pytest.mark.parametrize("kw, message", [
    ({}, "nothing to download"),
    ({"ids": ["00002"], "per_class": 5}, "--per-class samples"),
    ({"ids": ["00002"], "ids_file": Path("x.txt")}, "choose one source"),
    ({"ids": ["2x"]}, "not an ABID id"),
    ({"ids_file": Path("no-such-file.txt")}, "file not found"),
])
def test_bad_selections_fail_fast(tmp_path, kw, message):
    with pytest.raises(UsageError, match=message):
        run_download(DownloadConfig(**kw), tmp_path / "w", progress=False)


def test_unquoted_ids_in_yaml_are_refused_with_the_fix(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("download:\n  ids: [00002, '100313']\n")
    result = runner.invoke(app, ["download", "-c", str(cfg), "-w", str(tmp_path / "w")])
    assert result.exit_code == 2 and "download.ids" in result.output and "quote" in result.output


@pytest.mark.parametrize("raw, expected", [
    ("00002", "00002"), (" 100313\n", "100313"), ("data/metadata/09915.json", "09915"),
    ("bin-images/1000.jpg", "1000"), ("00002.JPG", "00002"),
])
def test_normalize_id_keeps_the_digits_as_written(raw, expected):
    assert abid.normalize_id(raw) == expected


@pytest.mark.parametrize("raw", ["", "abc", "12a", "00002.png", "1 2"])
def test_normalize_id_rejects_non_ids(raw):
    with pytest.raises(ValueError):
        abid.normalize_id(raw)


def test_label_of_needs_a_count():
    assert abid.label_of({"EXPECTED_QUANTITY": 3}) == 3
    for bad in ({}, {"EXPECTED_QUANTITY": -1}, {"EXPECTED_QUANTITY": "3"}, {"EXPECTED_QUANTITY": True}, []):
        with pytest.raises(ValueError):
            abid.label_of(bad)


def test_progress_without_a_tty_logs_plain_periodic_lines(caplog):
    caplog.set_level(logging.INFO, logger="bincli.progress")
    with Progress("download", total=10, unit="images", interval=0.05, enabled=True, tty=False) as bar:
        bar.advance(3, nbytes=3000)
        _wait_for(lambda: any("3/10 images (30%)" in r.message for r in caplog.records), 5, "a progress line")
        bar.advance(7, nbytes=7000, failed=1)
    final = caplog.records[-1].message
    assert final.startswith("download: 10/10 images, 1 failed, 10.0 kB") and " in " in final
    assert all("\r" not in r.message and "━" not in r.message for r in caplog.records)


# ---------------------------------------------------------------- sampling at scale (issue 27)
def test_a_sample_keeps_the_labels_it_read_and_the_next_sample_reads_only_its_picks(mirror, tmp_path):
    """Class 0 cannot fill 60 (59 empty bins): every metadata key is read once. A sample with
    other classes and seed then answers from the label index: it fetches only its picks' metadata."""
    work = tmp_path / "w"
    first = run_download(_cfg(mirror, per_class=60, classes="0-0", seed=0), work, progress=False)
    assert first["counts"] == {"0": 59} and first["shortfall"] == {"0": 1}
    assert first["requests"]["metadata"] == len(mirror.labels) and first["labels_reused"] == 0
    index = list(Path(first["data_dir"]).glob(".labels-*.tsv"))
    assert len(index) == 1 and len(index[0].read_text().splitlines()) == len(mirror.labels)

    second = run_download(_cfg(mirror, per_class=3, classes="1-2", seed=5), work, progress=False)
    assert second["counts"] == {"1": 3, "2": 3}
    assert second["requests"]["metadata"] == second["images"] + second["failed"]  # the picks' own files
    assert second["labels_reused"] > 20  # (lazily: as many as it took to fill)


def test_ids_kept_aside_while_sampling_hold_no_metadata_body():
    """Class 1 fills at once; looking for class 2 reads 998 more class-1 ids: kept by id alone."""
    from bincli.core.classes import ClassSpec
    from bincli.data.download import _Picker

    body = b"{}" * 500
    stream = iter([(str(i), 1, body, None) for i in range(999)] + [("999", 2, body, None)])
    picker = _Picker(stream, ClassSpec.parse("1-2"), per_class=1)
    taken = list(picker.picks())
    assert [(i, meta is not None) for i, _, meta in taken] == [("0", True), ("999", True)]  # written as taken
    assert len(picker.overflow[1]) == 998 and all(isinstance(kept, str) for kept in picker.overflow[1])
    picker.reopen(1)  # a pick failed: the next id of its class, its metadata fetched again
    assert list(picker.picks()) == [("1", 1, None)]


def test_complete_ids_trusts_the_index_only_for_unchanged_pairs(tmp_path):
    """The no-op rerun's check of many ids at once: an id counts as complete only when both of its
    files are in the index with the same size and mtime."""
    import os as _os

    from bincli.data.local_store import LocalStore

    store = LocalStore(tmp_path / "data")
    store.prepare()
    for id_ in ("00001", "00002", "00003", "00004"):
        for path in (store.metadata_path(id_), store.image_path(id_)):
            path.write_bytes(b"x" * 10)
            store.remember(path, _os.stat(path))
    store.image_path("00002").write_bytes(b"y" * 11)  # changed since it was verified
    store.metadata_path("00003").unlink()  # gone
    store.forget(store.image_path("00004"))  # never verified
    assert store.complete_ids(["00001", "00002", "00003", "00004", "00005"]) == {"00001"}


def test_a_long_id_list_keeps_a_bounded_window_in_flight(tmp_path):
    """30,000 ids are not 30,000 futures at once: at most 2 x workers are submitted ahead."""
    from bincli.data.download import Downloader
    from bincli.data.local_store import LocalStore

    dl = Downloader(DownloadConfig(ids=["00001"], workers=4), LocalStore(tmp_path), Progress("t", enabled=False))
    calls = []
    try:
        results = dl._bounded([str(k) for k in range(1000)], lambda i: calls.append(i) or i)
        first = next(results)
        assert len(calls) <= 8 and first in calls
        assert sorted([first, *results], key=int) == [str(k) for k in range(1000)]
    finally:
        dl.close()
