"""The AWS side of backend sagemaker: the SDK import, the boto3 session, the role and the bucket.

Endpoints and credentials come from boto3's standard chain (AWS_ENDPOINT_URL, AWS_PROFILE, ...),
which is also how tests aim everything at a moto server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bincli.config import SageMakerConfig
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


def role_arn(cfg: SageMakerConfig) -> str:
    if not cfg.role_arn:
        raise ConfigError("sagemaker.role_arn: required to run SageMaker jobs and endpoints",
                          hint="--set sagemaker.role_arn=arn:aws:iam::<account>:role/<role>")
    return cfg.role_arn


def aws_error(exc: BaseException, what: str) -> BincliError:
    """One line for an AWS API failure (credentials, validation, limits), with the service's message."""
    from botocore.exceptions import ClientError

    from bincli.data.s3 import explain

    if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == "ValidationException":
        return BincliError(f"{what}: {exc.response['Error'].get('Message', 'rejected by SageMaker')}")
    return explain(exc, what)


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
    # ValidationException whose message says so; other ValidationExceptions are real errors.
    return code == "ValidationException" and ("Could not find" in message or "does not exist" in message)


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


def resource_tags(workdir: str | Path, step: str) -> list[dict[str, str]]:
    """The tags every SageMaker resource bincli creates carries, so `teardown --all` can find
    leftovers: `bincli:workspace` (the workdir's name and a hash of its absolute path, unique per
    workspace and within SageMaker's tag-value alphabet) and `bincli:step` (train, tune, deploy)."""
    import hashlib

    path = Path(workdir).resolve()
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in path.name)[:64] or "root"
    workspace = f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    return [{"Key": "bincli:workspace", "Value": workspace}, {"Key": "bincli:step", "Value": step}]
