"""Runs a SageMaker training job the way its container would, from what the job recorded on moto.

moto creates training jobs and marks them Completed without running anything. This plays the
container's part for one host: each input channel copied down from S3 into input/data/<channel>,
input/config/{hyperparameters,inputdataconfig,resourceconfig}.json written, and the job's own
ContainerEntrypoint + ContainerArguments run (for a v3 ModelTrainer job: the SDK's sm_train.sh,
environment.py and the basic/torchrun driver it uploaded). Then, as SageMaker does when a job
succeeds, model/ goes up as the job's ModelArtifacts (model.tar.gz) and output/data/ as
output.tar.gz beside it. The container's output goes to CloudWatch Logs as SageMaker sends it
(group /aws/sagemaker/TrainingJobs, stream <job>/algo-1-<seconds>, one event per line).

The one liberty: /opt/ml needs root here, so it is relocated to `base`. The SDK's driver files
and the container arguments are the only places that name it; the path is rewritten there.
The image's python3 (and torchrun) is this test's interpreter: its bin dir leads PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

OPT_ML = "/opt/ml"


def download_prefix(s3: Any, uri: str, dest: Path) -> int:
    """Every object under an s3://bucket/prefix, to dest/<rest of the key>. Returns the count."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rest = obj["Key"][len(prefix):].lstrip("/")
            if not rest or rest.endswith("/"):
                continue
            target = dest / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            n += 1
    return n


def prepare(job: dict[str, Any], s3: Any, base: Path) -> None:
    """The container's /opt/ml, under base: channels, config files, empty model/output dirs."""
    data, config = base / "input" / "data", base / "input" / "config"
    config.mkdir(parents=True)
    input_config = {}
    for channel in job["InputDataConfig"]:
        name, source = channel["ChannelName"], channel["DataSource"]["S3DataSource"]
        (data / name).mkdir(parents=True)
        download_prefix(s3, source["S3Uri"], data / name)
        input_config[name] = {"TrainingInputMode": channel.get("InputMode", "File"),
                              "S3DistributionType": source["S3DataDistributionType"], "RecordWrapperType": "None"}
    instance_type = job["ResourceConfig"]["InstanceType"]
    resource = {"current_host": "algo-1", "hosts": ["algo-1"], "current_instance_type": instance_type,
                "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
                "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                                     "hosts": ["algo-1"]}]}
    (config / "hyperparameters.json").write_text(json.dumps(job.get("HyperParameters", {})))
    (config / "inputdataconfig.json").write_text(json.dumps(input_config))
    (config / "resourceconfig.json").write_text(json.dumps(resource))
    for sub in ("model", "output/data", "checkpoints"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    drivers = data / "sm_drivers"
    if drivers.is_dir():  # a v3 ModelTrainer job: relocate /opt/ml in the SDK's own files
        for path in drivers.rglob("*"):
            if path.suffix in (".py", ".sh", ".json"):
                path.write_text(path.read_text().replace(OPT_ML, str(base)))


def upload_outputs(job: dict[str, Any], s3: Any, base: Path) -> None:
    """model/ -> the job's S3ModelArtifacts (model.tar.gz); output/data/ -> output.tar.gz beside it."""
    model_uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    for folder, uri in ((base / "model", model_uri), (base / "output" / "data", model_uri.rsplit("/", 1)[0] +
                                                       "/output.tar.gz")):
        archive = base / f"{folder.name}.upload.tar.gz"
        with tarfile.open(archive, "w:gz", compresslevel=0) as tar:  # how hard SageMaker compresses: not tested
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        s3.upload_file(str(archive), bucket, key)


def send_logs(job_name: str, text: str) -> None:
    """The container's output lines as CloudWatch log events of the job's first host."""
    import time

    import boto3

    logs = boto3.client("logs")
    group, stream = "/aws/sagemaker/TrainingJobs", f"{job_name}/algo-1-{int(time.time())}"
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    events = [{"timestamp": now, "message": line} for line in text.splitlines() if line.strip()]
    for start in range(0, len(events), 1000):
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events[start:start + 1000])


def run_training_job(sm: Any, s3: Any, job_name: str, base: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Prepare base as the container's /opt/ml, run the job's entrypoint there and, if it
    succeeds, upload its outputs where SageMaker would."""
    job = sm.describe_training_job(TrainingJobName=job_name)
    prepare(job, s3, base)
    spec = job["AlgorithmSpecification"]
    arguments = [a.replace(OPT_ML, str(base)) for a in spec.get("ContainerArguments", [])]
    command = [*spec["ContainerEntrypoint"], *arguments]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AWS_"))}
    env.update(job.get("Environment", {}))
    env.update(TRAINING_JOB_NAME=job_name, PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    result = subprocess.run(command, cwd=base, env=env, capture_output=True, text=True, timeout=timeout)
    send_logs(job_name, result.stdout + result.stderr)
    if result.returncode == 0:
        upload_outputs(job, s3, base)
    return result
