"""Every AWS permission backend sagemaker needs, in one list, and the IAM policies made from it.

CALLER: each call bincli (or the SDK on its behalf) makes as whoever runs it. ROLE: what SageMaker
does as the execution role (sagemaker.role_arn) for bincli's jobs and endpoints. `bincli doctor`
simulates both; `bincli doctor --write-policies DIR` writes them for the config, and policies/ holds
them for placeholders (python -m bincli.backends.sagemaker.permissions policies; a test keeps
those files equal to this list). tests/test_sagemaker_permissions.py fails when code calls an AWS
operation that no entry here covers.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE = "sagemaker.amazonaws.com"
SCALING_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"
LOG_GROUPS = "/aws/sagemaker/"
# The repositories of the images bincli resolves (image_uris "pytorch", training and inference scope).
REPOSITORIES = ("pytorch-training", "pytorch-inference")


@dataclass(frozen=True)
class Permission:
    action: str
    on: str                    # a resource kind: see Scope.resources
    steps: frozenset[str]      # the bincli steps that need it ("autoscaling": deploy with deploy.autoscaling)
    why: str
    optional: bool = False     # bincli works without it; the check it serves says "not checked"
    context: dict[str, str] = field(default_factory=dict)  # the condition it is granted under


def _p(action: str, on: str, steps: str, why: str, optional: bool = False, **context: str) -> Permission:
    return Permission(action, on, frozenset(steps.split()), why, optional,
                      {k.replace("__", ":"): v for k, v in context.items()})


_BILLED = "train tune deploy"
CALLER: tuple[Permission, ...] = (
    # S3: the split, the code, checkpoints and models bincli puts there and reads back
    _p("s3:ListBucket", "buckets", "upload train tune predict", "upload lists what is there; the SDK's HeadBucket"),
    _p("s3:GetBucketLocation", "buckets", f"{_BILLED} predict doctor", "every bucket must be in sagemaker.region"),
    _p("s3:GetObject", "objects", "upload train predict", "HeadObject before re-uploading; jobs' models and output"),
    _p("s3:PutObject", "objects", "upload train tune deploy predict", "the split, the SDK's code, weights, models"),
    _p("s3:AbortMultipartUpload", "objects", "upload train deploy", "a failed multipart upload is cleaned up"),
    _p("s3:ListAllMyBuckets", "any", "train tune", "the SDK's Session.default_bucket() lists buckets"),
    _p("s3:GetEncryptionConfiguration", "buckets", "doctor", "a bucket's KMS key needs kms rights", True),
    # SageMaker: training and tuning jobs
    _p("sagemaker:CreateTrainingJob", "training-job", "train", "the training job"),
    _p("sagemaker:DescribeTrainingJob", "training-job", "train tune status", "its progress, artifacts, bill"),
    _p("sagemaker:CreateHyperParameterTuningJob", "tuning-job", "tune", "the tuning job"),
    _p("sagemaker:DescribeHyperParameterTuningJob", "tuning-job", "tune", "its progress and best trial"),
    _p("sagemaker:ListTrainingJobsForHyperParameterTuningJob", "tuning-job", "tune", "its trials"),
    _p("sagemaker:StopHyperParameterTuningJob", "tuning-job", "tune", "tune --stop"),
    _p("sagemaker:AddTags", "sagemaker", f"{_BILLED} predict", "resources are tagged as they are created"),
    _p("iam:PassRole", "role", f"{_BILLED} predict", "jobs and models run as the execution role",
       iam__PassedToService=SERVICE),
    # SageMaker: endpoints
    _p("sagemaker:CreateModel", "model", "deploy predict", "the model (an endpoint's, a batch job's)"),
    _p("sagemaker:CreateEndpointConfig", "endpoint-config", "deploy", "the endpoint config"),
    _p("sagemaker:CreateEndpoint", "endpoint", "deploy", "the endpoint"),
    _p("sagemaker:UpdateEndpoint", "endpoint", "deploy", "deploy --update"),
    _p("sagemaker:DescribeEndpoint", "endpoint", "deploy status teardown", "wait for InService; status"),
    _p("sagemaker:DescribeEndpointConfig", "endpoint-config", "autoscaling teardown",
       "autoscaling reads the variant; teardown checks a config is ours"),
    _p("sagemaker:DescribeModel", "model", "teardown", "teardown checks a model is ours"),
    _p("sagemaker:UpdateEndpointWeightsAndCapacities", "endpoint", "autoscaling", "autoscaling changes the count"),
    _p("sagemaker:InvokeEndpoint", "endpoint", "predict", "predict, evaluate, loadtest"),
    _p("sagemaker:CreateTransformJob", "transform-job", "predict", "predict s3://: a batch transform job"),
    _p("sagemaker:DescribeTransformJob", "transform-job", "predict", "predict s3://: its progress"),
    _p("sagemaker:StopTransformJob", "transform-job", "predict", "predict s3:// stopped"),
    _p("sagemaker:DeleteEndpoint", "endpoint", "deploy teardown", "teardown; a failed deploy"),
    _p("sagemaker:DeleteEndpointConfig", "endpoint-config", "deploy teardown", "teardown; an update"),
    _p("sagemaker:DeleteModel", "model", "deploy predict teardown", "teardown; an update; a batch job's"),
    _p("sagemaker:ListEndpoints", "any", "teardown", "teardown --all"),
    _p("sagemaker:ListEndpointConfigs", "any", "teardown", "teardown --all"),
    _p("sagemaker:ListModels", "any", "teardown", "teardown --all"),
    _p("sagemaker:ListTags", "sagemaker", "deploy teardown",
       "teardown (and deploy, on 'already exists') check an endpoint is ours; --all finds this workspace's"),
    _p("tag:GetResources", "any", "teardown", "teardown --all finds this workspace's resources by tag"),
    # Application Auto Scaling (deploy.autoscaling): target tracking makes its alarms as the caller
    _p("application-autoscaling:RegisterScalableTarget", "any", "autoscaling", "deploy.autoscaling"),
    _p("application-autoscaling:PutScalingPolicy", "any", "autoscaling", "deploy.autoscaling"),
    _p("application-autoscaling:DescribeScalingPolicies", "any", "autoscaling teardown", "teardown"),
    _p("application-autoscaling:DeleteScalingPolicy", "any", "autoscaling teardown", "teardown"),
    _p("application-autoscaling:DeregisterScalableTarget", "any", "autoscaling teardown", "teardown"),
    _p("cloudwatch:PutMetricAlarm", "any", "autoscaling", "the target-tracking policy's alarms"),
    _p("cloudwatch:DescribeAlarms", "any", "autoscaling", "the target-tracking policy's alarms"),
    _p("cloudwatch:DeleteAlarms", "any", "autoscaling teardown", "the target-tracking policy's alarms"),
    _p("iam:CreateServiceLinkedRole", "scaling-role", "autoscaling", "autoscaling's role, made once per account",
       iam__AWSServiceName=SCALING_SERVICE),
    _p("kms:GenerateDataKey", "kms-keys", "upload train tune deploy", "writing to a bucket with a customer key"),
    _p("kms:Decrypt", "kms-keys", "train", "reading from a bucket with a customer key"),
    # Reading: the live log view, the preflight checks
    _p("logs:FilterLogEvents", "log-groups", "train", "the job's epoch lines while it runs", True),
    _p("iam:GetRole", "role", f"{_BILLED} doctor", "the role exists and trusts SageMaker", True),
    _p("iam:SimulatePrincipalPolicy", "principals", f"{_BILLED} doctor", "the role's and your rights", True),
    _p("servicequotas:ListServiceQuotas", "any", f"{_BILLED} doctor", "instance quotas", True),
    _p("servicequotas:ListAWSDefaultServiceQuotas", "any", f"{_BILLED} doctor", "instance quotas", True),
)

# The SDK's own role check (ModelTrainer -> resolve_and_validate_role) simulates these on "*".
_SDK_ROLE_CHECK = ("ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                   "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
                   "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                   "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups")
ROLE: tuple[Permission, ...] = (
    _p("s3:ListBucket", "buckets", f"{_BILLED} predict", "the channels are listed"),
    _p("s3:GetBucketLocation", "buckets", f"{_BILLED} predict", "SageMaker checks the bucket's region"),
    _p("s3:GetObject", "objects", f"{_BILLED} predict", "channels, checkpoints, the model, batch inputs"),
    _p("s3:PutObject", "objects", "train tune predict", "checkpoints, artifacts, batch outputs"),
    _p("s3:DeleteObject", "objects", "train tune", "checkpoint sync"),
    _p("s3:AbortMultipartUpload", "objects", "train tune", "a failed artifact upload"),
    _p("ecr:GetAuthorizationToken", "any", f"{_BILLED} predict", "pull the image"),
    _p("ecr:BatchGetImage", "images", f"{_BILLED} predict", "pull the image"),
    _p("ecr:GetDownloadUrlForLayer", "images", f"{_BILLED} predict", "pull the image"),
    _p("ecr:BatchCheckLayerAvailability", "images", f"{_BILLED} predict", "pull the image"),
    _p("logs:CreateLogGroup", "log-groups", f"{_BILLED} predict", "the container's logs"),
    _p("logs:CreateLogStream", "log-groups", f"{_BILLED} predict", "the container's logs"),
    _p("logs:PutLogEvents", "log-groups", f"{_BILLED} predict", "the container's logs"),
    _p("logs:DescribeLogStreams", "log-groups", f"{_BILLED} predict", "the container's logs"),
    _p("cloudwatch:PutMetricData", "any", _BILLED, "the job's metrics"),
    *(_p(a, "any", "train tune", "network interfaces: the SDK's role check requires them") for a in _SDK_ROLE_CHECK),
    _p("kms:Decrypt", "kms-keys", _BILLED, "objects in a bucket with a customer key"),
    _p("kms:GenerateDataKey", "kms-keys", "train tune", "objects written to a bucket with a customer key"),
)


@functools.cache  # botocore reads its endpoint table per session: once is enough
def partition_of(region: str | None) -> str:
    """The ARN partition of a region: aws-cn for China, aws-us-gov for GovCloud, ... (botocore's table)."""
    if region and region != "*":
        try:
            import botocore.session

            return botocore.session.get_session().get_partition_for_region(region)
        except Exception:  # an unknown region: botocore's own fallbacks are these prefixes
            for prefix, partition in (("cn-", "aws-cn"), ("us-gov-", "aws-us-gov"), ("us-isob-", "aws-iso-b"),
                                      ("us-iso-", "aws-iso")):
                if region.startswith(prefix):
                    return partition
    return "aws"


_IMAGE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.[a-z0-9.]+/(?P<repo>[^:@]+)")


def image_repository(image: str, partition: str) -> str | None:
    """The ECR repository ARN of an image URI (registry account, region and repository from the URI
    itself: AWS's PyTorch images live in another account in many regions), or None if not ECR."""
    m = _IMAGE.match(image)
    return f"arn:{partition}:ecr:{m['region']}:{m['account']}:repository/{m['repo']}" if m else None


@dataclass(frozen=True)
class Scope:
    """What the policies are for: placeholders by default (policies/), a config's values for --write-policies."""

    region: str = "*"
    account: str = "*"
    role_arn: str = "arn:aws:iam::*:role/bincli-sagemaker"
    caller_arn: str = "arn:aws:iam::*:user/${aws:username}"  # an IAM policy variable: the user itself
    locations: tuple[str, ...] = ("BUCKET/PREFIX",)  # "bucket/prefix": every place bincli reads or writes
    images: tuple[str, ...] = ()  # image URIs; none: AWS's PyTorch repositories in any account
    kms_keys: tuple[str, ...] = ()

    @property
    def partition(self) -> str:
        return partition_of(self.region)

    def resources(self, kind: str) -> list[str]:
        p, r, a = self.partition, self.region, self.account
        sm = f"arn:{p}:sagemaker:{r}:{a}"
        kinds = {
            "any": ["*"],
            "buckets": [f"arn:{p}:s3:::{b}" for b in sorted({loc.split('/')[0] for loc in self.locations})],
            "objects": [f"arn:{p}:s3:::{loc.rstrip('/')}/*" for loc in sorted(set(self.locations))],
            "role": [self.role_arn],
            "principals": sorted({self.role_arn, self.caller_arn}),
            "scaling-role": [f"arn:{p}:iam::{a}:role/aws-service-role/{SCALING_SERVICE}/*"],
            "training-job": [f"{sm}:training-job/*"],
            "tuning-job": [f"{sm}:hyper-parameter-tuning-job/*"],
            "model": [f"{sm}:model/*"],
            "endpoint-config": [f"{sm}:endpoint-config/*"],
            "endpoint": [f"{sm}:endpoint/*"],
            "transform-job": [f"{sm}:transform-job/*"],
            "sagemaker": [f"{sm}:{k}/*" for k in ("training-job", "hyper-parameter-tuning-job", "model",
                                                  "endpoint-config", "endpoint", "transform-job")],
            "log-groups": [f"arn:{p}:logs:{r}:{a}:log-group:{LOG_GROUPS}*"],
            "images": sorted({arn for i in self.images if (arn := image_repository(i, p))})
            or [f"arn:{p}:ecr:{r}:*:repository/{repo}" for repo in REPOSITORIES],
            "kms-keys": list(self.kms_keys),
        }
        return kinds[kind]


def policy(permissions: Iterable[Permission], scope: Scope) -> dict[str, Any]:
    """One IAM policy document: one statement per resource kind and condition, actions sorted."""
    groups: dict[tuple[str, str], set[str]] = {}
    for perm in permissions:
        groups.setdefault((perm.on, json.dumps(perm.context, sort_keys=True)), set()).add(perm.action)
    statements = []
    for (kind, context), actions in sorted(groups.items()):
        resources = scope.resources(kind)
        if not resources:  # no KMS key: no statement
            continue
        statement: dict[str, Any] = {"Sid": re.sub(r"[^A-Za-z0-9]", "", kind.title()), "Effect": "Allow",
                                     "Action": sorted(actions), "Resource": resources}
        if json.loads(context):
            statement["Sid"] += "Conditional"
            statement["Condition"] = {"StringEquals": json.loads(context)}
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}


def trust_policy() -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": SERVICE},
                                                   "Action": "sts:AssumeRole"}]}


POLICY_FILES = ("caller-policy.json", "execution-role-policy.json", "execution-role-trust-policy.json")


def write_policies(folder: Path, scope: Scope = Scope()) -> list[Path]:
    """The three policy files into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    documents = (policy(CALLER, scope), policy(ROLE, scope), trust_policy())
    paths = []
    for name, document in zip(POLICY_FILES, documents, strict=True):
        (folder / name).write_text(json.dumps(document, indent=2) + "\n")
        paths.append(folder / name)
    return paths


# botocore's service name -> IAM's action prefix, where they differ.
_IAM_PREFIX = {"sagemaker-runtime": "sagemaker", "service-quotas": "servicequotas", "resourcegroupstaggingapi": "tag"}
# (service, operation) -> the IAM action that authorises it, where it is not prefix:Operation.
_ACTION_OF = {
    ("s3", "ListObjectsV2"): "s3:ListBucket", ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject", ("s3", "ListBuckets"): "s3:ListAllMyBuckets",
    ("s3", "CreateMultipartUpload"): "s3:PutObject", ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject", ("s3", "GetBucketEncryption"): "s3:GetEncryptionConfiguration",
    ("sts", "GetCallerIdentity"): None,  # needs no permission: it always answers
}


def iam_action(service: str, operation: str) -> str | None:
    """The IAM action a boto3 call needs (`service` as boto3.client() names it), or None if none."""
    if (service, operation) in _ACTION_OF:
        return _ACTION_OF[service, operation]
    return f"{_IAM_PREFIX.get(service, service)}:{operation}"


if __name__ == "__main__":  # regenerate policies/: python -m bincli.backends.sagemaker.permissions policies
    import sys

    for path in write_policies(Path(sys.argv[1] if len(sys.argv) > 1 else "policies")):
        print(path)
