"""Runs a SageMaker training job the way its containers would, from what the job recorded on moto.

moto creates training jobs and marks them Completed without running anything. This plays the
containers' part, one per instance of the job (InstanceCount): each host gets an /opt/ml of its own
with every input channel copied down from S3 into input/data/<channel> (and the job's checkpoints
from CheckpointConfig.S3Uri into its checkpoint dir, as SageMaker does on every host),
input/config/{hyperparameters,inputdataconfig,resourceconfig}.json written (hosts algo-1..algo-N,
current_host its own), and the job's own ContainerEntrypoint + ContainerArguments started, all hosts
at once (for a v3 ModelTrainer job: the SDK's sm_train.sh, environment.py and the basic/torchrun
driver it uploaded). Then, as SageMaker does when a job succeeds, algo-1's model/ goes up as the
job's ModelArtifacts (model.tar.gz) and its output/data/ as output.tar.gz beside it, and every
host's checkpoint dir goes up to CheckpointConfig.S3Uri. Each host's output goes to CloudWatch Logs
as SageMaker sends it (group /aws/sagemaker/TrainingJobs, stream <job>/algo-N-<seconds>).

The liberties, each where the SDK's files name what this machine cannot give:
- /opt/ml needs root here, so each host's is relocated to a folder; the SDK's driver files and the
  container arguments are the only places that name it, and the path is rewritten there.
- On SageMaker algo-1..algo-N resolve to the instances; here every host is this machine, so the
  driver's master address (environment.py's SM_MASTER_ADDR = "algo-1") becomes 127.0.0.1, and its
  fixed port 7777 a free one (two jobs on this machine would share 7777). Only for several hosts.
- The image's python3 (and torchrun) is this test's interpreter: its bin dir leads PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPT_ML = "/opt/ml"
MASTER_ADDR = 'SM_MASTER_ADDR = "algo-1"'  # in the SDK's scripts/environment.py
MASTER_PORT = "SM_MASTER_PORT = 7777"


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


def host_names(job: dict[str, Any]) -> list[str]:
    return [f"algo-{i + 1}" for i in range(int(job["ResourceConfig"].get("InstanceCount", 1)))]


def checkpoint_dir(job: dict[str, Any], base: Path) -> Path:
    local = job.get("CheckpointConfig", {}).get("LocalPath") or f"{OPT_ML}/checkpoints"
    return Path(local.replace(OPT_ML, str(base)))


def prepare(job: dict[str, Any], s3: Any, base: Path, host: str = "algo-1", hosts: list[str] | None = None,
            master_port: int | None = None) -> None:
    """One host's /opt/ml, under base: channels, checkpoints, config files, empty model/output dirs."""
    hosts = hosts or [host]
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
    resource = {"current_host": host, "hosts": hosts, "current_instance_type": instance_type,
                "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
                "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                                     "hosts": hosts}]}
    (config / "hyperparameters.json").write_text(json.dumps(job.get("HyperParameters", {})))
    (config / "inputdataconfig.json").write_text(json.dumps(input_config))
    (config / "resourceconfig.json").write_text(json.dumps(resource))
    for sub in ("model", "output/data", "checkpoints"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_dir(job, base)
    ckpt.mkdir(parents=True, exist_ok=True)
    if job.get("CheckpointConfig", {}).get("S3Uri"):
        download_prefix(s3, job["CheckpointConfig"]["S3Uri"], ckpt)
    drivers = data / "sm_drivers"
    if drivers.is_dir():  # a v3 ModelTrainer job: relocate /opt/ml in the SDK's own files
        for path in drivers.rglob("*"):
            if path.suffix in (".py", ".sh", ".json"):
                text = path.read_text().replace(OPT_ML, str(base))
                if len(hosts) > 1 and path.name == "environment.py":
                    if MASTER_ADDR not in text or MASTER_PORT not in text:
                        raise AssertionError(f"{path}: the SDK no longer names its master as {MASTER_ADDR!r}")
                    text = text.replace(MASTER_ADDR, 'SM_MASTER_ADDR = "127.0.0.1"').replace(
                        MASTER_PORT, f"SM_MASTER_PORT = {master_port}")
                path.write_text(text)


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


def upload_checkpoints(job: dict[str, Any], s3: Any, base: Path) -> int:
    """The host's checkpoint dir -> CheckpointConfig.S3Uri (SageMaker syncs it as files appear). Returns the count."""
    uri = job.get("CheckpointConfig", {}).get("S3Uri")
    if not uri:
        return 0
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    n = 0
    for path in sorted(checkpoint_dir(job, base).rglob("*")):
        if path.is_file() and not path.name.startswith("."):  # not an atomic write's temp file
            s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(checkpoint_dir(job, base))}")
            n += 1
    return n


def send_logs(job_name: str, text: str, host: str = "algo-1") -> None:
    """A host's output lines as CloudWatch log events of its own stream."""
    import boto3

    logs = boto3.client("logs")
    group, stream = "/aws/sagemaker/TrainingJobs", f"{job_name}/{host}-{int(time.time())}"
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    events = [{"timestamp": now, "message": line} for line in text.splitlines() if line.strip()]
    for start in range(0, len(events), 1000):
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events[start:start + 1000])


@dataclass
class Host:
    """One instance of a running job: its /opt/ml (base), its container process and its output."""

    name: str
    base: Path
    proc: subprocess.Popen
    log: Path
    returncode: int | None = field(default=None)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float) -> None:
        """Until `needle` is in the host's output (AssertionError at the deadline or if the host ends first)."""
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None and needle not in self.text():
                raise AssertionError(f"{self.name} ended (exit {self.proc.returncode}) before printing {needle!r}:\n"
                                     f"{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not print {needle!r} within {timeout} s:\n{self.text()[-3000:]}")
            time.sleep(0.05)  # polling the output file; the deadline bounds the wait

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Every process of the container at once (the driver, torchrun and its workers): an instance
        that dies (SIGKILL) or stops answering (SIGSTOP). By the process tree, not the process group:
        torchrun starts each worker in a session of its own."""
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} still running after {timeout} s (killed):\n"
                                 f"{self.text()[-3000:]}") from None
        return self.returncode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_job(sm: Any, s3: Any, job_name: str, root: Path, env: dict[str, str] | None = None) -> list[Host]:
    """Every host of the job prepared and started, at once. One host: root is its /opt/ml; several:
    root/algo-N each. `env` is added to each container's environment (after the job's own)."""
    job = sm.describe_training_job(TrainingJobName=job_name)
    hosts = host_names(job)
    port = _free_port() if len(hosts) > 1 else None
    spec = job["AlgorithmSpecification"]
    bases = [root] if len(hosts) == 1 else [root / h for h in hosts]
    with ThreadPoolExecutor(len(hosts)) as pool:  # each host downloads its own copy, as on SageMaker
        list(pool.map(lambda hb: prepare(job, s3, hb[1], hb[0], hosts, port), zip(hosts, bases, strict=True)))
    started = []
    for host, base in zip(hosts, bases, strict=True):
        arguments = [a.replace(OPT_ML, str(base)) for a in spec.get("ContainerArguments", [])]
        command = [*spec["ContainerEntrypoint"], *arguments]
        container_env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "AWS_"))}
        container_env.update(job.get("Environment", {}))
        container_env.update(TRAINING_JOB_NAME=job_name, PYTHONUNBUFFERED="1",
                             PATH=f"{Path(sys.executable).parent}{os.pathsep}{container_env.get('PATH', '')}")
        (base / "tmp").mkdir(exist_ok=True)  # each instance has a /tmp of its own (the core's image cache)
        container_env["TMPDIR"] = str(base / "tmp")
        container_env.update(env or {})
        log = base / "container.log"
        with open(log, "wb") as out:  # its own session: killing a host kills all of its processes
            proc = subprocess.Popen(command, cwd=base, env=container_env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(Host(host, base, proc, log))
    return started


def finish_job(sm: Any, s3: Any, job_name: str, hosts: list[Host], timeout: float = 600,
               sync_checkpoints: bool = False) -> list[Host]:
    """Wait for every host (killing all at the deadline), send their logs, upload their checkpoint dirs
    to the job's checkpoint URI if asked (as SageMaker syncs them; a resnet18 checkpoint is 134 MB, so
    only the tests that restart a job ask) and, when every host succeeded, upload algo-1's model and
    output data as SageMaker does."""
    job = sm.describe_training_job(TrainingJobName=job_name)
    deadline = time.monotonic() + timeout
    try:
        for host in hosts:
            host.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for host in hosts:
            if host.proc.poll() is None:
                host.kill()
                host.proc.wait()
    for host in hosts:
        send_logs(job_name, host.text(), host.name)
        if sync_checkpoints:
            upload_checkpoints(job, s3, host.base)
    if all(host.returncode == 0 for host in hosts):
        upload_outputs(job, s3, hosts[0].base)
    return hosts


def run_training_job(sm: Any, s3: Any, job_name: str, base: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the job's hosts under base (its /opt/ml for one host, base/algo-N for several) and, if all
    succeed, upload outputs where SageMaker would. Returns algo-1's exit status and output."""
    hosts = finish_job(sm, s3, job_name, start_job(sm, s3, job_name, base), timeout)
    first = hosts[0]
    return subprocess.CompletedProcess(first.proc.args, first.returncode, first.text(), "")
