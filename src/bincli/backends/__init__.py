"""The backends: what differs between running on this machine and running on SageMaker.

Everything a step needs from "where it runs" goes through one `Backend` (train, tune, deploy,
teardown, the runtime client predict/evaluate call, the upload target), chosen once by
`get_backend(cfg)`. This is the only place that asks which backend is configured; the rest of
bincli asks the backend object, or `backend.require("--update")` for an optional feature, which
answers every backend the same way: `--update: not available on backend sagemaker (available on: local)`.

    backends/local/      the entry point as a child process, Optuna trials, the endpoint process
                         and its FastAPI server
    backends/sagemaker/  boto3/SDK session, training jobs, endpoints, CloudWatch logs
    backends/runtime.py  the invoke_endpoint client both backends answer predict with
    backends/records.py  the deploy record in state, read the same way by both teardowns
    backends/checks.py   one row of `bincli doctor` and of the preflight before a billed step

May import: core, artifacts, data, config, state, errors, console, progress, layout,
hyperparameters. Never commands or steps; backends/sagemaker never imports backends/local.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bincli.errors import UsageError

if TYPE_CHECKING:
    from bincli.backends.checks import Check
    from bincli.backends.runtime import RuntimeClient
    from bincli.config import Config

# Which backend offers each optional feature: the one table behind every "not available" message.
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "tune": ("local", "sagemaker"),      # Optuna trials here; a SageMaker hyperparameter tuning job there
    "--no-wait": ("sagemaker",),         # a local run (train, tune) is this process
    "--stop": ("sagemaker",),            # tune --stop: a local search stops with Ctrl-C
    "--foreground": ("local",),          # a SageMaker endpoint runs on AWS
    "--update": ("local", "sagemaker"),  # a new server process; UpdateEndpoint to a new endpoint config
    "deploy.serverless": ("sagemaker",),  # a SageMaker serverless endpoint config
    "deploy.autoscaling": ("sagemaker",),  # Application Auto Scaling of the endpoint's variant
    "teardown --all": ("sagemaker",),    # resources found by tag; a local endpoint is only its record
    "predict s3://": ("sagemaker",),     # a batch job (SageMaker Batch Transform) over an S3 prefix
    "--write-policies": ("sagemaker",),  # IAM policies for the caller and the execution role
}


def require(backend: str, feature: str) -> None:
    """UsageError (exit 2) unless `backend` offers `feature` (a key of CAPABILITIES)."""
    offered = CAPABILITIES[feature]
    if backend not in offered:
        raise UsageError(f"{feature}: not available on backend {backend} "
                         f"(available on: {', '.join(offered) or 'none yet'})")


@dataclass
class TrainingRun:
    """What a backend's training leaves for the train step to report and package.

    `run_dir` holds model/ and output/ as a SageMaker training job leaves them. `publish`, when
    set, puts the packaged model.tar.gz where the backend's deploy needs it and returns what to
    add to the 'train' record. `pending` (with --no-wait) is the result of a job still running."""

    run_dir: Path
    log_path: Path | None = None
    publish: Callable[[Path], dict[str, Any]] | None = None
    pending: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """What a backend does; each method is one step's backend-specific part."""

    name: str
    cfg: Config

    def train(self, hp: Mapping[str, Any], split: Mapping[str, Any], *, from_tune: bool, fresh: bool, wait: bool,
              console: Any, live: bool | None, run_dir: Path | None = None) -> TrainingRun: ...

    def tune(self, fixed: set[str], console: Any, *, wait: bool = True, stop: bool = False) -> dict[str, Any]: ...

    def deploy(self, model: Path | None, update: bool, foreground: bool) -> dict[str, Any]: ...

    def teardown(self, name: str | None) -> dict[str, Any]: ...

    def teardown_all(self) -> dict[str, Any]: ...

    def endpoint_status(self) -> dict[str, Any] | None:
        """The recorded endpoint now, or None: {"name", "status" (the backend's word), "serving" (bool:
        it is there to answer requests), ...}."""

    def runtime_client(self, endpoint: str | None, endpoint_url: str | None) -> RuntimeClient: ...

    def upload(self) -> dict[str, Any]: ...

    def batch_predict(self, uri: str, model: Path | None, answered: set[str], wait: bool) -> dict[str, Any]:
        """A batch job over the photos under the S3 prefix `uri` that are not in `answered`, or the one
        recorded for it: {"job", "status", "photos", "answers": (photo URI, answer) pairs once it is over}."""

    def preflight(self, steps: Sequence[str]) -> list[Check]:
        """Rows to show before the billed `steps` (tune, train, deploy) create anything: checks (a
        failed one stops the step) and cost lines. [] where nothing bills."""

    def doctor(self) -> list[Check]:
        """Every check of this backend, one row each (backends/checks.py)."""

    def write_policies(self, folder: Path) -> list[Path]:
        """The IAM policy files this config needs, written into `folder` (--write-policies)."""


class BaseBackend:
    """Shared by both backends: the config and the capability check."""

    name = ""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def require(self, feature: str) -> None:
        require(self.name, feature)

    def require_deploy_config(self) -> None:
        """Refuse the deploy sections this backend cannot honour (deploy.serverless, deploy.autoscaling)."""
        for key in ("serverless", "autoscaling"):
            if getattr(self.cfg.deploy, key) is not None:
                self.require(f"deploy.{key}")

    def teardown_all(self) -> dict[str, Any]:
        self.require("teardown --all")
        raise AssertionError("unreachable: a backend offering teardown --all implements it")

    def batch_predict(self, uri: str, model: Path | None, answered: set[str], wait: bool) -> dict[str, Any]:
        self.require("predict s3://")
        raise AssertionError("unreachable: a backend offering predict s3:// implements it")

    def preflight(self, steps: Sequence[str]) -> list[Check]:
        return []  # nothing bills

    def write_policies(self, folder: Path) -> list[Path]:
        self.require("--write-policies")
        raise AssertionError("unreachable: a backend offering --write-policies implements it")


def get_backend(cfg: Config) -> Backend:
    """The backend the config names (`backend: local | sagemaker`)."""
    if cfg.backend == "sagemaker":
        from bincli.backends.sagemaker import SageMakerBackend

        return SageMakerBackend(cfg)
    from bincli.backends.local import LocalBackend

    return LocalBackend(cfg)
