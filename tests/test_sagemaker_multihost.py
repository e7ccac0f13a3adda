"""Training on two instances, simulated on this machine. `bincli train` with sagemaker.train_instance_count
2 creates the job on moto; tests/sagemaker_container.py then runs both of its hosts at once, each with an
/opt/ml of its own (resourceconfig.json hosts [algo-1, algo-2], its own current_host), through the
SDK's sm_train.sh, environment.py and torchrun driver: the driver starts torchrun with --nnodes 2 and
the host's --node_rank, and torchrun starts the core entry point. Tiny on purpose: 32 px, 36 train
photos, 2 epochs, one thread per rank."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from bincli.config import Config, SageMakerConfig, TrainConfig, UploadConfig
from bincli.core.contract import CHECKPOINT_LAST, METRICS_FILE, MODEL_INFO_FILE, WEIGHTS_FILE, parse_epoch_line
from bincli.data.upload import run_upload
from sagemaker_container import Host, finish_job, start_job
from train_blobs import make_split, record_split

# The collective timeout (BINCLI_COLLECTIVE_TIMEOUT, seconds) of the lost-host test: a little more than
# the two hosts' workers may start apart on a busy machine (joining the group waits as long). The other
# jobs get a long one: rank 0 alone writes checkpoints and the model while the others wait.
TIMEOUT = 10
ENV = {"OMP_NUM_THREADS": "1", "BINCLI_COLLECTIVE_TIMEOUT": "120"}


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return make_split(tmp_path_factory.mktemp("split"), {"train": 6, "valid": 2, "test": 2}, "0-5", size=32)


@pytest.fixture
def workspace(sagemaker_env, split, tmp_path):
    """The split recorded and uploaded to moto's S3 as `bincli upload` does: (workdir, s3, sm, role)."""
    s3, sm, bucket, role = sagemaker_env
    workdir = tmp_path / "work"
    record_split(workdir, split)
    run_upload(UploadConfig(s3_uri=f"s3://{bucket}/abid"), workdir, progress=False)
    return workdir, s3, sm, role


def _job(workspace, nproc: int, epochs: int = 2, input_mode: str = "File") -> str:
    """A 2-instance training job as `bincli train` creates it (spot, checkpoints in S3); its name."""
    from bincli.steps.train import run_train

    workdir, _, _, role = workspace
    cfg = Config(workdir=workdir, backend="sagemaker",
                 # Only the head trains: DDP all-reduces its gradients alone, not resnet18's 45 MB.
                 train=TrainConfig(epochs=epochs, batch_size=2, image_size=32, workers=0, nproc_per_node=nproc,
                                   freeze="backbone"),
                 sagemaker=SageMakerConfig(role_arn=role, region="us-east-1", train_instance_type="ml.m5.xlarge",
                                           train_instance_count=2, poll_seconds=0.01, preflight=False,
                                           input_mode=input_mode))
    return run_train(cfg, wait=False, console=Console(file=io.StringIO(), width=300))["job_name"]


def _epochs(text: str) -> list[int]:
    lines = (parse_epoch_line(line.split("INFO ")[-1]) for line in text.splitlines())
    return [int(m["epoch"]) for m in lines if m]


def _weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert all(torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=1e-6) for k in a), worst


_REFERENCE: dict[str, dict] = {}


def _single_host_reference(host: Host, tmp: Path, ranks: int) -> dict:
    """model.pth of the same run on ONE host: torchrun --standalone, as many ranks, the same script,
    arguments (those algo-1's driver ran) and channels. The same global batch (ranks x 2) and the same
    rank -> shard and rank -> seed mapping: DDP's result may depend only on the ranks, not on where
    they run. Made once per module (the tests that compare with it run the same hyperparameters)."""
    command = re.search(r"Executing command: (torchrun .*)", host.text()).group(1).split()
    script = next(i for i, a in enumerate(command) if a.endswith("train.py"))
    key = f"{ranks} " + " ".join(command[script + 1:])
    if key not in _REFERENCE:
        data, out = host.base / "input" / "data", tmp / "reference"
        args = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                command[script], *command[script + 1:],
                "--train", str(data / "train"), "--valid", str(data / "valid"),  # valid: picks the best epoch
                "--model-dir", str(out / "model"), "--output-dir", str(out / "output"),
                "--checkpoint-dir", str(out / "checkpoints"), "--cache-dir", str(out / "cache")]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
        result = subprocess.run(args, cwd=data / "code", env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        _REFERENCE[key] = _weights(out / "model" / WEIGHTS_FILE)
    return _REFERENCE[key]


def test_two_hosts_train_as_one_group_resume_after_spot_and_only_the_first_writes(workspace, tmp_path):
    """One job, as managed spot runs it: both instances go at once after epoch 1; the job restarts on
    new instances, whose /opt/ml/checkpoints SageMaker fills from the job's checkpoint URI (the
    stand-in syncs it), and finishes epoch 2. Asserted on the two runs together."""
    _, s3, sm, _ = workspace
    job_name = _job(workspace, nproc=2)
    hosts = start_job(sm, s3, job_name, tmp_path / "run1", env=ENV)
    hosts[0].wait_for("\nepoch=1 train_loss=", timeout=240)  # the epoch line: after its checkpoint is saved
    for host in hosts:
        host.kill()
    interrupted = finish_job(sm, s3, job_name, hosts, timeout=60, sync_checkpoints=True)
    assert all(host.returncode == -signal.SIGKILL for host in interrupted)
    first, second = finish_job(sm, s3, job_name, start_job(sm, s3, job_name, tmp_path / "run2", env=ENV),
                               timeout=300)

    for host in (first, second):
        assert host.returncode == 0, f"{host.name}:\n{host.text()[-4000:]}"
        assert "Running Torchrun Driver" in host.text() and "Training Container Execution Completed" in host.text()
    # The SDK's driver: one node of two, its rank from the host's place in the sorted host list.
    assert "--nnodes=2 --nproc_per_node=2 --master_addr=127.0.0.1" in first.text()
    assert "--node_rank=0" in first.text() and "--node_rank=1" in second.text()
    # One group of 4: algo-1 holds ranks 0-1 (node rank 0), algo-2 ranks 2-3.
    assert "distributed: 4 ranks on 2 hosts: algo-1 ranks 0-1, algo-2 ranks 2-3" in first.text(), first.text()[-3000:]
    # The restart resumed from the checkpoint algo-1 wrote, brought to the new hosts from S3.
    assert re.search(r"resuming from \S+/checkpoints/last.pt at epoch 2", first.text()), first.text()[-3000:]
    # Both hosts read the same 36-image split; each epoch's 4 shards are disjoint and cover it.
    for run, epoch in ((interrupted[0], 1), (first, 2)):
        assert re.search(rf"train split \w+ \(36 images\) on every rank; epoch {epoch}: 4 shards of 9 images, "
                         r"disjoint, covering 36", run.text()), run.text()[-3000:]
    # The tuner's metric line: once per epoch, by rank 0 (on algo-1) only.
    assert _epochs(interrupted[0].text()) == [1] and _epochs(first.text()) == [2]
    assert _epochs(interrupted[1].text()) == _epochs(second.text()) == []
    # Only algo-1 (rank 0) writes the model, the metrics and the checkpoints; algo-2's folders stay empty,
    # so the job's model.tar.gz is the same whichever hosts' model dirs SageMaker collects.
    assert sorted(p.name for p in (first.base / "model").iterdir()) == sorted([WEIGHTS_FILE, MODEL_INFO_FILE])
    assert (first.base / "output" / "data" / METRICS_FILE).is_file()
    assert (interrupted[0].base / "checkpoints" / CHECKPOINT_LAST).is_file()
    for host in (interrupted[1], second):
        for folder in ("model", "output/data"):
            assert list((host.base / folder).iterdir()) == [], folder
    assert list((interrupted[1].base / "checkpoints").iterdir()) == []
    # The weights of one uninterrupted run of the same 4 ranks on one host.
    _assert_same_weights(_weights(first.base / "model" / WEIGHTS_FILE), _single_host_reference(first, tmp_path, 4))


def test_a_lost_host_fails_the_job_on_both_with_one_error_within_the_collective_timeout(workspace, tmp_path):
    """algo-2 stops answering mid-epoch without closing anything (SIGSTOP to all of its processes: a
    hung or vanished instance). algo-1 fails when the collective timeout runs out; let go again,
    algo-2 fails too, its peer gone. (A host whose peer dies outright sees its connections reset at once.)"""
    import time

    _, s3, sm, _ = workspace
    job_name = _job(workspace, nproc=1, epochs=50)
    env = {**ENV, "BINCLI_COLLECTIVE_TIMEOUT": str(TIMEOUT)}
    first, second = start_job(sm, s3, job_name, tmp_path / "job", env=env)
    try:
        first.wait_for("on every rank; epoch 1:", timeout=240)  # all ranks joined; epoch 1 starts
        second.kill(signal.SIGSTOP)
        lost_at = time.monotonic()
        assert first.wait(timeout=TIMEOUT + 60) != 0, first.text()[-3000:]
        took = time.monotonic() - lost_at  # the timeout, and torchrun's and the driver's exits
        second.kill(signal.SIGCONT)
        finish_job(sm, s3, job_name, [first, second], timeout=60)
    finally:
        second.kill()
    for rank, host in enumerate((first, second)):
        assert host.returncode not in (0, None), host.text()[-3000:]
        errors = [line for line in host.text().splitlines() if "ERROR bincli.train: error: " in line]
        assert len(errors) == 1, host.text()[-4000:]
        assert f"lost contact with the other ranks (rank {rank} on {host.name})" in errors[0]
        assert f"(collective timeout {TIMEOUT} s)" in errors[0]
        # The job's failure file (SageMaker's FailureReason) is that line, not the driver's traceback.
        assert (host.base / "output" / "failure").read_text().startswith("lost contact with the other ranks")
    # algo-1 gave up on a collective at the timeout: its peer was alive, only silent.
    assert f"Timed out waiting {TIMEOUT * 1000}ms" in first.text() and took < TIMEOUT + 60


def test_ranks_together_take_the_batches_one_process_takes_with_the_same_global_batch():
    """Why the weights are compared with one host running the same 4 ranks, not with one process of
    batch 8: the samplers agree (step k of the 4 ranks together is step k of the one process, the
    same 8 photos), but each rank normalises BatchNorm over its own 2 photos and draws its own
    augmentations (seed + rank), so one process of batch 8 trains differently by design."""
    from bincli.core.data import TrainSampler

    def epoch_1(rank: int, world: int) -> list[int]:
        sampler = TrainSampler(n, rank, world, seed=0)
        sampler.set_epoch(1)
        return list(sampler)

    n, world, per_rank = 36, 4, 2
    one, ranks = epoch_1(0, 1), [epoch_1(r, world) for r in range(world)]
    for step in range(n // (world * per_rank)):
        together = sorted(i for r in ranks for i in r[step * per_rank:(step + 1) * per_rank])
        assert together == sorted(one[step * world * per_rank:(step + 1) * world * per_rank])


def test_input_mode_goes_to_each_data_channel(workspace):
    _, _, sm, _ = workspace
    job = sm.describe_training_job(TrainingJobName=_job(workspace, nproc=1, input_mode="FastFile"))
    modes = {c["ChannelName"]: c.get("InputMode") for c in job["InputDataConfig"]}
    assert {name: modes[name] for name in ("train", "valid", "test")} == dict.fromkeys(("train", "valid", "test"),
                                                                                        "FastFile")
    assert job["ResourceConfig"]["InstanceCount"] == 2
