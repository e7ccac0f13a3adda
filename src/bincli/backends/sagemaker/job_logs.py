"""A training job's CloudWatch log lines, followed while bincli waits for the job.

SageMaker writes each host's container output to /aws/sagemaker/TrainingJobs, stream
`<job>/algo-<n>-<epoch seconds>`. Only the first host's lines are shown: rank 0 prints the epoch
lines. Logs are a nicety: a failure to read them never fails the step. Throttling (CloudWatch Logs
allows few FilterLogEvents a second per account, shared with every other reader) only pauses the
view: the next reads are skipped, more of them after each throttled one in a row, up to MAX_SKIP.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from bincli.core.contract import parse_epoch_line, parse_progress_line

log = logging.getLogger("bincli.train")

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
THROTTLED = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"})
MAX_SKIP = 4  # polls skipped at most after a throttled read (poll_seconds apart)
# The entry point's own log lines ("INFO bincli.train: ..."), as opposed to the SDK driver's chatter
# (environment dumps, commands): those stay in CloudWatch.
_OUR_LOG_LINE = re.compile(r"\b(INFO|WARNING|ERROR) bincli[.\w]*: ")


class JobLogs:
    def __init__(self, session: Any, job_name: str):
        from botocore.config import Config as BotoConfig

        self.client = session.client("logs", config=BotoConfig(retries={"mode": "standard"}))
        self.prefix = f"{job_name}/algo-1-"
        self.start_ms = 0
        self.seen: set[str] = set()
        self.failed = False
        self.throttled = 0  # throttled reads in a row
        self.skip = 0       # polls to skip before the next read

    def new_lines(self) -> list[str]:
        """Lines logged since the last call, in order (none while backing off after throttling)."""
        if self.failed:
            return []
        if self.skip:
            self.skip -= 1
            return []
        events: list[dict[str, Any]] = []
        try:
            pages = self.client.get_paginator("filter_log_events").paginate(
                logGroupName=LOG_GROUP, logStreamNamePrefix=self.prefix, startTime=self.start_ms)
            for page in pages:
                events += [e for e in page.get("events", []) if e["eventId"] not in self.seen]
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in THROTTLED:  # what was read before it is read again next time (seen skips it)
                self.throttled += 1
                self.skip = min(2 ** (self.throttled - 1), MAX_SKIP)
                log.debug("CloudWatch logs throttled; next read in %d poll(s)", self.skip + 1)
            elif code != "ResourceNotFoundException":  # no log group yet: the job has not started
                log.debug("CloudWatch logs unavailable (%s); not following them", exc)
                self.failed = True
            return []
        self.throttled = 0
        events.sort(key=lambda e: (e["timestamp"], e.get("ingestionTime", 0)))
        for event in events:
            self.seen.add(event["eventId"])
            self.start_ms = max(self.start_ms, event["timestamp"])  # filter_log_events' start is inclusive
        return [event["message"] for event in events]


def worth_showing(line: str) -> bool:
    """Epoch and progress lines, and the entry point's own log lines."""
    text = line.strip()
    return bool(parse_epoch_line(text) or parse_progress_line(text) or _OUR_LOG_LINE.search(text))
