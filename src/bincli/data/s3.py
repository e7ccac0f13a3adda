"""One way to make S3 clients: shared by download, upload and the SageMaker backend.

A client is thread-safe; make ONE per step and share it across the step's thread pool, with a
connection pool as large as the pool (botocore's default of 10 connections would serialise 32
workers on 10 sockets). Retries use botocore's "standard" mode: throttling, 5xx and connection
errors are retried with exponential backoff and jitter.

Endpoints: `endpoint_url` if given, else boto3's own chain (`AWS_ENDPOINT_URL_S3`,
`AWS_ENDPOINT_URL`, the config file), which is how tests aim bincli at a moto server.
boto3 is imported inside the functions so `bincli --help` stays light.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

from bincli.errors import BincliError, ConfigError

_S3_URI = re.compile(r"^s3://([^/]+)/?(.*)$")


def make_client(
    *,
    endpoint_url: str | None = None,
    unsigned: bool = False,
    region: str | None = None,
    pool_size: int = 10,
    retries: int = 5,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    lean: bool = False,
) -> Any:
    """A boto3 S3 client. `unsigned` for public buckets (no credentials needed or used).

    `lean` trims client CPU per request for bulk transfers whose parameters bincli builds itself:
    no client-side parameter validation, and timestamps (LastModified) left as the server's
    strings instead of being parsed by dateutil (the trick awscli uses): about 10% of the
    client's CPU per small GET."""
    import boto3
    import botocore
    from botocore.config import Config

    custom_endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        signature_version=botocore.UNSIGNED if unsigned else None,
        max_pool_connections=max(10, pool_size),
        retries={"mode": "standard", "total_max_attempts": retries + 1},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
        # S3-compatible servers (moto, MinIO) want path-style URLs; AWS itself picks what fits.
        s3={"addressing_style": "path"} if custom_endpoint else None,
        parameter_validation=not lean,
    )
    session = boto3.session.Session()  # one session per client: boto3's default session is not thread-safe
    if lean:
        session._session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=lambda value: value)
    region = region or session.region_name or "us-east-1"
    return session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b/` -> ("bucket", "a/b") (prefix without slashes at either end)."""
    m = _S3_URI.match(uri or "")
    if not m or not m.group(1):
        raise ConfigError(f"{uri!r}: expected an s3://bucket/prefix URI")
    return m.group(1), m.group(2).strip("/")


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError ("NoSuchKey", "404", "SlowDown"), else None."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    return None


ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "403", "UnauthorizedOperation",
                           "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "ExpiredTokenException",
                           "InvalidClientTokenId", "UnrecognizedClientException"})
THROTTLED = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "SlowDown",
                       "RequestLimitExceeded", "ProvisionedThroughputExceededException"})
# The services bincli calls, in the order an operation name is looked up in (boto3's names).
SERVICES = ("s3", "sagemaker", "sagemaker-runtime", "iam", "sts", "application-autoscaling", "logs",
            "service-quotas", "resourcegroupstaggingapi")


def service_of(exc: BaseException) -> tuple[str | None, str]:
    """(boto3's service name, its display name: "SageMaker", "IAM", ...) of a failed call, from the
    ClientError's operation name; (None, "AWS") when no service bincli calls has that operation."""
    return _service_by_operation().get(getattr(exc, "operation_name", None) or "", (None, "AWS"))


@functools.cache  # the services' API models are read once, and only when an error is explained
def _service_by_operation() -> dict[str, tuple[str, str]]:
    import botocore.session

    session = botocore.session.get_session()
    found: dict[str, tuple[str, str]] = {}
    for name in reversed(SERVICES):  # the first service listed wins an operation two of them have
        model = session.get_service_model(name)
        found.update(dict.fromkeys(model.operation_names, (name, model.metadata.get("serviceId", name))))
    return found


def explain(exc: BaseException, what: str) -> BincliError:
    """A one-line BincliError for an AWS failure that stops a whole step, naming the service that
    refused (S3, SageMaker, IAM, ...) and what to do about the usual causes."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return BincliError(f"{what}: no AWS credentials found",
                           hint="set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or run 'aws configure')")
    if isinstance(exc, NoRegionError):
        return BincliError(f"{what}: no AWS region set", hint="set AWS_DEFAULT_REGION or sagemaker.region")
    if isinstance(exc, EndpointConnectionError):
        return BincliError(f"{what}: cannot connect to {exc.kwargs.get('endpoint_url', 'the AWS endpoint')}",
                           hint="check the endpoint_url / AWS_ENDPOINT_URL and that the server is running")
    if isinstance(exc, ClientError):
        code = error_code(exc) or "?"
        message = " ".join(str(exc.response.get("Error", {}).get("Message") or "").split())
        _, service = service_of(exc)
        operation = getattr(exc, "operation_name", None) or "the request"
        if code == "NoSuchBucket":
            return BincliError(f"{what}: the bucket does not exist ({message or code})",
                               hint="create it first, or fix the bucket in the s3:// URI")
        if code in ACCESS_DENIED:
            return BincliError(f"{what}: access denied by {service} to {operation} ({code})",
                               hint="check the AWS credentials, and that your IAM policy (or the bucket's) allows it")
        if code in THROTTLED:
            return BincliError(f"{what}: {service} is throttling {operation} ({code})",
                               hint="too many requests at once in this account: wait a minute and run it again")
        if code == "ResourceLimitExceeded":
            return BincliError(f"{what}: {service} limit reached: {message or code}",
                               hint="an account quota is too low: 'bincli doctor' shows the quotas and how to "
                                    "raise one (Service Quotas)")
        return BincliError(f"{what}: {service} error {code}: {message}".rstrip(": "))
    return BincliError(f"{what}: {type(exc).__name__}: {exc}")


def list_objects(client: Any, bucket: str, prefix: str, split_after: list[str] | None = None,
                 map_fn: Any = map, on_page: Any = None, project: Any = None, page_size: int = 1000) -> list[Any]:
    """Every object under `prefix`, in key order: {"Key", "Size", "ETag", ...} as S3 lists them,
    or `project(obj)` of each where that is not None (keep only what is needed: 536K listed dicts
    would take ~250 MB).

    A big listing is read in parallel: after the first two pages, the rest of the key space is cut
    at `split_after` (sorted key boundaries, e.g. `metadata/10`, `metadata/11`, ...) and each
    range is paged on its own through `map_fn` (a thread pool's map). 536K ABID keys take
    ~540 sequential page requests; cut in 100 ranges they take about as long as 11.
    `on_page()` is called once per request (for request counting)."""
    lister = _Lister(client, bucket, prefix, page_size, on_page, project)
    found: list[Any] = []
    token = None
    last = ""
    for _ in range(2):  # two pages one after the other: a small listing never fans out
        resp = lister.page(None, token)
        objs = resp.get("Contents", [])
        lister.take(objs, found)
        last = objs[-1]["Key"] if objs else last
        if not resp.get("IsTruncated"):
            return found
        token = resp.get("NextContinuationToken")
    cuts = sorted(b for b in (split_after or []) if b > last)
    ranges: list[tuple[str, str | None]] = [(last, cuts[0] if cuts else None)]
    if cuts:  # (none: the first range runs to the end)
        ranges += zip(cuts, [*cuts[1:], None], strict=True)
    for part in map_fn(lister.key_range, ranges):  # in order: the result stays sorted by key
        found.extend(part)
    return found


class _Lister:
    """Pages of one listing (ListObjectsV2), kept as `project` makes them."""

    def __init__(self, client: Any, bucket: str, prefix: str, page_size: int, on_page: Any, project: Any):
        self.client = client
        self.base = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        self.on_page = on_page
        self.keep = project or (lambda obj: obj)

    def page(self, start_after: str | None, token: str | None) -> dict:
        kwargs: dict[str, Any] = dict(self.base)
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = start_after
        if self.on_page is not None:
            self.on_page()
        return self.client.list_objects_v2(**kwargs)

    def take(self, objs: list[dict[str, Any]], out: list[Any]) -> None:
        for obj in objs:
            item = self.keep(obj)
            if item is not None:
                out.append(item)

    def key_range(self, bounds: tuple[str, str | None]) -> list[Any]:
        """The objects after `start_after` and before `end` (None: to the end), page by page."""
        start_after, end = bounds
        out: list[Any] = []
        token = None
        while True:
            resp = self.page(start_after, token)
            objs = resp.get("Contents", [])
            if end is not None and objs and objs[-1]["Key"] >= end:
                self.take([obj for obj in objs if obj["Key"] < end], out)
                return out
            self.take(objs, out)
            if not resp.get("IsTruncated"):
                return out
            token = resp.get("NextContinuationToken")
