"""Backend sagemaker: S3, SageMaker training jobs and real-time endpoints, through boto3 and SDK v3.

    session.py       the boto3 session, role, bucket, AWS error messages, "not found"
    training_job.py  the core entry point as a v3 ModelTrainer job; attach, wait, fetch artifacts
    job_logs.py      the job's CloudWatch log lines while it runs
    endpoint.py      deploy/teardown: model, endpoint config, endpoint, recorded before waiting

Endpoints and credentials come from boto3's standard chain (AWS_ENDPOINT_URL, AWS_PROFILE, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bincli.backends import BaseBackend, TrainingRun
from bincli.backends.runtime import EndpointPredictor


class SageMakerBackend(BaseBackend):
    name = "sagemaker"

    def train(self, hp: Mapping[str, Any], split: Mapping[str, Any], *, from_tune: bool, fresh: bool, wait: bool,
              console: Any, live: bool | None) -> TrainingRun:
        from bincli.backends.sagemaker.training_job import train_on_sagemaker

        return train_on_sagemaker(self.cfg, hp, split, fresh=fresh, wait=wait, console=console)

    def tune(self, fixed: set[str], console: Any) -> dict[str, Any]:
        self.require("tune")
        raise AssertionError("unreachable: the capability table says tune is local only")

    def deploy(self, model: Path | None, update: bool, foreground: bool) -> dict[str, Any]:
        from bincli.backends.sagemaker.endpoint import deploy_sagemaker

        if update:
            self.require("--update")
        if foreground:
            self.require("--foreground")
        return deploy_sagemaker(self.cfg, model)

    def teardown(self, name: str | None) -> dict[str, Any]:
        from bincli.backends.sagemaker.endpoint import teardown_sagemaker

        return teardown_sagemaker(self.cfg, name)

    def runtime_client(self, endpoint: str | None, endpoint_url: str | None) -> EndpointPredictor:
        from bincli.backends.records import endpoint_to_call
        from bincli.state import State

        name = endpoint_to_call(State(self.cfg.workdir), endpoint, endpoint_url, self.cfg.deploy.name)
        p = self.cfg.predict
        return EndpointPredictor(name, endpoint_url, region=self.cfg.sagemaker.region, timeout=p.timeout,
                                 concurrency=p.concurrency, signed=True)

    def upload(self) -> dict[str, Any]:
        from bincli.data.upload import run_upload

        return run_upload(self.cfg.upload, self.cfg.workdir, require_s3=True, region=self.cfg.sagemaker.region)
