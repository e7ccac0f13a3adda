"""One row of `bincli doctor`, and of the preflight a billed step runs before it creates anything:
what was checked, what was found, and the exact fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bincli.errors import BincliError

OK, WARN, FAIL, NOT_CHECKED = "ok", "warn", "fail", "not checked"
STATUSES = (OK, WARN, FAIL, NOT_CHECKED)


@dataclass(frozen=True)
class Check:
    name: str
    status: str              # one of STATUSES
    detail: str
    fix: str | None = None
    cost: bool = False       # a cost line before a billed step (status ok; detail is the line)
    exit_code: int = 1       # 2 where the config itself is wrong, as for a config error

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def line(self) -> str:
        """The row as the one line a failed preflight prints: '<check>: <what was found>'."""
        return f"{self.name}: {self.detail}"


class PreflightFailed(BincliError):
    """A check a billed step needs failed: the step stops before it creates anything."""

    def __init__(self, failed: list[Check]):
        first = failed[0]
        more = f" (and {len(failed) - 1} more failed check(s): {', '.join(c.name for c in failed[1:])})" \
            if len(failed) > 1 else ""
        super().__init__(f"preflight: {first.line}{more}",
                         hint=f"{first.fix + '; ' if first.fix else ''}'bincli doctor' shows every check; "
                              "--skip-preflight skips them")
        self.failed = failed
        self.exit_code = first.exit_code


def raise_on_failure(checks: list[Check]) -> None:
    failed = [c for c in checks if c.status == FAIL]
    if failed:
        raise PreflightFailed(failed)
