"""`bincli deploy` on backend sagemaker: a real-time (or serverless) SageMaker endpoint, with boto3.

deploy puts the packaged model.tar.gz in S3 (the one `train` uploaded, or uploads the local one),
creates a SageMaker model (AWS's PyTorch inference image; our code/inference.py is its handler),
an endpoint config and the endpoint, each tagged with the workspace, records every name (and the
scaling plan) in state before waiting, waits for InService, then registers autoscaling.

Ctrl-C or the wait's timeout leave the endpoint being created (it bills): the error says so, and
`deploy` run again waits for it and finishes (status, autoscaling); so does it for an endpoint whose
autoscaling could not be registered. `deploy --update` is in update.py.

(boto3, not the v3 SDK's resource classes: those crash on moto's replies; see SAGEMAKER.md.)
"""

from __future__ import annotations

import itertools
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bincli.backends.records import recorded_endpoint
from bincli.backends.sagemaker import scaling
from bincli.backends.sagemaker.session import (
    WORKSPACE_TAG,
    artifacts_location,
    aws_error,
    boto_session,
    is_not_found,
    require_buckets_in_region,
    resource_tags,
    role_arn,
    upload_model,
    workspace_tag,
)
from bincli.config import Config
from bincli.console import err
from bincli.core.contract import CODE_DIR, INFERENCE_SCRIPT
from bincli.core.fileio import file_sha256
from bincli.errors import BincliError, ConfigError, Interrupted, StateError
from bincli.state import State

MODEL_DIR_IN_CONTAINER = "/opt/ml/model"
MAX_NAME = 63  # SageMaker's limit for model, endpoint config and endpoint names
# Serverless endpoints run on CPU; the default image is chosen as for this CPU instance type.
SERVERLESS_IMAGE_AS_FOR = "ml.m5.large"
_GPU_INSTANCE = re.compile(r"^ml\.(p|g)\d")


def clients(cfg: Config, region: str | None = None) -> tuple[Any, Any]:
    """(sagemaker, application-autoscaling) clients in `region` (a record's), else the configured one."""
    from botocore.config import Config as BotoConfig

    session = boto_session(cfg.sagemaker, region=region)
    retries = BotoConfig(retries={"mode": "standard"})
    return session.client("sagemaker", config=retries), session.client("application-autoscaling", config=retries)


def tagging_client(cfg: Config, region: str | None = None) -> Any:
    """The Resource Groups Tagging API client in `region` (teardown --all finds resources by tag with it)."""
    from botocore.config import Config as BotoConfig

    return boto_session(cfg.sagemaker, region=region).client("resourcegroupstaggingapi",
                                                             config=BotoConfig(retries={"mode": "standard"}))


def deploy_sagemaker(cfg: Config, model: Path | None = None, update: bool = False) -> dict[str, Any]:
    """Create the endpoint (or, with update=True, put a new model on it); wait until InService.
    A deploy or update that stopped waiting (Ctrl-C, timeout) is finished instead."""
    from bincli.backends.sagemaker import update as updating

    state = State(cfg.workdir)
    existing = recorded_endpoint(state, backend="sagemaker")
    if existing is None:
        return _create(cfg, state, model)
    if not existing.get("endpoint"):
        raise StateError(f"endpoint '{existing['name']}' was never created (its deploy was interrupted)",
                         hint="'bincli teardown' removes what it left, then 'bincli deploy'")
    if existing.get("update"):
        return updating.finish_update(cfg, state, existing)
    if _unfinished(existing):
        return _finish_create(cfg, state, existing)
    if not update:
        raise BincliError(f"endpoint '{existing['name']}' is already deployed from {cfg.workdir}",
                          hint="--update puts the new model on it; 'bincli teardown' removes it")
    if existing["name"] != cfg.deploy.name:
        raise BincliError(f"endpoint '{existing['name']}' is deployed from {cfg.workdir}, not '{cfg.deploy.name}' "
                          "(one endpoint per workspace)",
                          hint=f"--endpoint {existing['name']}, or 'bincli teardown' first")
    return updating.update(cfg, state, existing, model)


def resource_name(base: str, stamp: str, taken: Any = ()) -> str:
    """`<base>-<stamp>` within 63 characters and never ending in '-' (SageMaker rejects both): the
    base is cut, never the stamp; `-2`, `-3`... when the name is taken (an update in the same second)."""
    for n in itertools.count(1):
        suffix = stamp if n == 1 else f"{stamp}-{n}"
        name = f"{base[:MAX_NAME - 1 - len(suffix)].rstrip('-')}-{suffix}"
        if name not in taken:
            return name
    raise AssertionError("unreachable")


# An endpoint answers requests in these states (an update swaps the model behind a serving endpoint).
SERVING_STATUSES = ("InService", "Updating", "SystemUpdating")


def endpoint_status(cfg: Config) -> dict[str, Any] | None:
    """The recorded endpoint as SageMaker sees it now: status, current and desired instance counts."""
    record = recorded_endpoint(State(cfg.workdir), backend="sagemaker")
    if record is None or not record.get("endpoint"):
        return None
    sm, _ = clients(cfg, record.get("region"))
    try:
        desc = sm.describe_endpoint(EndpointName=record["endpoint"])
    except Exception as exc:
        if is_not_found(exc):
            return {"name": record["endpoint"], "status": "not found", "serving": False}
        raise aws_error(exc, f"endpoint '{record['endpoint']}'") from None
    variant = (desc.get("ProductionVariants") or [{}])[0]
    out = {"name": record["endpoint"], "status": desc["EndpointStatus"],
           "serving": desc["EndpointStatus"] in SERVING_STATUSES, "endpoint_config": desc["EndpointConfigName"],
           "instances": variant.get("CurrentInstanceCount"), "desired_instances": variant.get("DesiredInstanceCount")}
    if variant.get("CurrentServerlessConfig"):
        out["serverless"] = variant["CurrentServerlessConfig"]
    if desc.get("FailureReason"):
        out["failure_reason"] = desc["FailureReason"]
    if not variant.get("CurrentServerlessConfig"):  # instance-hours so far (serverless bills per request)
        from bincli.backends.sagemaker.pricing import endpoint_cost

        out["cost_so_far"] = endpoint_cost(desc.get("CreationTime"), variant.get("CurrentInstanceCount"),
                                           record.get("instance_type"), sm.meta.region_name, cfg.sagemaker)
    return out


# ---------------------------------------------------------------- create
def _create(cfg: Config, state: State, model: Path | None) -> dict[str, Any]:
    sm_cfg, d = cfg.sagemaker, cfg.deploy
    sm, aas = clients(cfg)
    region = sm.meta.region_name
    role = role_arn(sm_cfg)
    image = inference_image(cfg, region)
    model_s3 = model_in_s3(cfg, state, model, region)
    name = d.name
    record: dict[str, Any] = {
        "backend": "sagemaker", "name": name, "region": region, "models": [], "endpoint_configs": [],
        "workspace": workspace_tag(cfg.workdir),  # what its resources' bincli:workspace tag says
        "model_sha256": model_sha256(cfg, state, model),
        "autoscaling": scaling.plan(name, d.autoscaling) if d.autoscaling else None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    try:
        _, config_name = model_and_config(cfg, sm, state, record, role, image, model_s3, instance_count(cfg, None))
    except BincliError:
        raise
    except Exception as exc:
        raise aws_error(exc, f"creating endpoint '{name}'") from None
    _create_endpoint(cfg, state, record, sm, config_name)
    err.print(f"creating endpoint '{name}' ({capacity(record)}); this takes a few minutes", markup=False,
              soft_wrap=True)
    return _in_service(cfg, state, record, sm, aas, "created")


def _create_endpoint(cfg: Config, state: State, record: dict[str, Any], sm: Any, config_name: str) -> None:
    """CreateEndpoint, its name recorded first: a call whose answer is lost (the endpoint made, bincli
    not told) leaves it recorded for teardown, which checks it is ours before deleting it. A retry
    that hears "already exists" goes on with it where it carries this workspace's tag and config."""
    name = record["name"]
    record["endpoint"] = name
    state.record("deploy", record, cfg.deploy.model_dump(mode="json"))
    try:
        sm.create_endpoint(EndpointName=name, EndpointConfigName=config_name,
                           Tags=resource_tags(cfg.workdir, "deploy"))
        return
    except Exception as exc:
        error, failed = exc, _refused(exc)
    if failed and _already_exists(error):
        if _made_by_us(sm, name, config_name, record["workspace"]):
            err.print(f"endpoint '{name}' already exists with this deploy's config and tag: an earlier try of "
                      "this request made it (its answer was lost); going on with it", markup=False, soft_wrap=True)
            return
        record.pop("endpoint")
        state.record("deploy", record, cfg.deploy.model_dump(mode="json"))
        raise BincliError(f"endpoint name '{name}' is taken by an endpoint this workspace did not make "
                          f"(no {WORKSPACE_TAG}={record['workspace']} and config {config_name})",
                          hint="--endpoint another-name; 'bincli teardown' removes the model and config "
                               "this deploy made") from None
    if failed:  # SageMaker answered no: nothing was made
        record.pop("endpoint")
        state.record("deploy", record, cfg.deploy.model_dump(mode="json"))
    raise aws_error(error, f"creating endpoint '{name}'") from None


def _refused(exc: BaseException) -> bool:
    """SageMaker answered (an error reply), as opposed to a call whose outcome is unknown."""
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError)


def _already_exists(exc: BaseException) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    return error.get("Code") == "ValidationException" and "already exist" in error.get("Message", "")


def _made_by_us(sm: Any, name: str, config_name: str, workspace: str) -> bool:
    """The endpoint of that name runs the config just made and carries this workspace's tag."""
    try:
        desc = sm.describe_endpoint(EndpointName=name)
        tags = sm.list_tags(ResourceArn=desc["EndpointArn"]).get("Tags", [])
    except Exception as exc:
        raise aws_error(exc, f"checking endpoint '{name}', which already exists") from None
    tagged = any(t.get("Key") == WORKSPACE_TAG and t.get("Value") == workspace for t in tags)
    return tagged and desc.get("EndpointConfigName") == config_name


def _unfinished(record: dict[str, Any]) -> bool:
    """A deploy that stopped before the endpoint was InService with its autoscaling registered."""
    plan = record.get("autoscaling")
    return record.get("status") != "InService" or bool(plan and not plan.get("registered"))


def _finish_create(cfg: Config, state: State, record: dict[str, Any]) -> dict[str, Any]:
    """An earlier deploy's endpoint: wait until InService, then record it and register autoscaling."""
    sm, aas = clients(cfg, record.get("region"))
    err.print(f"endpoint '{record['endpoint']}' from an earlier deploy: finishing it", markup=False, soft_wrap=True)
    return _in_service(cfg, state, record, sm, aas, "finished")


def _in_service(cfg: Config, state: State, record: dict[str, Any], sm: Any, aas: Any, action: str) -> dict[str, Any]:
    name = record["endpoint"]
    desc = settle(cfg, sm, name, "created")
    if desc["EndpointStatus"] != "InService":
        raise BincliError(f"endpoint '{name}' {desc['EndpointStatus']}: {desc.get('FailureReason', 'no reason given')}",
                          hint="see its CloudWatch logs (/aws/sagemaker/Endpoints); 'bincli teardown' removes it")
    record["status"] = "InService"
    state.record("deploy", record, cfg.deploy.model_dump(mode="json"))
    register_scaling(aas, state, record, cfg)
    return {**record, "action": action}


def model_and_config(cfg: Config, sm: Any, state: State, record: dict[str, Any], role: str, image: str,
                     model_s3: str, count: int) -> tuple[str, str]:
    """A new SageMaker model and endpoint config for `model_s3`, each added to the record (and state)
    as soon as it exists, so teardown can always find it."""
    d, sm_cfg = cfg.deploy, cfg.sagemaker
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    taken = {*record["models"], *record["endpoint_configs"]}
    model_name = config_name = resource_name(record["name"], stamp, taken)
    tags = resource_tags(cfg.workdir, "deploy")
    env = {"SAGEMAKER_PROGRAM": INFERENCE_SCRIPT, "SAGEMAKER_SUBMIT_DIRECTORY": f"{MODEL_DIR_IN_CONTAINER}/{CODE_DIR}",
           "SAGEMAKER_REGION": record["region"]}
    workers = _model_server_workers(cfg)
    if workers is not None:
        env["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)
    sm.create_model(ModelName=model_name, ExecutionRoleArn=role, Tags=tags,
                    PrimaryContainer={"Image": image, "ModelDataUrl": model_s3, "Environment": env})
    record["models"].append(model_name)
    state.record("deploy", record, cfg.deploy.model_dump(mode="json"))  # from here on, teardown knows what to delete
    variant: dict[str, Any] = {"VariantName": scaling.VARIANT, "ModelName": model_name}
    if d.serverless is not None:
        s = d.serverless
        variant["ServerlessConfig"] = {"MemorySizeInMB": s.memory_mb, "MaxConcurrency": s.max_concurrency}
        if s.provisioned_concurrency is not None:
            variant["ServerlessConfig"]["ProvisionedConcurrency"] = s.provisioned_concurrency
    else:
        variant.update(InstanceType=sm_cfg.deploy_instance_type, InitialInstanceCount=count)
    sm.create_endpoint_config(EndpointConfigName=config_name, ProductionVariants=[variant], Tags=tags)
    record["endpoint_configs"].append(config_name)
    record.update(model_s3=model_s3, image=image, serverless=variant.get("ServerlessConfig"),
                  instance_type=None if d.serverless else sm_cfg.deploy_instance_type,
                  instance_count=None if d.serverless else count, model_server_workers=workers)
    state.record("deploy", record, cfg.deploy.model_dump(mode="json"))
    return model_name, config_name


def _model_server_workers(cfg: Config) -> int | None:
    """SAGEMAKER_MODEL_SERVER_WORKERS: the config's, else 1 on CPU (TorchServe would start one worker
    per core, and on two cores two workers took ~700 ms a photo against 75 ms for one), else unset
    on GPU instances (the container's default: one per GPU)."""
    if cfg.deploy.model_server_workers is not None:
        return cfg.deploy.model_server_workers
    if cfg.deploy.serverless is None and _GPU_INSTANCE.match(cfg.sagemaker.deploy_instance_type):
        return None
    return 1


def instance_count(cfg: Config, running: int | None) -> int:
    """Instances the new config starts with: the configured count, or with autoscaling what runs now
    (an update must not shrink an endpoint that has scaled out), within min..max."""
    a = cfg.deploy.autoscaling
    count = running if a and running else cfg.sagemaker.deploy_instance_count
    return min(max(count, a.min_instances), a.max_instances) if a else count


def capacity(record: dict[str, Any]) -> str:
    if record.get("serverless"):
        s = record["serverless"]
        return f"serverless, {s['MemorySizeInMB']} MB, up to {s['MaxConcurrency']} at once"
    a = record.get("autoscaling")
    scale = f", autoscaling {a['min_instances']}-{a['max_instances']}" if a else ""
    return f"{record['instance_count']} x {record['instance_type']}{scale}"


def register_scaling(aas: Any, state: State, record: dict[str, Any], cfg: Config) -> None:
    p = record.get("autoscaling")
    if not p:
        return
    try:
        scaling.register(aas, p)
    except Exception as exc:
        error = aws_error(exc, f"registering autoscaling of endpoint '{record['name']}' (it is up, at a fixed "
                          f"{record.get('instance_count')} instance(s))")
        error.hint = (f"{error.hint}; then " if error.hint else "") + \
            "'bincli deploy' again registers it ('bincli teardown' removes the endpoint)"
        raise error from None
    p["registered"] = True
    state.record("deploy", record, cfg.deploy.model_dump(mode="json"))


# ---------------------------------------------------------------- shared
def inference_image(cfg: Config, region: str) -> str:
    image = cfg.sagemaker.inference_image
    if cfg.deploy.serverless is not None and image and "gpu" in image.rsplit(":", 1)[-1]:
        raise ConfigError(f"sagemaker.inference_image: a serverless endpoint runs on CPU only; {image} is a GPU image",
                          hint="set a CPU image, or null for AWS's CPU PyTorch inference image")
    return image or _default_image(cfg, region)


def model_sha256(cfg: Config, state: State, model: Path | None) -> str | None:
    """The sha256 of the archive deployed: the one named, else train's (its record names it)."""
    chosen = model or cfg.deploy.model
    if chosen is None:
        return (state.outputs("train") or {}).get("model_sha256")
    return file_sha256(chosen)


def model_in_s3(cfg: Config, state: State, model: Path | None, region: str) -> str:
    """The S3 URI of the packaged model: train's upload, else the local archive uploaded now."""
    from bincli.artifacts.modeltar import read_model_info
    from bincli.data.s3 import parse_s3_uri

    train = state.outputs("train") or {}
    if model is None and cfg.deploy.model is None and train.get("model_s3"):
        # A model in another region's bucket fails the endpoint only after it was created (and billed).
        require_buckets_in_region([parse_s3_uri(train["model_s3"])[0]], region, err)
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
    require_buckets_in_region([bucket], region, err)
    return upload_model(local, bucket, prefix, f"{cfg.deploy.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}", region)


def _default_image(cfg: Config, region: str) -> str:
    from bincli.backends.sagemaker.session import require_sdk

    require_sdk()
    from sagemaker.core import image_uris

    from bincli.pytorch_images import py_version

    instance_type = SERVERLESS_IMAGE_AS_FOR if cfg.deploy.serverless else cfg.sagemaker.deploy_instance_type
    return image_uris.retrieve(framework="pytorch", region=region, version=cfg.sagemaker.inference_framework_version,
                               py_version=py_version(cfg.sagemaker.inference_framework_version, "inference"),
                               instance_type=instance_type, image_scope="inference")


def describe(sm: Any, name: str) -> dict[str, Any]:
    try:
        return sm.describe_endpoint(EndpointName=name)
    except Exception as exc:
        if is_not_found(exc):
            raise StateError(f"endpoint '{name}' is recorded in this workspace but gone from SageMaker",
                             hint="'bincli teardown' forgets it (and deletes its models and configs), then "
                                  "'bincli deploy'") from None
        raise aws_error(exc, f"endpoint '{name}'") from None


def settle(cfg: Config, sm: Any, name: str, doing: str) -> dict[str, Any]:
    """Describe the endpoint until it settles (InService, Failed, OutOfService); its last description.
    Ctrl-C or the timeout leave it being `doing` (created, updated) on SageMaker, billing: the error
    says so and how to finish. The record, written before the wait, is what a rerun finishes."""
    poll, timeout = cfg.sagemaker.poll_seconds, cfg.sagemaker.deploy_timeout_minutes * 60
    finish = "'bincli deploy' again waits for it and finishes the deploy (autoscaling included); " \
             "'bincli teardown' removes it"
    deadline = time.monotonic() + timeout
    try:
        while True:
            desc = describe(sm, name)
            if desc["EndpointStatus"] in ("InService", "Failed", "OutOfService"):
                return desc
            if time.monotonic() > deadline:
                raise BincliError(f"endpoint '{name}' still {desc['EndpointStatus']} after {timeout / 60:.0f} min: "
                                  f"it is still being {doing} on SageMaker, and bills", hint=finish)
            time.sleep(poll)  # polling a remote API
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting: endpoint '{name}' is still being {doing} on SageMaker, and bills",
                          hint=finish) from None
