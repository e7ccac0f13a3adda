"""`bincli deploy` / `teardown` on backend sagemaker: a real-time SageMaker endpoint, with boto3.

deploy puts the packaged model.tar.gz in S3 (the one `train` uploaded, or uploads the local one),
creates a SageMaker model (AWS's PyTorch inference image; our code/inference.py is its handler),
an endpoint config and the endpoint, records every name in state before waiting, then waits for
InService. teardown deletes exactly those names (endpoint, then config, then model); a name that
is already gone is not an error, so a second teardown finds nothing to remove.

(boto3, not the v3 SDK's resource classes: those crash on moto's replies; see SAGEMAKER.md.)
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bincli.backends.records import nothing_to_remove, recorded_endpoint
from bincli.backends.sagemaker.session import (
    artifacts_location,
    aws_error,
    boto_session,
    is_not_found,
    role_arn,
    upload_model,
)
from bincli.config import Config
from bincli.console import err
from bincli.core.contract import CODE_DIR, INFERENCE_SCRIPT
from bincli.errors import BincliError, ConfigError, StateError
from bincli.state import State

MODEL_DIR_IN_CONTAINER = "/opt/ml/model"


def deploy_sagemaker(cfg: Config, model: Path | None = None) -> dict[str, Any]:
    """Create the endpoint for the trained model and wait until it is InService."""
    state = State(cfg.workdir)
    existing = state.outputs("deploy")
    if existing is not None:
        raise BincliError(f"endpoint '{existing['name']}' is already deployed from {cfg.workdir}",
                          hint="'bincli teardown' first (one endpoint per workspace)")
    sm_cfg = cfg.sagemaker
    session = boto_session(sm_cfg)
    region = session.region_name
    role = role_arn(sm_cfg)
    model_s3 = _model_in_s3(cfg, state, model, region)
    image = sm_cfg.inference_image or _default_image(cfg, region)
    name = cfg.deploy.name
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    model_name = config_name = f"{name}-{stamp}"[:63]
    sm = session.client("sagemaker")
    record = {"backend": "sagemaker", "name": name, "region": region, "model_s3": model_s3, "image": image,
              "models": [], "endpoint_configs": [], "instance_type": sm_cfg.deploy_instance_type,
              "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        sm.create_model(ModelName=model_name, ExecutionRoleArn=role, PrimaryContainer={
            "Image": image, "ModelDataUrl": model_s3,
            "Environment": {"SAGEMAKER_PROGRAM": INFERENCE_SCRIPT,
                            "SAGEMAKER_SUBMIT_DIRECTORY": f"{MODEL_DIR_IN_CONTAINER}/{CODE_DIR}",
                            "SAGEMAKER_REGION": region}})
        record["models"].append(model_name)
        state.record("deploy", record)  # from here on, teardown knows what to delete
        sm.create_endpoint_config(EndpointConfigName=config_name, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": model_name, "InstanceType": sm_cfg.deploy_instance_type,
            "InitialInstanceCount": sm_cfg.deploy_instance_count}])
        record["endpoint_configs"].append(config_name)
        state.record("deploy", record)
        sm.create_endpoint(EndpointName=name, EndpointConfigName=config_name)
        record["endpoint"] = name
        state.record("deploy", record)
    except Exception as exc:
        raise aws_error(exc, f"creating endpoint '{name}'") from None
    err.print(f"creating endpoint '{name}' ({sm_cfg.deploy_instance_count} x {sm_cfg.deploy_instance_type}); "
              "this takes a few minutes", markup=False, soft_wrap=True)
    status = _wait_in_service(sm, name, sm_cfg.poll_seconds, sm_cfg.deploy_timeout_minutes * 60)
    record["status"] = status
    state.record("deploy", record)
    return {**record, "action": "created"}


def teardown_sagemaker(cfg: Config, name: str | None = None) -> dict[str, Any]:
    """Delete what deploy recorded (endpoint, configs, models); nothing else."""
    state = State(cfg.workdir)
    record = recorded_endpoint(state, name, backend="sagemaker")
    if record is None:
        return nothing_to_remove(cfg.workdir, name)
    from botocore.config import Config as BotoConfig

    # The record's region: the one the endpoint is in, whatever the config or environment says now.
    sm = boto_session(cfg.sagemaker, region=record.get("region")).client(
        "sagemaker", config=BotoConfig(retries={"mode": "standard"}))
    removed = []
    steps = ([("endpoint", sm.delete_endpoint, {"EndpointName": record["endpoint"]})] if record.get("endpoint") else [])
    steps += [("endpoint config", sm.delete_endpoint_config, {"EndpointConfigName": n})
              for n in record.get("endpoint_configs", [])]
    steps += [("model", sm.delete_model, {"ModelName": n}) for n in record.get("models", [])]
    for kind, delete, args in steps:
        what = f"{kind} {next(iter(args.values()))}"
        try:
            delete(**args)
            removed.append(what)
        except Exception as exc:
            if not is_not_found(exc):
                raise aws_error(exc, f"deleting {what}") from None
    state.forget("deploy")
    removed.append("state record 'deploy'")
    return {"name": record["name"], "removed": removed, "message": f"removed endpoint '{record['name']}'"}


def _model_in_s3(cfg: Config, state: State, model: Path | None, region: str) -> str:
    """The S3 URI of the packaged model: train's upload, else the local archive uploaded now."""
    from bincli.artifacts.modeltar import read_model_info

    train = state.outputs("train") or {}
    if model is None and cfg.deploy.model is None and train.get("model_s3"):
        return train["model_s3"]
    local = Path(model or cfg.deploy.model or train.get("model") or "")
    if not local.is_file():
        raise StateError("no model to deploy: 'bincli train' has not run in this workspace",
                         hint="run 'bincli train', or pass --model path/to/model.tar.gz")
    read_model_info(local)  # a sound archive before anything is created
    bucket, prefix = artifacts_location(cfg.sagemaker, state.outputs("upload"))
    if not bucket:
        raise ConfigError("sagemaker.bucket: required to put the model in S3 for the endpoint",
                          hint="set sagemaker.bucket, or run 'bincli upload --s3-uri s3://bucket/prefix' first")
    return upload_model(local, bucket, prefix, f"{cfg.deploy.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}", region)


def _default_image(cfg: Config, region: str) -> str:
    from bincli.backends.sagemaker.session import require_sdk

    require_sdk()
    from sagemaker.core import image_uris

    return image_uris.retrieve(framework="pytorch", region=region, version=cfg.sagemaker.inference_framework_version,
                               py_version="py312", instance_type=cfg.sagemaker.deploy_instance_type,
                               image_scope="inference")


def _wait_in_service(sm: Any, name: str, poll_seconds: float, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            desc = sm.describe_endpoint(EndpointName=name)
        except Exception as exc:
            raise aws_error(exc, f"endpoint '{name}'") from None
        status = desc["EndpointStatus"]
        if status == "InService":
            return status
        if status in ("Failed", "OutOfService"):
            raise BincliError(f"endpoint '{name}' {status}: {desc.get('FailureReason', 'no reason given')}",
                              hint="see its CloudWatch logs (/aws/sagemaker/Endpoints); 'bincli teardown' removes it")
        if time.monotonic() > deadline:
            raise BincliError(f"endpoint '{name}' still {status} after {timeout / 60:.0f} min",
                              hint="'bincli status' later, or 'bincli teardown' to remove it")
        time.sleep(poll_seconds)  # polling a remote API
