"""Backend sagemaker: S3, SageMaker training jobs and real-time endpoints, through boto3 and SDK v3.

    session.py       the boto3 session, role, bucket, AWS error messages, "not found"
    training_job.py  the core entry point as a v3 ModelTrainer job; attach, wait, fetch artifacts
    tuner.py         tune: a hyperparameter tuning job of those jobs; attach, live view, stop, leaderboard
    job_logs.py      the job's CloudWatch log lines while it runs
    endpoint.py      deploy and deploy --update: model, endpoint config, endpoint, recorded before waiting
    scaling.py       Application Auto Scaling of the endpoint's variant (target tracking)
    teardown.py      teardown: what deploy recorded, or (--all) what carries this workspace's tag
    preflight.py     bincli doctor and the checks before a billed step (iam_checks.py, quotas.py)
    permissions.py   every IAM action bincli and the execution role need; the policies made from it

Endpoints and credentials come from boto3's standard chain (AWS_ENDPOINT_URL, AWS_PROFILE, ...).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bincli.backends import BaseBackend, TrainingRun
from bincli.backends.runtime import EndpointPredictor
from bincli.core.contract import MAX_PAYLOAD_BYTES

if TYPE_CHECKING:
    from bincli.backends.checks import Check

REALTIME_MAX_PAYLOAD = MAX_PAYLOAD_BYTES  # bytes per invocation, real-time endpoints (6 MB)
SERVERLESS_MAX_PAYLOAD = 4 * 1024 * 1024  # bytes per invocation, serverless endpoints
SERVERLESS_TIMEOUT_S = 60.0               # a serverless invocation is cut off after 60 s


class SageMakerBackend(BaseBackend):
    name = "sagemaker"

    def train(self, hp: Mapping[str, Any], split: Mapping[str, Any], *, from_tune: bool, fresh: bool, wait: bool,
              console: Any, live: bool | None, run_dir: Path | None = None) -> TrainingRun:
        from bincli.backends.sagemaker.training_job import train_on_sagemaker

        with _role_refusal("creating the training job"):
            return train_on_sagemaker(self.cfg, hp, split, fresh=fresh, wait=wait, console=console, run_dir=run_dir)

    def tune(self, fixed: set[str], console: Any, *, wait: bool = True, stop: bool = False) -> dict[str, Any]:
        from bincli.backends.sagemaker.tuner import tune_on_sagemaker

        with _role_refusal("creating the tuning job"):
            return tune_on_sagemaker(self.cfg, fixed, console, wait=wait, stop=stop)

    def deploy(self, model: Path | None, update: bool, foreground: bool) -> dict[str, Any]:
        from bincli.backends.sagemaker.endpoint import deploy_sagemaker

        if foreground:
            self.require("--foreground")
        self.require_deploy_config()
        return deploy_sagemaker(self.cfg, model, update=update)

    def teardown(self, name: str | None) -> dict[str, Any]:
        from bincli.backends.sagemaker.teardown import teardown_sagemaker

        return teardown_sagemaker(self.cfg, name)

    def teardown_all(self) -> dict[str, Any]:
        from bincli.backends.sagemaker.teardown import teardown_tagged

        return teardown_tagged(self.cfg)

    def endpoint_status(self) -> dict[str, Any] | None:
        from bincli.backends.sagemaker.endpoint import endpoint_status

        return endpoint_status(self.cfg)

    def runtime_client(self, endpoint: str | None, endpoint_url: str | None) -> EndpointPredictor:
        from bincli.backends.records import endpoint_to_call
        from bincli.state import State

        state = State(self.cfg.workdir)
        name = endpoint_to_call(state, endpoint, endpoint_url, self.cfg.deploy.name)
        record = state.outputs("deploy") or {}
        record = record if record.get("name") == name and record.get("backend") == "sagemaker" else {}
        # SageMaker's limits, enforced before sending: 6 MB a request (4 MB and 60 s when serverless).
        serverless = bool(record.get("serverless"))
        p = self.cfg.predict
        return EndpointPredictor(name, endpoint_url, region=record.get("region") or self.cfg.sagemaker.region,
                                 timeout=min(p.timeout, SERVERLESS_TIMEOUT_S) if serverless else p.timeout,
                                 concurrency=p.concurrency, signed=True,
                                 max_payload=SERVERLESS_MAX_PAYLOAD if serverless else REALTIME_MAX_PAYLOAD,
                                 limit_of="a serverless SageMaker endpoint" if serverless else "a SageMaker endpoint")

    def upload(self) -> dict[str, Any]:
        from bincli.data.upload import run_upload

        return run_upload(self.cfg.upload, self.cfg.workdir, require_s3=True, region=self.cfg.sagemaker.region)

    def batch_predict(self, uri: str, model: Path | None, answered: set[str], wait: bool) -> dict[str, Any]:
        from bincli.backends.sagemaker.transform import transform_on_sagemaker

        return transform_on_sagemaker(self.cfg, uri, model, answered, wait)

    def preflight(self, steps: Sequence[str]) -> list[Check]:
        from bincli.backends.sagemaker.preflight import preflight

        return preflight(self.cfg, list(steps))

    def doctor(self) -> list[Check]:
        from bincli.backends.sagemaker.preflight import doctor

        return doctor(self.cfg)

    def write_policies(self, folder: Path) -> list[Path]:
        from bincli.backends.sagemaker.permissions import write_policies
        from bincli.backends.sagemaker.preflight import scope_for

        return write_policies(folder, scope_for(self.cfg))


@contextmanager
def _role_refusal(what: str) -> Iterator[None]:
    """The SDK's ModelTrainer refuses a role it finds lacking (RoleValidationError, many lines): one line."""
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ != "RoleValidationError":
            raise
        from bincli.backends.sagemaker.session import aws_error

        raise aws_error(exc, what) from None
