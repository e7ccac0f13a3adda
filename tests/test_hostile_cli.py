"""Hostile input to the CLI: credentials in logs, state files of the wrong shape, config files and
flags that are not what they should be, two steps in one workdir. Plus property-based tests:
config and state parsing end in a valid value or bincli's own error, never another exception."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bincli.cli import app
from bincli.config import Config, flatten, load_config, parse_set_options
from bincli.errors import ConfigError, StateError
from bincli.lock import LOCK_FILE
from bincli.logsafe import redact
from bincli.state import STEP_ORDER, State
from helpers import make_abid_folder

runner = CliRunner()
BINCLI = Path(sys.executable).parent / "bincli"

# Fake credentials shaped like real ones: a temporary key id, a 40-character secret, a session token.
FAKE_KEY_ID = "ASIAQ3FAKEKEYID0TEST"
FAKE_SECRET = "fAkE/sEcReT+k3yWJalrXUtnFEMIK7MDENGbPxRfi"
FAKE_TOKEN = "IQoJb3JpZ2luX2VjEFAKEtokenFAKEtoken" + "x" * 120 + "/end+="


# ---------------------------------------------------------------- credentials never reach stderr
@pytest.fixture
def fake_credentials(aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", FAKE_TOKEN)
    return aws_env


def _assert_no_secret(text: str) -> None:
    for secret in (FAKE_KEY_ID, FAKE_SECRET, FAKE_TOKEN, FAKE_TOKEN[:40]):
        assert secret not in text


@pytest.mark.parametrize("verbosity", [["-v"], [], ["-q"]])
def test_upload_never_logs_credentials(tmp_path, fake_credentials, verbosity):
    import boto3

    from bincli.config import SplitConfig
    from bincli.data.split import run_split

    data, work = tmp_path / "data", tmp_path / "work"
    make_abid_folder(data, {1: 3, 2: 3}, size=32)
    run_split(SplitConfig(input=data, ratios=(0.6, 0.2, 0.2), classes="1-2"), work)
    bucket = f"bincli-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=bucket)

    proc = subprocess.run([str(BINCLI), *verbosity, "upload", "-w", str(work), "--s3-uri", f"s3://{bucket}/x"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr
    _assert_no_secret(proc.stderr + proc.stdout)
    assert "DEBUG botocore" not in proc.stderr and "DEBUG urllib3" not in proc.stderr
    if verbosity == ["-v"]:  # -v does show the AWS libraries' INFO lines, just not their DEBUG ones
        assert "INFO botocore.credentials: Found credentials in environment variables" in proc.stderr


def test_redacting_filter_covers_botocore_debug_output(fake_credentials):
    """Even if someone turns botocore up to DEBUG (signed headers, canonical request), the handler's
    filter keeps the secrets out: run a real signed request against moto and read stderr."""
    code = (
        "import logging, boto3\n"
        "from bincli.logsafe import setup_logging\n"
        "setup_logging(verbose=True)\n"
        "for name in ('botocore', 'urllib3'): logging.getLogger(name).setLevel(logging.DEBUG)\n"
        "boto3.client('s3', region_name='us-east-1').list_buckets()\n"
        "logging.getLogger('bincli.test').error('boom', exc_info=RuntimeError('token ' + __import__('os')"
        ".environ['AWS_SESSION_TOKEN']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Authorization" in proc.stderr and "X-Amz-Security-Token" in proc.stderr  # the headers were logged
    assert "DEBUG botocore" in proc.stderr and "RuntimeError: token ***" in proc.stderr
    _assert_no_secret(proc.stderr)


@pytest.fixture
def restore_logging():
    import logging

    names = ("", "bincli", "botocore", "boto3", "urllib3", "s3transfer", "sagemaker", "sagemaker.config")
    saved = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


def test_verbose_shows_bincli_debug_but_aws_libraries_at_info_at_most(restore_logging, capsys):
    import logging

    from bincli.logsafe import setup_logging

    setup_logging(verbose=True)
    setup_logging(verbose=True)  # once per command: still one handler
    assert sum(getattr(h, "_bincli", False) for h in logging.getLogger().handlers) == 1
    assert logging.getLogger("bincli.data.fetcher").isEnabledFor(logging.DEBUG)
    for name in ("botocore", "botocore.endpoint", "boto3", "urllib3.connectionpool", "s3transfer"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
        assert logging.getLogger(name).isEnabledFor(logging.INFO), name
    logging.getLogger("bincli.test").debug("key %s", FAKE_KEY_ID)
    assert capsys.readouterr().err == "DEBUG bincli.test: key ***\n"
    setup_logging()
    assert not logging.getLogger("bincli").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("botocore").isEnabledFor(logging.INFO)


def test_redact_patterns(monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    text = ("headers={'X-Amz-Security-Token': b'FQoGZXIvYXdz+abc/def=', 'Authorization': b'AWS4-HMAC-SHA256 "
            "Credential=AKIAABCDEFGHIJKLMNOP/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=abc'}"
            "\nx-amz-security-token:FQoGZXIvYXdz2\nAuthorization: AWS4-HMAC-SHA256 Credential=x, Signature=y\n"
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=ASIAABCDEFGHIJKLMNOP%2F2024&X-Amz-Security-Token=FQoG3"
            "&X-Amz-Signature=deadbeef")
    out = redact(text)
    for secret in ("FQoGZXIvYXdz", "AKIAABCDEFGHIJKLMNOP", "ASIAABCDEFGHIJKLMNOP", "FQoG3", "deadbeef", "Signature=y",
                   "Signature=abc"):
        assert secret not in out
    assert "'Authorization': b'***'" in out and "X-Amz-Security-Token=***&" in out
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-from-env")
    assert redact("key is s3cr3t-value-from-env.") == "key is ***."


# ---------------------------------------------------------------- state.json of the wrong shape
def _good_record(**outputs) -> dict:
    return {"finished_at": "2024-01-01T00:00:00+00:00", "bincli_version": "0.1.0", "outputs": outputs, "config": {}}


BAD_STATES = {
    "null": ("null", "not a bincli state file: expected a JSON object", "got null"),
    "list": ("[1, 2]", "not a bincli state file", "got an array"),
    "steps-list": ('{"steps": []}', "not a bincli state file: steps: Input should be a valid dictionary", None),
    "record-missing-keys": (json.dumps({"steps": {"split": _good_record(train=1), "train": {"outputs": {}}}}),
                            "the 'train' record is broken: finished_at: Field required", "rerun 'bincli train'"),
    "outputs-not-dict": (json.dumps({"steps": {"deploy": {**_good_record(), "outputs": [1]}}}),
                         "the 'deploy' record is broken: outputs: Input should be a valid dictionary",
                         "remove 'deploy' from \"steps\""),
    "record-null": (json.dumps({"steps": {"split": None}}), "the 'split' record is broken: record:",
                    "rerun 'bincli split'"),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
@pytest.mark.parametrize("command", [["status"], ["teardown"], ["train", "--epochs", "1"], ["predict", "IMG"]])
def test_bad_state_is_one_error_naming_file_and_record(tmp_path, in_tmp, case, command):
    text, message, hint = BAD_STATES[case]
    work = tmp_path / "w"
    work.mkdir()
    (work / "state.json").write_text(text)
    image = tmp_path / "bin.jpg"
    image.write_bytes(b"\xff\xd8 not really a jpeg")
    args = [str(image) if a == "IMG" else a for a in command]
    result = runner.invoke(app, [*args, "-w", str(work)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # the funnel's exit, not a traceback
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {work / 'state.json'}: ") and message in lines[0], lines
    assert len(lines) <= 2 and (hint is None or hint in result.stderr)
    assert (work / "state.json").read_text() == text  # a failed command never rewrites it


def test_rerunning_the_step_replaces_its_own_broken_record(tmp_path):
    state = State(tmp_path)
    state.path.write_text(json.dumps({"steps": {"split": _good_record(train=3), "train": {"outputs": 5}}}))
    with pytest.raises(StateError, match="'train' record is broken"):
        state.outputs("split")
    state.record("train", {"model": "m.tar.gz"})
    assert state.outputs("train") == {"model": "m.tar.gz"} and state.outputs("split") == {"train": 3}
    state.path.write_text(json.dumps({"steps": {"deploy": []}}))
    assert state.forget("deploy") is False and state.read() == {"version": 1, "steps": {}}


def test_state_keeps_unknown_fields_and_steps(tmp_path):
    state = State(tmp_path)
    state.path.write_text(json.dumps({"version": 1, "note": "x",
                                      "steps": {"custom": {**_good_record(a=1), "extra": True}}}))
    state.record("split", {"train": 1})
    data = json.loads(state.path.read_text())
    assert data["note"] == "x" and data["steps"]["custom"]["extra"] is True
    assert state.require("split") == {"train": 1}


def test_prerequisite_table_is_gone():
    import bincli.state

    assert not hasattr(bincli.state, "PREREQUISITE")
    assert STEP_ORDER[0] == "download"


# ---------------------------------------------------------------- config files and flags
def test_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  model: résnet18\n".encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(exc.value) == f"{path}: line 2 not UTF-8 text (byte 0xe9 at offset 17); save it as UTF-8"
    result = runner.invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 2 and result.stderr.strip().splitlines() == [f"error: {exc.value}"]


@pytest.mark.parametrize("item, expected", [
    ("a.b.c=5", "--set: a.b.c: unknown section 'a'; valid keys: workdir, backend,"),
    ("train.lr.x=5", "--set: train.lr.x: train.lr takes a value, not keys below it"),
    ("split.ratios.0=0.5", "--set: split.ratios.0: split.ratios takes a value, not keys below it"),
    ("train..lr=1", "--set: train..lr: expected section.key, e.g. train.lr"),
    ("trian.lr=1", "--set: trian.lr: unknown section 'trian'; did you mean 'train'?"),
    ("tune.search_space.lr.hgh=1", "--set: tune.search_space.lr.hgh: unknown key; did you mean 'high'?"),
    ("train={lr: -1}", "--set: train.lr: Input should be greater than 0, got -1"),
    ("train=&a {lr: *a}", "--set: train: lr: an alias refers to itself"),
])
def test_bad_set_keys_blame_the_flag_not_the_file(tmp_path, item, expected):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\nsplit:\n  ratios: [0.8, 0.1, 0.1]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, overrides=parse_set_options([item]), env={})
    assert str(exc.value).startswith(expected)
    assert str(path) not in str(exc.value)


def test_set_keys_that_exist_still_work(tmp_path):
    loaded = load_config(None, overrides=parse_set_options(
        ["tune.search_space.lr.low=0.001", "tune.search_space.optimizer=[sgd]", "train={epochs: 2}"]), env={})
    cfg = loaded.config
    assert cfg.tune.search_space.lr.low == 0.001 and cfg.tune.search_space.optimizer == ["sgd"]
    assert cfg.train.epochs == 2 and loaded.source_of("train") == "flag --set"


def test_bad_env_key_blames_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"^env BINCLI_TRAIN__LR__X: train\.lr\.x: train\.lr takes a value"):
        load_config(None, env={"BINCLI_TRAIN__LR__X": "1"})


@pytest.mark.parametrize("text, expected", [
    ("train: &a {lr: *a}\n", "train.lr: an alias refers to itself"),
    ("1: 2\n", "1: keys must be names, got int 1; quote it"),
    ("train: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML: nested too deeply"),
])
def test_yaml_that_would_crash_later_is_refused(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert str(exc.value) == f"{path}: {expected}"


def test_cli_set_error_names_the_flag(in_tmp):
    result = runner.invoke(app, ["config", "show", "--set", "a.b.c=5"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --set: a.b.c: unknown section 'a'")


def test_predict_refuses_a_negative_expected_count(in_tmp, tmp_path):
    image = tmp_path / "bin.jpg"
    image.write_bytes(b"x")
    result = runner.invoke(app, ["predict", str(image), "--expected", "-1"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: --expected: must be a count of 0 or more, got -1"]


# ---------------------------------------------------------------- one step at a time per workdir
HOLDER = ("import sys\nfrom pathlib import Path\nfrom bincli.lock import acquire\n"
          "acquire(Path(sys.argv[1]), 'train')\nprint('locked', flush=True)\nsys.stdin.read()\n")


@pytest.fixture
def holder(tmp_path):
    """A second process that holds the workdir lock as 'bincli train' until its stdin closes."""
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(work)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read()  # synchronised on the pipe
        yield work, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def test_a_second_step_fails_at_once_naming_the_running_one(holder, in_tmp):
    work, proc = holder
    holder_info = json.loads((work / LOCK_FILE).read_text())
    for command in (["split"], ["teardown"], ["train", "--epochs", "1"], ["evaluate"]):
        result = runner.invoke(app, [*command, "-w", str(work)])
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines()[0] == (
            f"error: {work} is in use by 'bincli train' (pid {proc.pid}, since {holder_info['since']})")
    # A real process too, and the readers still work while the lock is held.
    other = subprocess.run([str(BINCLI), "teardown", "-w", str(work)], capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and f"'bincli train' (pid {proc.pid}" in other.stderr
    assert runner.invoke(app, ["status", "-w", str(work), "--json"]).exit_code == 0
    assert runner.invoke(app, ["config", "show", "-w", str(work), "--json"]).exit_code == 0

    proc.stdin.close()  # the holder ends cleanly: the lock is free and the file says nobody holds it
    assert proc.wait(30) == 0
    assert (work / LOCK_FILE).read_text() == ""
    result = runner.invoke(app, ["teardown", "-w", str(work)])
    assert result.exit_code == 0, result.output
    assert "stale" not in result.output and "nothing to remove" in result.stdout


def test_a_killed_step_never_blocks_and_its_stale_lock_is_reported(holder, in_tmp):
    work, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    result = runner.invoke(app, ["teardown", "-w", str(work)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith(
        f"took over a stale workdir lock: 'bincli train' (pid {proc.pid}, since ")
    assert "no longer running) ended without releasing it" in result.stderr
    again = runner.invoke(app, ["teardown", "-w", str(work)])  # released cleanly this time
    assert again.exit_code == 0 and "stale" not in again.stderr


def test_in_process_commands_run_one_after_another(in_tmp):
    for _ in range(2):
        result = runner.invoke(app, ["teardown", "-w", "w"])
        assert result.exit_code == 0, result.output
    assert (in_tmp / "w" / LOCK_FILE).read_text() == ""


# ---------------------------------------------------------------- properties
FIELD_KEYS = sorted(flatten(Config()))
SECTIONS = sorted(Config.model_fields)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
# Keys a user might type: real ones, real ones with a typo or an extra level, and anything.
dotted_keys = (st.sampled_from(FIELD_KEYS) | st.sampled_from(SECTIONS)
               | st.builds(lambda k, s: k + s, st.sampled_from(FIELD_KEYS), st.sampled_from(["x", ".x", ".", ".0", ""]))
               | st.text(max_size=15))
scalar_text = st.text(max_size=30) | st.sampled_from(
    ["0", "-1", "1e999", "null", "~", "[1, 2, 3]", "{a: 1}", "&a [*a]", "[0.8, 0.1, 0.1]", "yes", "0-5+", "s3://b/x",
     "http://h", ".inf", "2024-01-01", "!!python/object:os.system x", "'", "[" * 50])
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_or_config_error(load):
    try:
        assert isinstance(load().config, Config)
    except ConfigError as exc:
        assert exc.message and "\n" not in exc.message


@PROPERTY
@given(text=st.text(max_size=300))
def test_any_yaml_text_gives_a_config_or_a_config_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _valid_or_config_error(lambda: load_config(path, env={}))


@PROPERTY
@given(doc=st.dictionaries(dotted_keys, json_values | scalar_text, max_size=6), raw=st.binary(max_size=40))
def test_any_yaml_document_gives_a_config_or_a_config_error(tmp_path, doc, raw):
    nested: dict = {}
    for key, value in doc.items():  # dotted keys -> nested sections, as a user would write them
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
        node[leaf] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(nested, allow_unicode=True))
    _valid_or_config_error(lambda: load_config(path, env={}))
    path.write_bytes(raw)
    _valid_or_config_error(lambda: load_config(path, env={}))


@PROPERTY
@given(items=st.lists(st.text(max_size=40) | st.builds("{}={}".format, dotted_keys, scalar_text), max_size=5))
def test_any_set_options_give_a_config_or_a_config_error(in_tmp, items):
    _valid_or_config_error(lambda: load_config(None, overrides=parse_set_options(items), env={}))


@PROPERTY
@given(env=st.dictionaries(
    st.sampled_from([f"BINCLI_{k.upper().replace('.', '__')}" for k in FIELD_KEYS] + ["BINCLI_TRAIN__LR__X",
                                                                                     "BINCLI_SPLIT", "BINCLI_X"]),
    scalar_text.filter(lambda s: "\x00" not in s), max_size=5))
def test_any_env_values_give_a_config_or_a_config_error(in_tmp, env):
    _valid_or_config_error(lambda: load_config(None, env=env))


state_documents = json_values | st.fixed_dictionaries({}, optional={
    "version": json_values,
    "steps": st.dictionaries(st.sampled_from([*STEP_ORDER, "other"]), json_values | st.fixed_dictionaries(
        {}, optional={"finished_at": json_values, "bincli_version": json_values, "outputs": json_values,
                      "config": json_values}), max_size=3) | json_values,
})


@PROPERTY
@given(document=state_documents)
def test_any_json_state_file_works_or_is_a_state_error(tmp_path, document):
    state = State(tmp_path)
    state.path.write_text(json.dumps(document))
    try:
        data = state.read()
    except StateError as exc:
        assert str(state.path) in exc.message and "\n" not in exc.message
        return
    assert isinstance(data["steps"], dict)
    for name in STEP_ORDER:
        outputs = state.outputs(name)
        assert outputs is None or isinstance(outputs, dict)
        assert state.step(name) is None or isinstance(state.step(name)["finished_at"], str)
    state.record("evaluate", {"accuracy": 0.5})
    assert state.require("evaluate") == {"accuracy": 0.5}


# ---------------------------------------------------------------- small habits (issue 18)
def test_two_ratios_say_three_are_expected(in_tmp):
    result = runner.invoke(app, ["split", "--set", "split.ratios=[0.5,0.5]"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: --set: split.ratios: expected 3 numbers (train, valid, test), got [0.5, 0.5]"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")
def test_device_cuda_without_a_gpu_is_refused_before_the_child_starts():
    from bincli.backends.local.launcher import require_device

    require_device("cpu")
    require_device("auto")
    with pytest.raises(ConfigError, match=r"train\.device: cuda, but torch sees no CUDA GPU") as info:
        require_device("cuda")
    assert "--device auto" in info.value.hint and info.value.exit_code == 2


def test_download_that_cannot_connect_names_endpoint_url_and_the_stand_in(in_tmp):
    import socket

    with socket.socket() as s:  # a port nobody listens on: connection refused, as offline
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(app, ["download", "--per-class", "1", "--classes", "1-2",
                                 "--s3-endpoint-url", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert "cannot connect to" in result.stderr and "download.endpoint_url (--s3-endpoint-url)" in result.stderr
    assert "abid_mirror.py" in result.stderr
