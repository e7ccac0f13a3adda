"""The `train` step on backend sagemaker: the same core entry point, run as a SageMaker training job.

The split's S3 channels (from `bincli upload`) and bincli's hyperparameters go to a v3 ModelTrainer
job: the core bundle as its source dir under the SDK's torchrun driver, managed spot training with
checkpoints in S3 (a restarted or rerun job resumes from them), the metric definitions of
core.contract. bincli waits for it, downloads its model.tar.gz and output.tar.gz into
<workdir>/train/{model,output}, then reports and packages exactly as the local backend does; the
packaged model (with code/) is uploaded beside the job's artifacts for deploy. When the job ends,
its billable time and cost (pricing.py) are said, and recorded with the run.

A rerun attaches to the job it started (<workdir>/train/sagemaker-job.json) while the settings are
the same and the job has not failed or been stopped, instead of starting another one. A new job
with the same settings resumes the checkpoints the record names (also those of a --fresh start).
Before anything is created, every bucket involved must be in the configured region. Everything the
job needs in S3 lands under the upload's prefix (code, drivers, weights, checkpoints, artifacts),
and the job carries the workspace's tags.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bincli.backends import TrainingRun
from bincli.backends.sagemaker.instances import check_processes_per_node
from bincli.backends.sagemaker.pricing import cost_line, training_cost
from bincli.backends.sagemaker.session import (
    artifacts_location,
    aws_error,
    boto_session,
    is_not_found,
    read_job_record,
    require_buckets_in_region,
    require_sdk,
    resource_tags,
    role_arn,
    split_in_s3,
    upload_model,
    upload_weights,
)
from bincli.config import Config
from bincli.core.contract import METRICS_FILE, TRAIN_SCRIPT, WEIGHTS_CHANNEL, hyperparameter_name, metric_definitions
from bincli.core.fileio import atomic_write_json
from bincli.data.s3 import join_key, make_client, parse_s3_uri
from bincli.errors import BincliError, Interrupted
from bincli.layout import RUN_PREFIX, RUNS_DIR, under
from bincli.state import State, json_digest

JOB_FILE = "sagemaker-job.json"
TERMINAL = ("Completed", "Failed", "Stopped")
# The sagemaker keys that shape a training job: a change to one of them means another job.
JOB_KEYS = {"region", "role_arn", "bucket", "train_instance_type", "train_instance_count", "training_image",
            "input_mode", "framework_version", "volume_size_gb", "spot", "max_run_minutes", "max_wait_minutes",
            "base_job_name"}
CHECKPOINT_PATH = "/opt/ml/checkpoints"  # in the container; the entry point's default checkpoint dir
WEIGHTS_HP = hyperparameter_name("weights_file")  # a local path: sent as the weights channel instead


def train_on_sagemaker(config: Config, hp: Mapping[str, Any], split: Mapping[str, Any], *, fresh: bool = False,
                       wait: bool = True, console=None, run_dir: Path | None = None) -> TrainingRun:
    """Start (or attach to) the training job; with `wait`, see it through and fetch its run folder
    (`run_dir`, chosen by the train step: <workdir>/runs/<run>/)."""
    from bincli.console import err

    console = console or err
    workdir = Path(config.workdir)
    state = State(workdir)
    upload = split_in_s3(state, "train")
    require_sdk()
    sm_cfg = config.sagemaker
    role_arn(sm_cfg)  # no role: say so before anything goes to S3
    session = boto_session(sm_cfg)
    nproc = config.train.nproc_per_node
    if check_processes_per_node(nproc, sm_cfg.train_instance_type, session.region_name) is None and nproc > 1:
        console.print(f"warning: train.nproc_per_node {nproc} not checked against {sm_cfg.train_instance_type}'s "
                      "GPUs (a type bincli does not know): more processes than GPUs fails the job",
                      markup=False, soft_wrap=True)
    hp = dict(hp)
    channels = {name: uri for name, uri in upload["channels"].items() if name == "train" or int(split.get(name) or 0)}
    bucket, prefix = artifacts_location(sm_cfg, upload)
    require_buckets_in_region({bucket, *(parse_s3_uri(uri)[0] for uri in channels.values())},
                              session.region_name, console)
    hp, channels = with_weights_channel(hp, channels, bucket, prefix, session.region_name)
    job_settings = {"hyperparameters": hp, "channels": channels, "nproc_per_node": config.train.nproc_per_node,
                    "sagemaker": sm_cfg.model_dump(mode="json", include=JOB_KEYS)}
    fingerprint = json_digest(job_settings)

    sm = session.client("sagemaker")
    run_dir = run_dir or under(workdir, RUNS_DIR, RUN_PREFIX)
    run_dir.mkdir(parents=True, exist_ok=True)
    job_file = run_dir / JOB_FILE
    record = read_job_record(job_file)
    if fresh:
        _warn_if_running(record, sm, console)
    job_name = None if fresh else _attachable(record, fingerprint, sm)
    if job_name:
        console.print(f"attaching to training job {job_name} (started earlier with these settings)",
                      markup=False, soft_wrap=True)
    else:
        checkpoints = checkpoint_uri(record, fingerprint, bucket, prefix, fresh)
        job_name = _start(config, session, hp, channels, bucket, prefix, checkpoints, run_dir)
        known = {**_known_checkpoints(record), fingerprint: checkpoints}
        atomic_write_json(job_file, {"job_name": job_name, "fingerprint": fingerprint, "checkpoints": checkpoints,
                                     "checkpoints_by_settings": known,
                                     "started_at": datetime.now(UTC).isoformat(timespec="seconds")})
        console.print(f"started training job {job_name} ({sm_cfg.train_instance_count} x "
                      f"{sm_cfg.train_instance_type}{', spot' if sm_cfg.spot else ''})", markup=False, soft_wrap=True)
    if not wait:
        status = _describe(sm, job_name)["TrainingJobStatus"]
        return TrainingRun(run_dir, pending={"backend": "sagemaker", "job_name": job_name, "status": status})

    from bincli.backends.sagemaker.job_logs import JobLogs

    job = _wait(sm, job_name, sm_cfg.poll_seconds, console, JobLogs(session, job_name), int(hp["epochs"]))
    cost = training_cost(job, session.region_name, sm_cfg)  # said for a failed job too: it billed
    console.print(cost_line(cost, f"training job {job_name}"), markup=False, highlight=False, soft_wrap=True)
    if job["TrainingJobStatus"] != "Completed":
        raise job_failed(job)
    _download_artifacts(make_client(region=session.region_name), job, run_dir)

    def publish(tar: Path) -> dict[str, Any]:
        return {"backend": "sagemaker", "job_name": job_name,
                "model_s3": upload_model(tar, bucket, prefix, job_name, session.region_name),
                "job_artifact": job["ModelArtifacts"]["S3ModelArtifacts"],
                "billable_seconds": job.get("BillableTimeInSeconds"), "cost": cost}

    return TrainingRun(run_dir, publish=publish, extra={"waiting": True})


def _start(config: Config, session: Any, hp: dict[str, Any], channels: dict[str, str], bucket: str, prefix: str,
           checkpoints: str, run_dir: Path) -> str:
    """Create the training job through the SDK's ModelTrainer; returns its name."""
    trainer, inputs = build_trainer(config, session, hp, channels, bucket, prefix, checkpoints, run_dir)
    try:
        trainer.train(input_data_config=inputs, wait=False, logs=False)
    except Exception as exc:
        raise aws_error(exc, "creating the training job") from None
    return trainer._latest_training_job.training_job_name


def with_weights_channel(hp: Mapping[str, Any], channels: Mapping[str, str], bucket: str, prefix: str,
                         region: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(hp, channels) for a job: a `weights-file` hyperparameter (a local path, meaningless in the
    container) becomes the weights channel, its file uploaded to S3; the entry point reads it from
    there (SM_CHANNEL_WEIGHTS). Without one, or once done, both come back unchanged."""
    hp = dict(hp)
    path = hp.pop(WEIGHTS_HP, None)
    if path is None:
        return hp, dict(channels)
    return hp, {**channels, WEIGHTS_CHANNEL: upload_weights(Path(path), bucket, prefix, region)}


def checkpoint_uri(record: Mapping[str, Any], fingerprint: str, bucket: str, prefix: str, fresh: bool) -> str:
    """Where a new job keeps its checkpoints: where this workspace last kept them with these settings
    (a new job resumes them, also after a --fresh start), or a new location with --fresh. Ends in
    '/', so that no job's location is a prefix of another's (S3 prefixes match any key that starts so)."""
    known = _known_checkpoints(record)
    if not fresh and fingerprint in known:
        return known[fingerprint].rstrip("/") + "/"
    location = join_key(bucket, prefix, "sagemaker", "checkpoints", fingerprint)
    if fresh:  # a fresh start must not resume the old checkpoints
        location += f"-{datetime.now(UTC):%Y%m%d%H%M%S%f}"
    return f"s3://{location}/"


def _known_checkpoints(record: Mapping[str, Any]) -> dict[str, str]:
    """fingerprint -> the checkpoint location a job with those settings last used."""
    known = dict(record.get("checkpoints_by_settings") or {})
    if record.get("fingerprint") and record.get("checkpoints"):  # also a record from before that map
        known.setdefault(record["fingerprint"], record["checkpoints"])
    return {k: v for k, v in known.items() if isinstance(k, str) and isinstance(v, str) and v.startswith("s3://")}


def build_trainer(config: Config, session: Any, hp: dict[str, Any], channels: dict[str, str], bucket: str,
                  prefix: str, checkpoints: str | None, run_dir: Path, *, step: str = "train") -> tuple[Any, list[Any]]:
    """The v3 ModelTrainer a `bincli train` job runs, and its input channels: one definition that
    the tuning job (tuner.py) reuses, so every trial is configured as `train` would be (but for
    `checkpoints`: None keeps none in S3, as tuning trials do).
    A `weights-file` in hp goes as the weights channel; the job is tagged resource_tags(workdir, step);
    the SDK's code uploads (source dir, drivers) go under <prefix>/sagemaker/code/."""
    from sagemaker.core import image_uris
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.training.configs import (
        CheckpointConfig,
        Compute,
        MetricDefinition,
        OutputDataConfig,
        SourceCode,
        StoppingCondition,
        Tag,
    )
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    from bincli.artifacts.bundle import write_core_bundle
    from bincli.pytorch_images import py_version

    sm_cfg = config.sagemaker
    hp, channels = with_weights_channel(hp, channels, bucket, prefix, session.region_name)
    image = sm_cfg.training_image or image_uris.retrieve(
        framework="pytorch", region=session.region_name, version=sm_cfg.framework_version,
        py_version=py_version(sm_cfg.framework_version, "training"),  # one that runs the core (config checked)
        instance_type=sm_cfg.train_instance_type, image_scope="training")
    source_dir = write_core_bundle(run_dir / "sourcedir")
    nproc = config.train.nproc_per_node
    trainer = ModelTrainer(
        sagemaker_session=Session(boto_session=session, default_bucket=bucket),
        role=role_arn(sm_cfg),
        training_image=image,
        base_job_name=sm_cfg.base_job_name,
        # The SDK uploads the source dir and its drivers to <this>/<job>/input/{code,sm_drivers}.
        input_s3_key_prefix=join_key(prefix, "sagemaker", "code"),
        tags=[Tag(key=t["Key"], value=t["Value"]) for t in resource_tags(config.workdir, step)],
        source_code=SourceCode(source_dir=str(source_dir), entry_script=TRAIN_SCRIPT),
        compute=Compute(instance_type=sm_cfg.train_instance_type, instance_count=sm_cfg.train_instance_count,
                        volume_size_in_gb=sm_cfg.volume_size_gb, enable_managed_spot_training=sm_cfg.spot),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=sm_cfg.max_run_minutes * 60,
            max_wait_time_in_seconds=sm_cfg.max_wait_minutes * 60 if sm_cfg.spot else None),
        checkpoint_config=CheckpointConfig(s3_uri=checkpoints, local_path=CHECKPOINT_PATH) if checkpoints else None,
        output_data_config=OutputDataConfig(s3_output_path=f"s3://{join_key(bucket, prefix, 'sagemaker', 'jobs')}"),
        hyperparameters=hp,
        # torchrun across instances, and across GPUs (SM_NUM_GPUS) unless nproc_per_node says otherwise.
        distributed=Torchrun(process_count_per_node=nproc if nproc > 1 else None),
    ).with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in metric_definitions()])
    return trainer, [_channel(name, uri, sm_cfg.input_mode) for name, uri in channels.items()]


def _channel(name: str, uri: str, input_mode: str) -> Any:
    """An S3 channel read in `input_mode` (File or FastFile), every instance getting all of it. A Channel,
    not an InputData: the SDK makes an S3 InputData a File channel whatever the job's mode."""
    from sagemaker.core.training.configs import Channel, DataSource, S3DataSource

    source = S3DataSource(s3_data_type="S3Prefix", s3_uri=uri.rstrip("/") + "/",
                          s3_data_distribution_type="FullyReplicated")
    return Channel(channel_name=name, data_source=DataSource(s3_data_source=source), input_mode=input_mode)


def job_failed(job: Mapping[str, Any]) -> BincliError:
    """One line for a job that ended Failed or Stopped: SageMaker's FailureReason (the script's last
    error for an AlgorithmError, the capacity or limit message otherwise)."""
    reason = job.get("FailureReason") or job.get("SecondaryStatus") or "no reason given"
    reason = " ".join(str(reason).split())  # SageMaker's reasons carry the script's newlines
    return BincliError(f"training job {job['TrainingJobName']} {job['TrainingJobStatus'].lower()}: {reason}",
                       hint="see its CloudWatch logs (/aws/sagemaker/TrainingJobs); "
                            "'bincli train' again starts a new job that resumes from its checkpoints")


def _warn_if_running(record: Mapping[str, Any], sm: Any, console) -> None:
    """--fresh starts another job; the one it replaces keeps running (and billing) unless stopped."""
    name = record.get("job_name")
    try:
        running = bool(name) and sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "InProgress"
    except Exception:
        return  # gone, or not ours to see: nothing to warn about
    if running:
        console.print(f"warning: training job {name} (started here before) is still running; to stop it: "
                      f"aws sagemaker stop-training-job --training-job-name {name}", markup=False, soft_wrap=True)


def _describe(sm: Any, job_name: str) -> dict[str, Any]:
    try:
        return sm.describe_training_job(TrainingJobName=job_name)
    except Exception as exc:
        raise aws_error(exc, f"training job {job_name}") from None


def _attachable(record: Mapping[str, Any], fingerprint: str, sm: Any) -> str | None:
    """The recorded job, if it was started with the same settings and can still succeed."""
    if not record.get("job_name") or record.get("fingerprint") != fingerprint:
        return None
    try:
        status = sm.describe_training_job(TrainingJobName=record["job_name"])["TrainingJobStatus"]
    except Exception as exc:
        if is_not_found(exc):
            return None  # gone (deleted, or another account or region): start a new one
        # Throttling, expired credentials, no network: never start a second, billed job on a guess.
        raise aws_error(exc, f"checking training job {record['job_name']}") from None
    return record["job_name"] if status in ("InProgress", "Completed") else None


def _wait(sm: Any, job_name: str, poll_seconds: float, console, logs: Any, epochs: int) -> dict[str, Any]:
    """Poll until the job ends, printing each status change and the job's epoch lines from its
    CloudWatch logs, as `train` shows a local run. Ctrl-C stops waiting, not the job."""
    from bincli.backends.sagemaker.job_logs import worth_showing
    from bincli.progress import TrainProgress

    seen = None
    try:
        with TrainProgress(console, epochs) as progress:
            while True:
                job = _describe(sm, job_name)
                for line in logs.new_lines():  # after the describe: a finished job's last lines are in
                    if worth_showing(line):
                        progress.line(line)
                status = (job["TrainingJobStatus"], job.get("SecondaryStatus"))
                if status != seen:
                    transitions = job.get("SecondaryStatusTransitions") or [{}]
                    message = transitions[-1].get("StatusMessage", "")
                    console.print(f"  {job_name}: {status[0]} / {status[1]}" + (f": {message}" if message else ""),
                                  markup=False, soft_wrap=True)
                    seen = status
                if status[0] in TERMINAL:
                    return job
                time.sleep(poll_seconds)  # polling a remote API; SageMaker has no push notification here
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped waiting; training job {job_name} keeps running on SageMaker",
            hint=f"'bincli train' again attaches to it; to stop it: aws sagemaker stop-training-job "
                 f"--training-job-name {job_name}") from None


def _download_artifacts(s3: Any, job: dict[str, Any], run_dir: Path) -> None:
    """The job's model.tar.gz into run_dir/model and output.tar.gz (metrics, plots) into run_dir/output."""
    from bincli.artifacts.modeltar import extract_model
    from bincli.core.contract import MODEL_INFO_FILE, WEIGHTS_FILE

    model_uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    output_uri = model_uri.rsplit("/", 1)[0] + "/output.tar.gz"
    for uri, sub, required in ((model_uri, "model", (WEIGHTS_FILE, MODEL_INFO_FILE)),
                               (output_uri, "output", (METRICS_FILE,))):
        bucket, key = parse_s3_uri(uri)
        tmp = run_dir / f".{sub}.tar.gz"
        try:
            s3.download_file(bucket, key, str(tmp))
        except Exception as exc:
            raise aws_error(exc, f"downloading {uri}") from None
        shutil.rmtree(run_dir / sub, ignore_errors=True)
        try:
            extract_model(tmp, run_dir / sub, required=required)
        finally:
            tmp.unlink(missing_ok=True)
