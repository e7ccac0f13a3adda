"""bincli's own errors. The CLI turns each into one line and an exit code (see cli.py)."""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2


class BincliError(Exception):
    """An expected failure with a message a user can act on."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(BincliError):
    """The config file, an env override or a flag is invalid. May carry several lines."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, lines: list[str] | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.lines = lines or []


class UsageError(BincliError):
    """Flags that do not fit together, or an input path that does not exist."""

    exit_code = EXIT_USAGE


class StateError(BincliError):
    """A step needs the output of an earlier step that has not run."""


class DataError(BincliError):
    """Input data is missing, unreadable or inconsistent."""


class Interrupted(BincliError):
    """Ctrl-C (or SIGTERM) stopped a step after saving its progress; the same command resumes."""

    exit_code = 130
