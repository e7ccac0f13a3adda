"""Backend local: the disk is the bucket, training and tuning are child processes of this one,
the endpoint is a FastAPI server in a background process.

    launcher.py  the core entry point as a child process (torchrun for several), SM_* contract
    tuner.py     Optuna trials of that same process
    endpoint.py  deploy/teardown: the server process, its record in state, its lifetime
    server.py    the FastAPI app: SageMaker's container and runtime API over one loaded model
    client.py    the runtime client predict/evaluate/loadtest call it with (http.client: no boto3)
    doctor.py    bincli doctor: disk, the deploy port, cores and GPUs, chromium
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bincli.backends import BaseBackend, TrainingRun

if TYPE_CHECKING:
    from bincli.backends.checks import Check
    from bincli.backends.local.client import LocalEndpointClient

PING_TIMEOUT_S = 1.0  # `bincli status` asks a local endpoint whether it answers: it should be quick


class LocalBackend(BaseBackend):
    name = "local"

    def train(self, hp: Mapping[str, Any], split: Mapping[str, Any], *, from_tune: bool, fresh: bool, wait: bool,
              console: Any, live: bool | None, run_dir: Path | None = None) -> TrainingRun:
        from bincli.backends.local.launcher import train_locally

        run_dir, log_path = train_locally(self.cfg.train, self.cfg.workdir, hp, split, from_tune=from_tune,
                                          fresh=fresh, console=console, live=live, run_dir=run_dir)
        return TrainingRun(run_dir, log_path)

    def tune(self, fixed: set[str], console: Any, *, wait: bool = True, stop: bool = False) -> dict[str, Any]:
        from bincli.backends.local.tuner import run_tune

        # wait/stop: the tune step has refused them already (capability table: sagemaker only)

        return run_tune(self.cfg, fixed, console)

    def deploy(self, model: Path | None, update: bool, foreground: bool) -> dict[str, Any]:
        from bincli.backends.local.endpoint import deploy

        self.require_deploy_config()
        return deploy(self.cfg, model, update=update, foreground=foreground)

    def teardown(self, name: str | None) -> dict[str, Any]:
        from bincli.backends.local.endpoint import teardown

        return teardown(self.cfg, name)

    def endpoint_status(self) -> dict[str, Any] | None:
        from bincli.backends.local.endpoint import ping, running_servers, servers_of
        from bincli.backends.records import recorded_endpoint
        from bincli.state import State

        record = recorded_endpoint(State(self.cfg.workdir), backend="local")
        if record is None:
            return None
        up = running_servers(record)  # server processes: the local analogue of instances
        # A live process may still not serve (stopped, wedged): only an answer to /ping says it does.
        alive = bool(up and record.get("url")) and ping(record["url"], timeout=PING_TIMEOUT_S)
        return {"name": record["name"], "status": "running" if up else "not running", "serving": bool(up),
                "alive": alive, "url": record.get("url"), "instances": up, "desired_instances": len(servers_of(record))}

    def runtime_client(self, endpoint: str | None, endpoint_url: str | None) -> LocalEndpointClient:
        from bincli.backends.local.client import LocalEndpointClient
        from bincli.backends.local.endpoint import running_endpoint
        from bincli.backends.records import endpoint_to_call
        from bincli.state import State

        if endpoint_url is None:
            record = running_endpoint(self.cfg, endpoint)
            name, url = record["name"], record["url"]
        else:
            name, url = endpoint_to_call(State(self.cfg.workdir), endpoint, endpoint_url,
                                         self.cfg.deploy.name), endpoint_url
        return LocalEndpointClient(name, url, timeout=self.cfg.predict.timeout)

    def upload(self) -> dict[str, Any]:
        from bincli.data.upload import run_upload

        # No s3_uri: the local folders are the channels (nothing moves).
        return run_upload(self.cfg.upload, self.cfg.workdir, require_s3=False, region=self.cfg.sagemaker.region)

    def doctor(self) -> list[Check]:
        from bincli.backends.local.doctor import doctor

        return doctor(self.cfg)
