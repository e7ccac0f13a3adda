"""A training job's CloudWatch log lines (JobLogs) against a moto server: throttling pauses the live
view and it comes back; other refusals turn it off. moto never throttles: a botocore hook answers
FilterLogEvents with the refusal instead (aws_standins.refuse), and nothing else is faked."""

from __future__ import annotations

import contextlib
import time
import uuid

import boto3
import pytest

from aws_standins import refuse
from bincli.backends.sagemaker import job_logs
from bincli.backends.sagemaker.job_logs import LOG_GROUP, MAX_SKIP, JobLogs

EVENT = "before-call.cloudwatch-logs.FilterLogEvents"


@pytest.fixture(autouse=True)
def _own_log_group(monkeypatch):
    """A log group of this test's own: moto's FilterLogEvents ignores logStreamNamePrefix, so other
    tests' training jobs (same moto server, same group) would show in this one's view."""
    monkeypatch.setattr(job_logs, "LOG_GROUP", f"{LOG_GROUP}-{uuid.uuid4().hex[:8]}")


def _job_with_lines(lines: list[str]) -> str:
    logs = boto3.client("logs")
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=job_logs.LOG_GROUP)
    job = f"bincli-{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)  # CloudWatch (and moto) refuse events older than 14 days
    stream = f"{job}/algo-1-{now_ms // 1000}"
    logs.create_log_stream(logGroupName=job_logs.LOG_GROUP, logStreamName=stream)
    logs.put_log_events(logGroupName=job_logs.LOG_GROUP, logStreamName=stream,
                        logEvents=[{"timestamp": now_ms + i, "message": m} for i, m in enumerate(lines)])
    return job


def _session(refusal) -> boto3.Session:
    session = boto3.Session()
    session.events.register(EVENT, refusal)
    return session


def test_throttled_reads_pause_the_log_view_then_it_comes_back(aws_env):
    job = _job_with_lines(["epoch 1/2 ...", "epoch 2/2 ..."])
    throttled = 3
    refusal = refuse("ThrottlingException", "Rate exceeded", when=lambda params: refusal.calls < throttled)
    logs = JobLogs(_session(refusal), job)

    polls = []
    while not (lines := logs.new_lines()):
        polls.append(refusal.calls)
        assert len(polls) < 20 and not logs.failed  # still following the job
    assert lines == ["epoch 1/2 ...", "epoch 2/2 ..."]
    # Each throttled read in a row skips more polls before the next read: 1, then 2, then 4 (MAX_SKIP).
    assert MAX_SKIP == 4 and polls == [1, 1, 2, 2, 2, 3, 3, 3, 3, 3]
    assert logs.new_lines() == []  # nothing new, nothing shown twice


def test_an_access_denied_turns_the_log_view_off_for_the_job(aws_env):
    job = _job_with_lines(["epoch 1/2 ..."])
    refusal = refuse("AccessDeniedException", "not authorized to perform logs:FilterLogEvents")
    logs = JobLogs(_session(refusal), job)
    assert logs.new_lines() == [] and logs.failed
    assert logs.new_lines() == [] and refusal.calls == 1  # not asked again
