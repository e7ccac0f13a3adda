"""`bincli predict s3://bucket/photos/ --out results.jsonl` on backend sagemaker: a Batch Transform job.

moto records transform jobs and calls them Completed at once, running nothing. Two stand-ins, only
for that: the create call's reply hook puts the job InProgress (as AWS answers), and `play_transform`
does the job's work as SageMaker would: reads the job's manifest from S3, sends each photo through
the model.tar.gz's own handler (code/inference.py of the archive: model_fn, input_fn, predict_fn,
output_fn), writes `<photo>.out` beside it, and marks the job Completed. A photo the handler refuses
gets no .out (SageMaker logs the failed record).
"""

from __future__ import annotations

import json
import tarfile

import pytest
from typer.testing import CliRunner

from aws_standins import on_sessions
from bincli.cli import app
from bincli.state import State
from helpers import make_bin_image
from serving_support import model_tar

pytestmark = pytest.mark.slow
runner = CliRunner()


def moto_job(name, region="us-east-1"):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[DEFAULT_ACCOUNT_ID][region].transform_jobs[name]


def play_transform(s3, sm, name, tmp_path):
    """Do what the transform container does for job `name`, with the archive's own handler."""
    import importlib.util

    job = sm.describe_transform_job(TransformJobName=name)
    model = sm.describe_model(ModelName=job["ModelName"])["PrimaryContainer"]["ModelDataUrl"]
    bucket, _, key = model.removeprefix("s3://").partition("/")
    model_dir = tmp_path / "opt-ml-model"
    s3.download_file(bucket, key, str(tmp_path / "model.tar.gz"))
    with tarfile.open(tmp_path / "model.tar.gz") as t:
        t.extractall(model_dir, filter="data")
    spec = importlib.util.spec_from_file_location("transform_handler", model_dir / "code" / "inference.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    loaded = handler.model_fn(str(model_dir))

    manifest_uri = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    mb, _, mk = manifest_uri.removeprefix("s3://").partition("/")
    head, *keys = json.loads(s3.get_object(Bucket=mb, Key=mk)["Body"].read())
    in_bucket, _, in_prefix = head["prefix"].removeprefix("s3://").partition("/")
    out_bucket, _, out_prefix = job["TransformOutput"]["S3OutputPath"].removeprefix("s3://").partition("/")
    content_type = job["TransformInput"]["ContentType"]
    for k in keys:
        body = s3.get_object(Bucket=in_bucket, Key=in_prefix + k)["Body"].read()
        try:
            answer = handler.output_fn(handler.predict_fn(handler.input_fn(body, content_type), loaded),
                                       job["TransformOutput"]["Accept"])[0]
        except Exception:
            continue  # a refused record: no .out
        s3.put_object(Bucket=out_bucket, Key=f"{out_prefix.rstrip('/')}/{k}.out", Body=answer.encode())
    moto_job(name).transform_job_status = "Completed"


def test_a_prefix_of_photos_is_counted_by_a_transform_job_collected_into_the_jsonl(sagemaker_env, tmp_path,
                                                                                   monkeypatch):
    s3, sm, bucket, role = sagemaker_env
    for i in range(5):
        s3.upload_file(str(make_bin_image(tmp_path / f"b{i}.jpg", 1 + i, seed=i)), bucket, f"night/bin-{i}.jpg")
    s3.put_object(Bucket=bucket, Key="night/broken.jpg", Body=b"not a jpeg")
    s3.put_object(Bucket=bucket, Key="night/README.txt", Body=b"not a photo: not sent")

    def in_progress(parsed, **_):
        moto_job(parsed["TransformJobArn"].rsplit("/", 1)[1]).transform_job_status = "InProgress"

    on_sessions(monkeypatch, "after-call.sagemaker.CreateTransformJob", in_progress)
    work, out = tmp_path / "work", tmp_path / "counts.jsonl"
    tar = model_tar(tmp_path)
    args = ["predict", f"s3://{bucket}/night/", "--out", str(out), "--model", str(tar), "--json", "-w", str(work),
            "--set", "backend=sagemaker", "--set", "sagemaker.region=us-east-1", "--set", f"sagemaker.role_arn={role}",
            "--set", f"sagemaker.bucket={bucket}", "--set", "sagemaker.poll_seconds=0.01"]

    r = runner.invoke(app, [*args, "--no-wait"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    started = json.loads(r.stdout)
    job = started["job"]["job"]
    assert started["job"]["status"] == "InProgress" and started["answered"] == 0 and out.read_text() == ""
    desc = sm.describe_transform_job(TransformJobName=job)
    assert desc["BatchStrategy"] == "SingleRecord" and desc["MaxPayloadInMB"] == 6
    assert desc["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=desc["TransformJobArn"])["Tags"]}
    assert tags["bincli:step"] == "transform" and "bincli:workspace" in tags
    assert State(work).outputs("transform")["job"] == job  # recorded before the wait

    play_transform(s3, sm, job, tmp_path)
    r = runner.invoke(app, args)  # the same command: attaches, collects
    assert r.exit_code == 1, (r.stdout, r.stderr)  # the broken photo failed
    summary = json.loads(r.stdout)
    assert (summary["n"], summary["answered"], summary["failed"]) == (6, 5, 1)
    rows = {row["image"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {f"s3://{bucket}/night/bin-{i}.jpg" for i in range(5)} | {f"s3://{bucket}/night/broken.jpg"}
    assert all(rows[f"s3://{bucket}/night/bin-{i}.jpg"]["count"] in range(1, 6) for i in range(5))
    assert "error" in rows[f"s3://{bucket}/night/broken.jpg"]
    assert not [m for m in sm.list_models()["Models"] if m["ModelName"] == job]  # its model is deleted

    # Again: only the photo without an answer goes to a new job.
    r = runner.invoke(app, [*args, "--no-wait"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    second = json.loads(r.stdout)
    assert second["job"]["job"] != job and second["job"]["photos"] == 1 and second["earlier"] == 5


def test_teardown_all_stops_a_running_transform_job_and_deletes_its_model(sagemaker_env, tmp_path, monkeypatch):
    from botocore.awsrequest import AWSResponse

    s3, sm, bucket, role = sagemaker_env
    s3.upload_file(str(make_bin_image(tmp_path / "b.jpg", 2)), bucket, "night/bin.jpg")

    def in_progress(parsed, **_):
        moto_job(parsed["TransformJobArn"].rsplit("/", 1)[1]).transform_job_status = "InProgress"

    stopped = []

    def stop(params, **_):  # moto has no StopTransformJob: SageMaker's empty 200, and the job Stopped
        name = json.loads(params["body"])["TransformJobName"]
        stopped.append(name)
        moto_job(name).transform_job_status = "Stopped"
        return AWSResponse("http://standin", 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}

    on_sessions(monkeypatch, "after-call.sagemaker.CreateTransformJob", in_progress)
    on_sessions(monkeypatch, "before-call.sagemaker.StopTransformJob", stop)
    work = tmp_path / "work"
    common = ["-w", str(work), "--set", "backend=sagemaker", "--set", "sagemaker.region=us-east-1",
              "--set", f"sagemaker.role_arn={role}", "--set", f"sagemaker.bucket={bucket}"]
    r = runner.invoke(app, ["predict", f"s3://{bucket}/night/", "--out", str(tmp_path / "o.jsonl"), "--no-wait",
                            "--model", str(model_tar(tmp_path)), "--json", *common])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    job = json.loads(r.stdout)["job"]["job"]

    r = runner.invoke(app, ["teardown", "--all", "--json", *common])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    removed = json.loads(r.stdout)["removed"]
    assert stopped == [job] and f"transform job {job} (stopped)" in removed
    assert not [m for m in sm.list_models()["Models"] if m["ModelName"] == job]
    assert State(work).outputs("transform") is None
