"""The entry point under SageMaker SDK v3's own launcher: a ModelTrainer job created on moto, then
run as its container would run it (tests/sagemaker_container.py): the SDK's sm_train.sh,
environment.py and basic-script or torchrun driver, with bincli's hyperparameters as the SDK
serialises them. The sagemaker-training toolkit path (tuning jobs) is in test_core_train.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bincli.artifacts.bundle import write_core_bundle
from bincli.config import TrainConfig
from bincli.core.contract import MODEL_INFO_FILE, WEIGHTS_FILE, parse_epoch_line
from bincli.hyperparameters import hyperparameters_from
from sagemaker_container import run_training_job
from train_blobs import make_channels

CHANNELS = ("train", "valid", "test")


def _upload_channels(s3, bucket: str, channels: dict[str, Path]) -> dict[str, str]:
    uris = {}
    for name, folder in channels.items():
        for path in folder.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), bucket, f"data/{name}/{path.relative_to(folder).as_posix()}")
        uris[name] = f"s3://{bucket}/data/{name}/"
    return uris


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2], ids=["basic-driver", "torchrun-driver"])
def test_modeltrainer_job_runs_the_entry_point(sagemaker_env, tmp_path, processes):
    from sagemaker.core import image_uris
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.training.configs import Compute, InputData, OutputDataConfig, SourceCode
    from sagemaker.train import ModelTrainer
    from sagemaker.train.distributed import Torchrun

    s3, sm, bucket, role = sagemaker_env
    uris = _upload_channels(s3, bucket, make_channels(tmp_path / "data", {"train": 6, "valid": 2, "test": 2},
                                                      "0-5", size=32))
    bundle = write_core_bundle(tmp_path / "sourcedir")
    hp = {**hyperparameters_from(TrainConfig(epochs=2, batch_size=8, image_size=32, workers=0)),
          "classes": "0-5"}  # from the split, as `bincli train` adds it
    assert hp["pretrained"] is False  # sent as "false", a bool the entry point must read back

    import boto3

    trainer = ModelTrainer(
        sagemaker_session=Session(boto_session=boto3.Session(), default_bucket=bucket),
        role=role, base_job_name="bincli-test",
        training_image=image_uris.retrieve(framework="pytorch", region="us-east-1", version="2.8",
                                           instance_type="ml.m5.xlarge", image_scope="training"),
        source_code=SourceCode(source_dir=str(bundle), entry_script="train.py"),
        compute=Compute(instance_type="ml.m5.xlarge", instance_count=1),
        output_data_config=OutputDataConfig(s3_output_path=f"s3://{bucket}/output"),
        hyperparameters=hp,
        distributed=Torchrun(process_count_per_node=processes) if processes > 1 else None,
    )
    trainer.train(input_data_config=[InputData(channel_name=name, data_source=uris[name]) for name in CHANNELS],
                  wait=False, logs=False)
    job_name = trainer._latest_training_job.training_job_name

    base = tmp_path / "opt_ml"
    result = run_training_job(sm, s3, job_name, base)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert ("Running Torchrun Driver" if processes > 1 else "Running Basic Script driver") in log
    assert "Training Container Execution Completed" in log
    assert not (base / "output" / "failure").exists()

    epochs = [m for m in (parse_epoch_line(line.split("INFO ")[-1]) for line in log.splitlines()) if m]
    assert [m["epoch"] for m in epochs] == [1, 2], log[-4000:]  # one line per epoch: rank 0 only
    assert sorted(p.name for p in (base / "model").iterdir()) == sorted([WEIGHTS_FILE, MODEL_INFO_FILE])
    info = json.loads((base / "model" / MODEL_INFO_FILE).read_text())
    assert info["arch"] == "resnet18" and info["image_size"] == 32 and info["labels"] == ["0", "1", "2", "3", "4", "5"]
    metrics = json.loads((base / "output" / "data" / "metrics.json").read_text())
    assert "test" in metrics and 0 <= metrics["test"]["accuracy"] <= 1
    if processes > 1:
        assert "ranks agree: 2 ranks" in log
