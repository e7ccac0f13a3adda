"""Shared fixtures. Every test starts with no AWS_* or BINCLI_* variables from the caller."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import aws_request_shapes

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BINCLI_SHARED", ROOT.parent / "shared"))
ABID_SAMPLE = SHARED / "abid-sample"
ABID_MIRROR = SHARED / "tools" / "abid_mirror.py"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs 2 workers on 2 cores: one torch/OpenMP thread each (and in the processes they
    # start), or the thread pools thrash (the blobs training test took 145 s instead of 26 s).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# Every AWS request any test sends is checked against botocore's service model (tests/aws_request_shapes.py):
# a name, tag or value AWS would refuse fails the test that sent it, though moto took it.
aws_request_shapes.install()


@pytest.fixture(autouse=True)
def _requests_aws_would_take():
    aws_request_shapes.VIOLATIONS.clear()
    yield
    broken, aws_request_shapes.VIOLATIONS[:] = list(aws_request_shapes.VIOLATIONS), []
    assert not broken, "requests AWS would refuse (botocore's service model):\n" + "\n".join(broken[:20])


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in list(os.environ):
        if var.startswith(("AWS_", "BINCLI_")):
            monkeypatch.delenv(var)
    # Never let a test reach a real AWS endpoint or the EC2 metadata address.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(autouse=True)
def _no_endpoint_outlives_its_test(tmp_path):
    """A test that fails between deploy and teardown must not leave its server running: after
    each test, every local endpoint a workspace under tmp_path still records is torn down."""
    yield
    import json

    for state_file in tmp_path.rglob("state.json"):
        try:
            deploy = json.loads(state_file.read_text())["steps"]["deploy"]["outputs"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(deploy, dict) and deploy.get("backend", "local") == "local" and deploy.get("pid") \
                and deploy["pid"] not in (os.getpid(), os.getppid()):  # a test's fake record naming pytest
            from bincli.backends.local.endpoint import teardown
            from bincli.config import load_config

            cfg = load_config(None, {"workdir": state_file.parent}, env={}).config
            try:
                teardown(cfg)
            except Exception as exc:  # cleanup must go on; the test's own result stands
                print(f"cleanup of {state_file.parent}: {exc}")


@pytest.fixture
def abid_sample() -> Path:
    if not (ABID_SAMPLE / "images").is_dir():
        pytest.skip(f"ABID sample not found at {ABID_SAMPLE}")
    return ABID_SAMPLE


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run from a temp dir (no configs/local.yaml there: built-in defaults apply)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def moto_url():
    """One moto server (S3, IAM, SageMaker...) on 127.0.0.1 for the session; tests use fresh names."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(moto_url, monkeypatch) -> str:
    """boto3's standard sources aimed at the moto server, as a user would aim them at AWS."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_url


@pytest.fixture
def sagemaker_env(aws_env, monkeypatch, tmp_path):
    """What the SDK needs to talk to moto: no role simulation (moto lacks it), no telemetry."""
    opt_out = tmp_path / "sagemaker-config.yaml"
    opt_out.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(opt_out))
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    import uuid

    import boto3

    s3, sm, iam = (boto3.client(name) for name in ("s3", "sagemaker", "iam"))
    bucket = f"bincli-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    role_name = f"bincli-{uuid.uuid4().hex[:8]}"
    # A role SageMaker may assume, as a real execution role must be (the preflight checks its trust).
    trust = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", '
             '"Principal": {"Service": "sagemaker.amazonaws.com"}}]}')
    role = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    return s3, sm, bucket, role


@pytest.fixture
def uploaded(sagemaker_env, tmp_path):
    """A split made and uploaded to (moto) S3 under the prefix 'abid' by bincli, as a user would before
    training on backend sagemaker: (workdir, s3, sagemaker client, bucket, role)."""
    from bincli.config import UploadConfig
    from bincli.data.upload import run_upload
    from train_blobs import make_split, record_split

    s3, sm, bucket, role = sagemaker_env
    workdir = tmp_path / "work"
    record_split(workdir, make_split(tmp_path / "split", {"train": 6, "valid": 2, "test": 2}, "0-5", size=32))
    run_upload(UploadConfig(s3_uri=f"s3://{bucket}/abid"), workdir, progress=False)
    return workdir, s3, sm, bucket, role


# The modules that took longest (their summed `pytest --durations` on 2 busy cores), longest first. `make test`
# sends whole modules to its 2 workers (--dist loadfile: a module's fixtures, such as the ABID mirror,
# the TorchServe stack and the trained models, are made once, not once per worker), and starting with
# the long ones keeps one worker from finishing a long module alone at the end. Only the order depends
# on this list; a module missing from it runs after these, in the usual order.
LONGEST_FIRST = ("test_core_engine", "test_sagemaker_scaling", "test_pipeline", "test_runs", "test_sagemaker_endpoint",
                 "test_sagemaker_multihost", "test_sagemaker_job", "test_download", "test_inspect", "test_train",
                 "test_core_train", "test_sagemaker_account", "test_sagemaker_tune", "test_sagemaker_preflight",
                 "test_loadtest", "test_sagemaker_train", "test_serving_stack", "test_predict", "test_hostile_serving",
                 "test_runtimes")


# A test that uses one of these talks to a moto server or the ABID mirror (seconds each): it is `slow`,
# so `make test-fast` (-m "not slow") leaves it to `make test`.
SLOW_FIXTURES = frozenset({"moto_url", "aws_env", "sagemaker_env", "uploaded", "mirror"})


def pytest_collection_modifyitems(config, items):
    """Tests using SLOW_FIXTURES are marked slow. Modules in LONGEST_FIRST order, each module's tests
    kept together and in order (every worker collects the same order, as pytest-xdist requires)."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(getattr(getattr(item, "module", None), "__name__", ""), len(rank)))
