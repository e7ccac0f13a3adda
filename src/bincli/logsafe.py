"""Logging setup for the CLI, and a filter that keeps AWS credentials out of every log line.

`-v` shows bincli's own debug lines; the AWS libraries stay at INFO at most, because at DEBUG
botocore prints every request with its signed headers and session token. The redacting filter
sits on the handler, so it sees every record that reaches stderr, whichever logger made it.
"""

from __future__ import annotations

import logging
import os
import re
import sys

REDACTED = "***"

# Loggers that print requests, headers or credentials at DEBUG.
AWS_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")
# Environment variables whose values are secrets wherever they appear.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")
# Shorter values are not redacted: replacing every "x" in a log would make it unreadable, and
# real keys are 16+ characters.
_MIN_SECRET_LEN = 8

_PATTERNS = (
    # 'X-Amz-Security-Token': b'...'  /  x-amz-security-token:...  /  ?X-Amz-Security-Token=...&
    (re.compile(r"""(x-amz-security-token['"]?\s*[:=]\s*b?['"]?)[^'"&\s,}]+""", re.IGNORECASE), r"\1" + REDACTED),
    (re.compile(r"""(x-amz-signature['"]?\s*[:=]\s*b?['"]?)[^'"&\s,}]+""", re.IGNORECASE), r"\1" + REDACTED),
    # 'Authorization': b'AWS4-HMAC-SHA256 Credential=..., Signature=...' (the value has spaces)
    (re.compile(r"""(authorization['"]?\s*:\s*b?)(['"]).*?\2""", re.IGNORECASE), r"\1\2" + REDACTED + r"\2"),
    # Authorization: AWS4-HMAC-SHA256 ... (unquoted, to the end of the line)
    (re.compile(r"""(authorization\s*:\s*)(?!b?['"])[^\r\n]+""", re.IGNORECASE), r"\1" + REDACTED),
    # Access key ids (long-term AKIA, temporary ASIA).
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), REDACTED),
)


def redact(text: str) -> str:
    """`text` with AWS credentials, signatures and the environment's secret values replaced."""
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= _MIN_SECRET_LEN:
            text = text.replace(value, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Formats each record's message (msg % args) and traceback, then redacts them in place."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log what there is rather than lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (test runners swap it per invocation)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(verbose: bool = False, quiet: bool = False) -> logging.Handler:
    """One redacting stderr handler on the root logger; levels for bincli and the libraries."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_bincli", False)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler._bincli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    # Third-party libraries log at WARNING (INFO with -v); bincli's own at INFO (DEBUG with -v).
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("bincli").setLevel(
        logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO))
    for name in AWS_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    # The SageMaker SDK sets sagemaker.config to INFO unless the application chose a level
    # ("applied value from config key ..." on every call): choose one.
    for name in ("sagemaker", "sagemaker.config"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    return handler
