"""`bincli predict s3://bucket/photos/ --out results.jsonl` on backend sagemaker: a Batch Transform job.

The photos under the prefix (.jpg, .jpeg, .png; what the JSONL already answers is left out) are
listed once into a manifest (S3DataType ManifestFile: exactly these objects, nothing else under the
prefix), and a transform job runs the packaged model on them with the endpoint's own handler (the
same model.tar.gz, image and environment as deploy): one record per photo (BatchStrategy
SingleRecord, SplitType None), answers as JSON, one `<photo>.out` object each beside the manifest.

Sized for this model: MaxPayloadInMB 6 (a bin photo is well under 1 MB; the real-time limit too) and
MaxConcurrentTransforms = the model server's workers (one request per TorchServe worker: more would
only queue inside the container).

The job and its SageMaker model are recorded (state 'transform') before they are created and tagged
like every other resource. A rerun of the same command attaches to the recorded job: waits for it
(or with --no-wait, only says where it is) and collects its answers, once: the run after starts a job
for what is still unanswered (photos the job could not answer). Ctrl-C leaves it running and says
so. When the job is over, its model is deleted (`stop_transform` stops a running job and does the
same: teardown's part).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bincli.backends.sagemaker.endpoint import (
    MODEL_DIR_IN_CONTAINER,
    clients,
    inference_image,
    model_in_s3,
    resource_name,
)
from bincli.backends.sagemaker.session import artifacts_location, aws_error, is_not_found, resource_tags, role_arn
from bincli.config import Config
from bincli.console import err
from bincli.core.contract import CODE_DIR, INFERENCE_SCRIPT, JSON_CONTENT_TYPE
from bincli.errors import BincliError, Interrupted, UsageError
from bincli.state import State

STEP = "transform"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_PAYLOAD_MB = 6
DONE = ("Completed", "Failed", "Stopped")


def transform_on_sagemaker(cfg: Config, uri: str, model: Path | None, answered: set[str],
                           wait: bool) -> dict[str, Any]:
    """The recorded job for `uri` (else a new one for its photos not in `answered`): {"job", "status",
    "photos", "answers": an iterator of (photo URI, answer) once the job is over, else None}."""
    from bincli.data.s3 import make_client

    if not uri.endswith("/"):
        uri += "/"  # a folder of photos: `photos` must not also match `photos-old/`
    state = State(cfg.workdir)
    record = state.outputs(STEP) or {}
    sm, _ = clients(cfg, record.get("region"))
    s3 = make_client(region=sm.meta.region_name)
    if record.get("input") != uri or record.get("collected") or _gone(sm, record.get("job")):
        keys = _photo_keys(s3, uri, answered)
        if not keys:
            return {"job": None, "status": "nothing to do", "photos": 0, "answers": iter(())}
        record = _create(cfg, state, sm, s3, uri, keys, model)
    desc = _describe(sm, record["job"])
    if wait:
        desc = _wait(cfg, sm, record["job"], desc)
    status = desc["TransformJobStatus"]
    record.update(status=status, failure_reason=desc.get("FailureReason"))
    state.record(STEP, record, {"input": uri})
    if status not in DONE:
        return {"job": record["job"], "status": status, "photos": record["photos"], "answers": None}
    _delete_model(sm, record)
    state.record(STEP, record, {"input": uri})
    bucket, prefix = _folder(uri)

    def collect() -> Iterator[tuple[str, dict[str, Any]]]:
        yield from _answers(s3, bucket, prefix, record["output"], record["keys_file"])
        record["collected"] = True  # all in the caller's file: the next run starts a job for what is left
        state.record(STEP, record, {"input": uri})

    return {"job": record["job"], "status": status, "photos": record["photos"],
            "failure_reason": desc.get("FailureReason"), "answers": collect()}


def stop_transform(cfg: Config) -> list[str]:
    """Stop the recorded job if it still runs and delete its model; forget the record. What was removed."""
    state = State(cfg.workdir)
    record = state.outputs(STEP)
    if not record:
        return []
    sm, _ = clients(cfg, record.get("region"))
    removed = []
    try:
        if _describe(sm, record["job"])["TransformJobStatus"] not in DONE:
            sm.stop_transform_job(TransformJobName=record["job"])
            removed.append(f"transform job {record['job']} (stopped)")
    except BincliError:
        pass  # gone already
    except Exception as exc:
        raise aws_error(exc, f"stopping transform job {record['job']}") from None
    removed += _delete_model(sm, record)
    state.forget(STEP)
    return removed


# ---------------------------------------------------------------- create
def _folder(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b/ -> ("bucket", "a/b/"): the prefix as keys start with it ("" at the top)."""
    from bincli.data.s3 import parse_s3_uri

    bucket, prefix = parse_s3_uri(uri)
    return bucket, f"{prefix}/" if prefix else ""


def _photo_keys(s3: Any, uri: str, answered: set[str]) -> list[str]:
    from bincli.data.s3 import list_objects

    bucket, prefix = _folder(uri)
    try:
        keys = list_objects(s3, bucket, prefix, project=lambda o: o["Key"])
    except Exception as exc:
        raise aws_error(exc, f"listing {uri}") from None
    photos = [k for k in keys if k.lower().endswith(PHOTO_SUFFIXES)]
    if not photos:
        raise UsageError(f"{uri}: no .jpg, .jpeg or .png objects under this prefix")
    return [k for k in photos if f"s3://{bucket}/{k}" not in answered]


def _create(cfg: Config, state: State, sm: Any, s3: Any, uri: str, keys: list[str],
            model: Path | None) -> dict[str, Any]:
    from bincli.data.s3 import join_key

    region = sm.meta.region_name
    role = role_arn(cfg.sagemaker)
    image = inference_image(cfg, region)
    model_s3 = model_in_s3(cfg, state, model, region)
    bucket, prefix = _folder(uri)
    name = resource_name("bincli-batch", datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))
    # Beside bincli's other artifacts (where the role may write), else beside the photos.
    art_bucket, art_prefix = artifacts_location(cfg.sagemaker, state.outputs("upload"))
    model_bucket = art_bucket or bucket
    folder = join_key(art_prefix if art_bucket else prefix, "sagemaker", "transform", name)
    manifest = join_key(folder, "manifest.json")
    # The manifest: the prefix, then each photo's key below it (what the job reads, nothing else).
    body = json.dumps([{"prefix": f"s3://{bucket}/{prefix}"}, *(k[len(prefix):] for k in keys)])
    workers = 1  # one TorchServe worker (see endpoint._model_server_workers: CPU instances)
    record = {"job": name, "model": name, "region": region, "input": uri, "photos": len(keys),
              "output": f"s3://{model_bucket}/{join_key(folder, 'out')}/", "keys_file": f"s3://{model_bucket}/{manifest}",
              "instance_type": cfg.sagemaker.deploy_instance_type, "status": "creating",
              "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
    state.record(STEP, record, {"input": uri})  # intent first: teardown finds what the calls below make
    tags = resource_tags(cfg.workdir, STEP)
    env = {"SAGEMAKER_PROGRAM": INFERENCE_SCRIPT, "SAGEMAKER_SUBMIT_DIRECTORY": f"{MODEL_DIR_IN_CONTAINER}/{CODE_DIR}",
           "SAGEMAKER_REGION": region, "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)}
    try:
        s3.put_object(Bucket=model_bucket, Key=manifest, Body=body.encode())
        sm.create_model(ModelName=name, ExecutionRoleArn=role, Tags=tags,
                        PrimaryContainer={"Image": image, "ModelDataUrl": model_s3, "Environment": env})
        sm.create_transform_job(
            TransformJobName=name, ModelName=name, MaxConcurrentTransforms=workers,
            MaxPayloadInMB=MAX_PAYLOAD_MB, BatchStrategy="SingleRecord", Tags=tags,
            TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "ManifestFile",
                                                            "S3Uri": record["keys_file"]}},
                            "ContentType": "application/x-image", "SplitType": "None", "CompressionType": "None"},
            TransformOutput={"S3OutputPath": record["output"], "Accept": JSON_CONTENT_TYPE, "AssembleWith": "None"},
            TransformResources={"InstanceType": cfg.sagemaker.deploy_instance_type, "InstanceCount": 1})
    except BincliError:
        raise
    except Exception as exc:
        raise aws_error(exc, f"creating transform job {name}") from None
    err.print(f"transform job {name}: {len(keys)} photo(s) on {cfg.sagemaker.deploy_instance_type}", markup=False,
              soft_wrap=True)
    return record


# ---------------------------------------------------------------- wait, collect, clean
def _describe(sm: Any, job: str) -> dict[str, Any]:
    try:
        return sm.describe_transform_job(TransformJobName=job)
    except Exception as exc:
        if is_not_found(exc):
            raise BincliError(f"transform job {job} is recorded here but gone from SageMaker") from None
        raise aws_error(exc, f"transform job {job}") from None


def _gone(sm: Any, job: str | None) -> bool:
    if not job:
        return True
    try:
        _describe(sm, job)
    except BincliError as exc:
        if "gone from SageMaker" in exc.message:
            return True
        raise
    return False


def _wait(cfg: Config, sm: Any, job: str, desc: dict[str, Any]) -> dict[str, Any]:
    again = "run the same command again to attach and collect its answers; 'bincli teardown' stops it"
    started = time.monotonic()
    try:
        while desc["TransformJobStatus"] not in DONE:
            err.print(f"transform job {job}: {desc['TransformJobStatus']} ({time.monotonic() - started:.0f} s)",
                      markup=False, soft_wrap=True)
            time.sleep(cfg.sagemaker.poll_seconds)  # polling a remote API
            desc = _describe(sm, job)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped waiting: transform job {job} still runs on SageMaker, and bills",
                          hint=again) from None
    return desc


def _answers(s3: Any, bucket: str, prefix: str, output: str, keys_file: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(photo URI, answer) for each photo of the manifest: its `.out` object's JSON, or an error
    where the job wrote none (a photo it could not answer)."""
    from bincli.data.s3 import join_key, parse_s3_uri

    out_bucket, out_prefix = parse_s3_uri(output)
    manifest_bucket, manifest_key = parse_s3_uri(keys_file)
    try:
        rest = json.loads(s3.get_object(Bucket=manifest_bucket, Key=manifest_key)["Body"].read())[1:]
    except Exception as exc:
        raise aws_error(exc, f"reading {keys_file}") from None
    for key in rest:
        photo = f"s3://{bucket}/{prefix}{key}"
        try:
            body = s3.get_object(Bucket=out_bucket, Key=join_key(out_prefix, f"{key}.out"))["Body"].read()
            answer = json.loads(body)
        except Exception as exc:
            yield photo, {"error": f"no answer from the transform job ({type(exc).__name__})", "status": None}
            continue
        yield photo, answer if isinstance(answer, dict) else {"error": "the answer is not a JSON object",
                                                              "status": None}


def _delete_model(sm: Any, record: dict[str, Any]) -> list[str]:
    if record.get("model_deleted"):
        return []
    try:
        sm.delete_model(ModelName=record["model"])
    except Exception as exc:
        if not is_not_found(exc):
            raise aws_error(exc, f"deleting model {record['model']}") from None
    record["model_deleted"] = True
    return [f"model {record['model']}"]
