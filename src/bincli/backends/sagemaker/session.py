"""The AWS side of backend sagemaker: the SDK import, the boto3 session, the role and the bucket.

Endpoints and credentials come from boto3's standard chain (AWS_ENDPOINT_URL, AWS_PROFILE, ...),
which is also how tests aim everything at a moto server.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bincli.config import SageMakerConfig
from bincli.core.fileio import file_sha256
from bincli.errors import BincliError, ConfigError, UsageError


def require_sdk() -> None:
    """The SageMaker SDK v3 is an optional extra: a clear error where it is missing."""
    try:
        import sagemaker.train  # noqa: F401
    except ImportError:
        raise UsageError("backend sagemaker needs the SageMaker Python SDK v3, which is not installed",
                         hint="pip install 'bincli[sagemaker]'") from None


def boto_session(cfg: SageMakerConfig, region: str | None = None) -> Any:
    """A boto3 session in `region`, else the configured one, else boto3's own; a clear error if none."""
    import boto3

    region = region or cfg.region
    session = boto3.Session(region_name=region) if region else boto3.Session()
    if not session.region_name:
        raise ConfigError("sagemaker.region: no AWS region set",
                          hint="set sagemaker.region, AWS_DEFAULT_REGION or a profile with a region")
    return session


def split_in_s3(state: Any, step: str) -> dict[str, Any]:
    """The 'upload' record, which must have put the split in S3: SageMaker jobs read only from there."""
    from bincli.errors import StateError

    upload = state.require("upload", needed_by=f"{step} on backend sagemaker")
    if upload.get("backend") != "s3":
        raise StateError(f"the last 'bincli upload' kept the split on this machine; SageMaker {step}s from S3",
                         hint="run 'bincli upload --s3-uri s3://bucket/prefix' first")
    return upload


def role_arn(cfg: SageMakerConfig) -> str:
    """The execution role, which must be given. bincli does not guess it from the caller: outside a
    SageMaker notebook or Studio (the only places the SDK's get_execution_role finds one) the caller is
    a user or an SSO/CI role that SageMaker may not assume, and the job would fail only after it was
    created. configs/sagemaker.yaml has the trust policy and the permissions the role needs."""
    if not cfg.role_arn:
        raise ConfigError("sagemaker.role_arn: required to run SageMaker jobs and endpoints",
                          hint="make a role that trusts sagemaker.amazonaws.com (its policy: configs/sagemaker.yaml), "
                               "then --set sagemaker.role_arn=arn:aws:iam::<account>:role/<role>")
    return cfg.role_arn


def require_buckets_in_region(buckets: Iterable[str], region: str, console=None) -> None:
    """SageMaker jobs read their channels and write artifacts in their own region only; a bucket
    elsewhere fails the job after it was created. One line before anything is (S3 GetBucketLocation)."""
    from bincli.data.s3 import error_code, make_client

    s3 = make_client(region=region)
    for bucket in sorted(set(buckets)):
        try:
            location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
        except Exception as exc:
            if error_code(exc) in ("AccessDenied", "403") and console is not None:
                # s3:GetBucketLocation is not needed for anything else: say so, do not block on it.
                console.print(f"warning: could not check the region of s3://{bucket} (access denied to "
                              f"GetBucketLocation); it must be {region}", markup=False, soft_wrap=True)
                continue
            raise aws_error(exc, f"checking the region of s3://{bucket}") from None
        # GetBucketLocation answers None for us-east-1 and the legacy "EU" for eu-west-1.
        found = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)
        if found != region:
            raise ConfigError(f"s3://{bucket} is in {found} but sagemaker.region is {region}: SageMaker reads and "
                              "writes S3 in its own region only",
                              hint=f"--set sagemaker.region={found}, or use a bucket in {region}")


def upload_weights(path: Path, bucket: str, prefix: str, region: str) -> str:
    """A local --weights-file, as the training job's weights channel: uploaded once per content to
    s3://bucket/<prefix>/sagemaker/weights/<sha256>/<name>; returns that channel's S3 prefix."""

    from bincli.data.s3 import error_code, join_key, make_client

    if not path.is_file():
        raise ConfigError(f"train.weights_file: {path} is not a file", hint="give the path of a state_dict (.pth)")
    digest = file_sha256(path)
    folder = join_key(prefix, "sagemaker", "weights", digest[:16])
    key = join_key(folder, path.name)
    s3 = make_client(region=region)
    try:
        try:
            present = s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == path.stat().st_size
        except Exception as exc:
            if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                raise
            present = False
        if not present:
            s3.upload_file(str(path), bucket, key)
    except Exception as exc:
        raise aws_error(exc, f"uploading {path} to s3://{bucket}/{key}") from None
    return f"s3://{bucket}/{folder}/"


def aws_error(exc: BaseException, what: str) -> BincliError:
    """One line for an AWS API failure (credentials, validation, limits, access), naming the service
    and, for a refusal, the IAM action that is missing."""
    from botocore.exceptions import ClientError

    from bincli.data.s3 import ACCESS_DENIED, error_code, explain, service_of

    if type(exc).__name__ == "RoleValidationError":  # the SDK's own role check (ModelTrainer)
        return _role_refused(exc, what)
    if not isinstance(exc, ClientError):
        return explain(exc, what)
    code = error_code(exc)
    if code == "ValidationException":
        return BincliError(f"{what}: {exc.response['Error'].get('Message', 'rejected by SageMaker')}")
    error = explain(exc, what)
    service, _ = service_of(exc)
    if code in ACCESS_DENIED and service and code not in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
        from bincli.backends.sagemaker.permissions import iam_action

        action = iam_action(service, exc.operation_name)
        error.hint = (f"your IAM policy needs {action} (policies/caller-policy.json lists all bincli needs; "
                      "'bincli doctor' checks them)")
    elif code == "ResourceLimitExceeded":
        error.hint = ("a SageMaker quota is too low (new accounts start at 0 for GPU instances): 'bincli doctor' "
                      "shows each quota bincli needs and the command that asks for more")
    return error


def _role_refused(exc: BaseException, what: str) -> BincliError:
    """The SDK's RoleValidationError (many lines) as one: the role and what it lacks."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    found = [line for line in lines if line.startswith(("Missing permissions:", "Its trust policy"))]
    why = found[0].rstrip(".") if found else (lines[0] if lines else "refused")
    head = lines[0].rstrip(".") if lines else "the execution role"
    return BincliError(f"{what}: {head}: {why}",
                       hint="'bincli doctor --write-policies DIR' writes the role's policy (DIR/execution-role-policy"
                            ".json, with what the SDK checks); 'bincli doctor' shows what the role lacks")


def is_not_found(exc: BaseException) -> bool:
    """True only when SageMaker says the resource does not exist. Anything else (throttling, expired
    credentials, access denied) is not "not found", and must not be treated as if it were."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    if code in ("ResourceNotFound", "ResourceNotFoundException"):
        return True
    # SageMaker answers a missing training job, model, endpoint config or endpoint with a
    # ValidationException whose message says so ("Requested resource not found." for a deleted
    # training job); other ValidationExceptions are real errors.
    return code == "ValidationException" and any(
        words in message for words in ("Could not find", "does not exist", "Requested resource not found"))


def artifacts_location(cfg: SageMakerConfig, upload: dict[str, Any] | None) -> tuple[str | None, str]:
    """(bucket, prefix) for what bincli puts in S3 besides the data: sagemaker.bucket, else the
    bucket the split was uploaded to; under the upload's prefix. The bucket is None if neither."""
    from bincli.data.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(upload["uri"]) if upload and upload.get("backend") == "s3" else (None, "")
    return cfg.bucket or bucket, prefix


def upload_model(tar: Path, bucket: str, prefix: str, name: str, region: str) -> str:
    """A packaged model.tar.gz to s3://bucket/<prefix>/sagemaker/models/<name>/model.tar.gz; returns that URI."""
    from bincli.data.s3 import join_key, make_client
    from bincli.layout import MODEL_TAR

    key = join_key(prefix, "sagemaker", "models", name, MODEL_TAR)
    try:
        make_client(region=region).upload_file(str(tar), bucket, key)
    except Exception as exc:
        raise aws_error(exc, f"uploading {tar} to s3://{bucket}/{key}") from None
    return f"s3://{bucket}/{key}"


WORKSPACE_TAG = "bincli:workspace"


def resource_tags(workdir: str | Path, step: str) -> list[dict[str, str]]:
    """The tags every SageMaker resource bincli creates carries, so `teardown --all` can find
    leftovers: `bincli:workspace` (workspace_tag) and `bincli:step` (train, tune, deploy)."""
    return [{"Key": WORKSPACE_TAG, "Value": workspace_tag(workdir)}, {"Key": "bincli:step", "Value": step}]


def workspace_tag(workdir: str | Path) -> str:
    """`<workdir's name>-<workspace id>`: the id (bincli.workspace) makes it unique, the name readable."""
    from bincli.workspace import workspace_id

    return f"{_tag_name(workdir)}-{workspace_id(workdir)}"


def legacy_workspace_tag(workdir: str | Path) -> str:
    """The tag value bincli used before workspace ids: the name and a hash of the absolute path, the
    same on every machine with that path. Only read, where a deploy record predates the id."""
    import hashlib

    path = Path(workdir).resolve()
    return f"{_tag_name(workdir)}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"


def _tag_name(workdir: str | Path) -> str:
    # Within SageMaker's tag-value alphabet.
    return "".join(c if c.isalnum() or c in "_.-" else "-" for c in Path(workdir).resolve().name)[:64] or "root"


def read_job_record(job_file: Path) -> dict[str, Any]:
    """A job record bincli wrote (<workdir>/train/sagemaker-job.json, tune/sagemaker-tuning-job.json),
    or {} when it is missing, unreadable or not an object: a broken record means "start afresh"."""
    import json

    try:
        record = json.loads(job_file.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}
