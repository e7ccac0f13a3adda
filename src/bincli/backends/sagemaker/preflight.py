"""`bincli doctor` on backend sagemaker, and the preflight train, tune, deploy and pipeline run before
they create anything: credentials, region, buckets, images, the execution role and its rights, the
caller's rights, instance types and quotas; then the cost line of each billed step.

Every row reads only (STS, S3 GetBucketLocation/GetBucketEncryption, IAM GetRole and
SimulatePrincipalPolicy, Service Quotas); where AWS will not answer it says "not checked".
"""

from __future__ import annotations

import os
from typing import Any

from bincli.backends.checks import FAIL, NOT_CHECKED, OK, WARN, Check
from bincli.config import Config
from bincli.errors import BincliError

BILLED = ("tune", "train", "deploy")
POLICY_FIX = ("'bincli doctor --write-policies DIR' writes the policies for this config; "
              "attach DIR/{file} to {who}")


def doctor(cfg: Config) -> list[Check]:
    steps = [s for s in BILLED if s != "tune" or cfg.tune.max_jobs]
    # Your rights for every step, not only the billed ones: deploying what you may not tear down bills on.
    return checks(cfg, steps, also=("upload", "predict", "status", "teardown")) + cost_rows(cfg, steps)


def preflight(cfg: Config, steps: list[str]) -> list[Check]:
    """The rows a billed step shows before it starts: its checks (unless sagemaker.preflight is
    false) and its cost line."""
    steps = [s for s in BILLED if s in steps]
    if not steps:
        return []
    return (checks(cfg, steps) if cfg.sagemaker.preflight else []) + cost_rows(cfg, steps)


def checks(cfg: Config, steps: list[str], also: tuple[str, ...] = ()) -> list[Check]:
    """The rows for `steps` (billed ones); `also`: more steps whose calls your rights must cover."""
    from bincli.backends.sagemaker.iam_checks import Probe, caller_principal, role_row, simulate_row
    from bincli.backends.sagemaker.permissions import CALLER, ROLE, Scope
    from bincli.backends.sagemaker.quotas import needs, quota_rows
    from bincli.backends.sagemaker.session import boto_session, role_arn

    try:
        session = boto_session(cfg.sagemaker)
    except BincliError as exc:
        return [Check("region", FAIL, exc.message, exc.hint, exit_code=2)]
    region = session.region_name
    identity, rows = _credentials(session)
    rows.append(_region_row(cfg, region))
    locations, location_rows = s3_locations(cfg, steps)
    rows += location_rows
    if identity is None:  # nothing else can answer without credentials
        return rows + [Check(name, NOT_CHECKED, "no working AWS credentials")
                       for name in ("buckets", "execution role", "role permissions", "your permissions", "quotas")]
    bucket_rows, kms_keys = _buckets(session, {loc.split("/")[0] for loc in locations}, region, identity["Account"])
    images, image_rows = _images(cfg, region, steps)
    rows += bucket_rows + image_rows
    iam = _client(session, "iam")
    caller = caller_principal(iam, identity["Arn"])
    role = cfg.sagemaker.role_arn
    scope = Scope(region=region, account=identity["Account"], role_arn=role or "*", caller_arn=caller or "*",
                  locations=tuple(sorted(locations)), images=tuple(images), kms_keys=tuple(kms_keys))
    probe = Probe(scope, job_name=cfg.sagemaker.base_job_name, endpoint=cfg.deploy.name)
    wanted = set(steps) | ({"autoscaling"} if "deploy" in steps and cfg.deploy.autoscaling else set())
    if role is None:
        try:
            role_arn(cfg.sagemaker)  # its error, word for word
        except BincliError as exc:
            rows.append(Check("execution role", FAIL, exc.message, exc.hint, exit_code=exc.exit_code))
    else:
        rows.append(role_row(iam, role, identity["Account"]))
        rows.append(simulate_row(iam, "role permissions", role, [p for p in ROLE if p.steps & wanted], probe,
                                 POLICY_FIX.format(file="execution-role-policy.json", who=f"the role {role}")))
    yours = [p for p in CALLER if p.steps & (wanted | set(also))]
    rows.append(simulate_row(iam, "your permissions", caller, yours, probe,
                             POLICY_FIX.format(file="caller-policy.json", who="you (your user or role)")))
    return rows + quota_rows(session, needs(cfg, steps))


def scope_for(cfg: Config) -> Any:
    """The Scope --write-policies writes for: this config's region, account, role, S3 locations, images."""
    from bincli.backends.sagemaker.iam_checks import caller_principal
    from bincli.backends.sagemaker.permissions import Scope
    from bincli.backends.sagemaker.session import aws_error, boto_session

    session = boto_session(cfg.sagemaker)
    region = session.region_name
    try:
        identity = _client(session, "sts").get_caller_identity()
    except Exception as exc:
        raise aws_error(exc, "--write-policies: who you are (sts get-caller-identity)") from None
    locations, _ = s3_locations(cfg, list(BILLED))
    _, kms_keys = _buckets(session, {loc.split("/")[0] for loc in locations}, region, identity["Account"])
    images, _ = _images(cfg, region, list(BILLED))
    caller = caller_principal(_client(session, "iam"), identity["Arn"])
    return Scope(region=region, account=identity["Account"], role_arn=cfg.sagemaker.role_arn or Scope.role_arn,
                 caller_arn=caller or Scope.caller_arn, locations=tuple(sorted(locations)) or Scope.locations,
                 images=tuple(images), kms_keys=tuple(kms_keys))


def s3_locations(cfg: Config, steps: list[str]) -> tuple[set[str], list[Check]]:
    """Every "bucket/prefix" bincli reads or writes for these steps (the upload's channels, the
    artifacts under sagemaker.bucket or the upload's bucket, the model train recorded), with the
    ones inside another left out; and a failed row when train or tune has none."""
    from bincli.backends.sagemaker.session import artifacts_location
    from bincli.data.s3 import join_key, parse_s3_uri
    from bincli.state import State

    state = State(cfg.workdir)
    record = state.outputs("upload")
    upload = record if record and record.get("backend") == "s3" else (
        {"backend": "s3", "uri": cfg.upload.s3_uri} if cfg.upload.s3_uri else None)
    found = {join_key(*parse_s3_uri(upload["uri"]))} if upload else set()
    bucket, prefix = artifacts_location(cfg.sagemaker, upload)
    if bucket:
        found.add(join_key(bucket, prefix, "sagemaker"))
    model = (state.outputs("train") or {}).get("model_s3")
    if "deploy" in steps and model:
        found.add(join_key(*parse_s3_uri(model.rsplit("/", 1)[0])))
    kept = {loc for loc in found if not any(loc.startswith(other + "/") for other in found)}
    if not upload and {"train", "tune"} & set(steps):
        return kept, [Check("s3 locations", FAIL, "no upload.s3_uri: SageMaker jobs read the split from S3",
                            "--set upload.s3_uri=s3://bucket/prefix, then 'bincli upload'", exit_code=2)]
    detail = ", ".join(f"s3://{loc}/" for loc in sorted(kept)) or "none yet"
    return kept, [Check("s3 locations", OK, f"bincli reads and writes under {detail}")]


def _credentials(session: Any) -> tuple[dict[str, Any] | None, list[Check]]:
    from bincli.backends.sagemaker.session import aws_error

    try:
        identity = _client(session, "sts").get_caller_identity()
    except Exception as exc:
        error = aws_error(exc, "AWS credentials")
        return None, [Check("credentials", FAIL, error.message.removeprefix("AWS credentials: "), error.hint)]
    return identity, [Check("credentials", OK, f"account {identity['Account']} as {identity['Arn']}")]


def _region_row(cfg: Config, region: str) -> Check:
    """The region bincli uses, against the one the environment or profile gives other AWS tools."""
    import boto3

    env = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    theirs = env or boto3.Session().region_name
    where = "AWS_REGION/AWS_DEFAULT_REGION" if env else "your AWS profile"
    if cfg.sagemaker.region and theirs and theirs != region:
        return Check("region", WARN, f"sagemaker.region is {region} but {where} says {theirs}: bincli works in "
                     f"{region}, the aws CLI and consoles you open from it in {theirs}",
                     f"--set sagemaker.region={theirs}, or export AWS_DEFAULT_REGION={region}")
    source = "sagemaker.region" if cfg.sagemaker.region else where
    return Check("region", OK, f"{region} (from {source})")


def _buckets(session: Any, buckets: set[str], region: str, account: str) -> tuple[list[Check], list[str]]:
    """One row per bucket: its region (SageMaker reads and writes S3 in its own region only) and its
    default encryption; and the customer KMS keys the role and the caller need."""
    from bincli.backends.sagemaker.permissions import partition_of
    from bincli.backends.sagemaker.session import aws_error
    from bincli.data.s3 import error_code, make_client

    s3 = make_client(region=region, retries=1)
    rows, keys = [], []
    for bucket in sorted(buckets):
        name = "bucket"
        try:
            location = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
        except Exception as exc:
            denied = error_code(exc) in ("AccessDenied", "403")
            rows.append(Check(name, NOT_CHECKED if denied else FAIL, aws_error(exc, f"s3://{bucket}").message,
                              "allow s3:GetBucketLocation (policies/caller-policy.json)" if denied else None))
            continue
        found = {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location, location)
        if found != region:
            rows.append(Check(name, FAIL, f"s3://{bucket} is in {found} but sagemaker.region is {region}: SageMaker "
                              "reads and writes S3 in its own region only",
                              f"--set sagemaker.region={found}, or use a bucket in {region}", exit_code=2))
            continue
        key = _bucket_key(s3, bucket)
        detail = f"s3://{bucket} in {region}"
        if key:
            keys.append(key if key.startswith("arn:") else
                        f"arn:{partition_of(region)}:kms:{region}:{account}:{_key_path(key)}")
            detail += f", encrypted with KMS key {key} (the policies grant its use)"
        rows.append(Check(name, OK, detail))
    return rows, keys


def _bucket_key(s3: Any, bucket: str) -> str | None:
    """The customer KMS key of the bucket's default encryption, or None (SSE-S3, the AWS key, or unreadable)."""
    try:
        rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except Exception:
        return None
    default = (rules[0] if rules else {}).get("ApplyServerSideEncryptionByDefault") or {}
    key = default.get("KMSMasterKeyID")
    return key if default.get("SSEAlgorithm", "").startswith("aws:kms") and key and key != "alias/aws/s3" else None


def _key_path(key: str) -> str:
    return key if key.startswith("alias/") else f"key/{key}"


def _images(cfg: Config, region: str, steps: list[str]) -> tuple[list[str], list[Check]]:
    """The training and inference images these steps use, resolved as train and deploy resolve them."""
    from bincli.backends.sagemaker.session import require_sdk

    sm = cfg.sagemaker
    try:
        require_sdk()
    except BincliError as exc:
        return [], [Check("images", NOT_CHECKED, exc.message, exc.hint)]
    from sagemaker.core import image_uris

    from bincli.backends.sagemaker.endpoint import inference_image

    def training() -> str:  # as training_job.build_trainer resolves it
        from bincli.pytorch_images import py_version

        return sm.training_image or image_uris.retrieve(
            framework="pytorch", region=region, version=sm.framework_version, instance_type=sm.train_instance_type,
            py_version=py_version(sm.framework_version, "training"), image_scope="training")

    wanted = []
    if {"train", "tune"} & set(steps):
        wanted.append(("training image", "sagemaker.framework_version", training))
    if "deploy" in steps:
        wanted.append(("inference image", "sagemaker.inference_framework_version",
                       lambda: inference_image(cfg, region)))
    images, rows = [], []
    for name, key, resolve in wanted:
        try:
            image = resolve()
        except (ValueError, BincliError) as exc:
            message = getattr(exc, "message", None) or " ".join(str(exc).split())
            rows.append(Check(name, FAIL, message[:300], f"set {key} to a version with an image in {region}, "
                              f"or sagemaker.{name.split()[0]}_image to an image URI", exit_code=2))
            continue
        images.append(image)
        rows.append(Check(name, OK, image))
    return images, rows


def cost_rows(cfg: Config, steps: list[str]) -> list[Check]:
    """What each billed step may cost: instances x count x hours at the price per hour."""
    from bincli.backends.sagemaker.pricing import hourly_price

    sm = cfg.sagemaker
    region = sm.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    hours = sm.max_run_minutes / 60
    rows = []
    for step in steps:
        if step == "deploy" and cfg.deploy.serverless is not None:
            rows.append(Check("deploy cost", OK, "serverless: billed per request and compute-second, not by the hour",
                              cost=True))
            continue
        kind = sm.deploy_instance_type if step == "deploy" else sm.train_instance_type
        price = hourly_price(kind, region, sm)
        each = f"${price:g}/h each" if price is not None else "price unknown"
        if step == "deploy":
            scaling = cfg.deploy.autoscaling
            top = max(sm.deploy_instance_count, scaling.max_instances if scaling else 0)
            line = f"{sm.deploy_instance_count} x {kind} at {each}" + (
                f", up to {top} with autoscaling" if scaling else "")
            if price is not None:
                line += f": ${sm.deploy_instance_count * price:.2f}/h (${24 * top * price:.2f}/day at most) until " \
                        "'bincli teardown'"
        else:
            jobs = cfg.tune.max_jobs if step == "tune" else 1
            line = (f"{jobs} trial(s), {min(cfg.tune.max_parallel, jobs)} at once, each " if step == "tune" else "") + \
                f"{sm.train_instance_count} x {kind}{' (spot)' if sm.spot else ''} for up to {hours:g} h at {each}"
            if price is not None:
                line += f": at most ${jobs * sm.train_instance_count * hours * price:.2f}" + \
                    (" (spot bills less, never more)" if sm.spot else "")
        fix = None if price is not None else f"set sagemaker.prices: {{{kind}: <USD per hour in {region}>}}"
        rows.append(Check(f"{step} cost", OK, line, fix, cost=True))
    return rows


def _client(session: Any, name: str) -> Any:
    """A client for the checks: no retries for IAM (it refuses or answers; a row that gets no answer
    says "not checked" and never waits), one for the rest."""
    from botocore.config import Config as BotoConfig

    attempts = 1 if name == "iam" else 2
    return session.client(name, config=BotoConfig(retries={"mode": "standard", "total_max_attempts": attempts}))
