"""What a SageMaker training instance offers the entry point: its GPUs, which bound torchrun's
processes per node (NCCL refuses two ranks on one GPU; CPU instances run any number under gloo)."""

from __future__ import annotations

import re

from bincli.errors import ConfigError

# GPU instance types the SDK's table (sagemaker.core.instance_types_gpu_info) lacks, as of SDK 3.27.
MORE_GPUS = {
    **{f"ml.{family}.{size}": 1 for family in ("g6", "g6e") for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge",
                                                                        "16xlarge")},
    **{f"ml.{family}.{size}": 4 for family in ("g6", "g6e") for size in ("12xlarge", "24xlarge")},
    "ml.g6.48xlarge": 8, "ml.g6e.48xlarge": 8, "ml.p5e.48xlarge": 8, "ml.p5en.48xlarge": 8,
}
# General purpose, compute, memory, burstable (ml.m5, ml.c6i, ml.r5d, ml.t3): no GPU. Not trn/inf.
CPU_FAMILY = re.compile(r"ml\.[mcrt][0-9]+[a-z]*\..+")


def gpu_count(instance_type: str, region: str) -> int | None:
    """The instance type's GPUs: the SDK's table, then bincli's few additions; 0 for a CPU family;
    None when neither knows it."""
    from sagemaker.core import instance_types_gpu_info

    try:
        known = instance_types_gpu_info.retrieve(region)
    except ValueError:  # the SDK's table is missing
        known = {}
    if instance_type in known:
        return int(known[instance_type]["Count"])
    if instance_type in MORE_GPUS:
        return MORE_GPUS[instance_type]
    return 0 if CPU_FAMILY.fullmatch(instance_type) else None


def check_processes_per_node(nproc: int, instance_type: str, region: str) -> int | None:
    """Refuse more torchrun processes per node than the instance has GPUs, before a job is created
    (otherwise the job bills until NCCL fails). Returns the GPU count (None: unknown, not checked)."""
    gpus = gpu_count(instance_type, region)
    if nproc > 1 and gpus and nproc > gpus:
        raise ConfigError(f"train.nproc_per_node: {nproc} processes per node, but {instance_type} has {gpus} "
                          f"GPU{'s' if gpus > 1 else ''} (NCCL takes one process per GPU); expected at most {gpus}",
                          hint="lower --nproc-per-node (1 = one process per GPU), or pick an instance type "
                               "with more GPUs (sagemaker.train_instance_type)")
    return gpus
