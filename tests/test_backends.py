"""The backend seam: one get_backend, one capability table, one deploy record, and "not found"
meaning only not found (anything else must never start a second, billed job)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from bincli.backends import CAPABILITIES, get_backend, require
from bincli.backends.local import LocalBackend
from bincli.backends.records import recorded_endpoint
from bincli.backends.sagemaker import SageMakerBackend
from bincli.backends.sagemaker.session import is_not_found
from bincli.backends.sagemaker.training_job import _attachable
from bincli.config import Config
from bincli.errors import BincliError, StateError, UsageError
from bincli.state import State


def _client_error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "DescribeTrainingJob")


def test_get_backend_follows_the_config():
    assert isinstance(get_backend(Config()), LocalBackend)
    assert isinstance(get_backend(Config(backend="sagemaker")), SageMakerBackend)


def test_every_capability_gives_the_same_message_shape():
    for feature, offered in CAPABILITIES.items():
        for backend in ("local", "sagemaker"):
            if backend in offered:
                require(backend, feature)
                continue
            with pytest.raises(UsageError) as info:
                require(backend, feature)
            assert info.value.message == (f"{feature}: not available on backend {backend} "
                                          f"(available on: {', '.join(offered) or 'none yet'})")


@pytest.mark.parametrize(("code", "message", "expected"), [
    ("ValidationException", "Could not find requested job with name bincli-1", True),
    ("ValidationException", "Could not find endpoint \"x\".", True),
    ("ResourceNotFound", "gone", True),
    ("ValidationException", "1 validation error detected: Value 'x' failed to satisfy constraint", False),
    ("ThrottlingException", "Rate exceeded", False),
    ("ExpiredTokenException", "The security token included in the request is expired", False),
    ("AccessDeniedException", "not authorized", False),
])
def test_only_not_found_means_not_found(code, message, expected):
    assert is_not_found(_client_error(code, message)) is expected
    assert is_not_found(RuntimeError("Could not find")) is False  # not an AWS answer at all


class _DescribeRaises:
    def __init__(self, exc: Exception):
        self.exc = exc

    def describe_training_job(self, **_):
        raise self.exc


def test_a_failed_describe_never_starts_a_second_job(tmp_path):
    record = {"job_name": "bincli-1", "fingerprint": "f"}  # as in <workdir>/train/sagemaker-job.json
    gone = _DescribeRaises(_client_error("ValidationException", "Could not find requested job with name bincli-1"))
    assert _attachable(record, "f", gone) is None  # really gone: a new job may start
    throttled = _DescribeRaises(_client_error("ThrottlingException", "Rate exceeded"))
    with pytest.raises(BincliError, match="checking training job bincli-1"):
        _attachable(record, "f", throttled)  # unknown: stop, start nothing


def test_each_teardown_names_the_backend_that_deployed(tmp_path):
    state = State(tmp_path)
    state.record("deploy", {"backend": "sagemaker", "name": "ep", "region": "eu-west-1"})
    with pytest.raises(StateError, match=r"deployed by backend sagemaker.*--set backend=sagemaker"):
        recorded_endpoint(state, backend="local")
    state.record("deploy", {"name": "ep", "pid": 1})  # a record from before the seam: local
    with pytest.raises(StateError, match="deployed by backend local"):
        recorded_endpoint(state, backend="sagemaker")
    assert recorded_endpoint(state, backend="local")["name"] == "ep"
    assert recorded_endpoint(state, name="other", backend="local") is None
