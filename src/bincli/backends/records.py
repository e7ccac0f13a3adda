"""The deploy record in state, read the same way by both backends' teardown, predict and evaluate."""

from __future__ import annotations

from typing import Any

from bincli.errors import StateError
from bincli.state import State


def recorded_endpoint(state: State, name: str | None = None, backend: str | None = None) -> dict[str, Any] | None:
    """The endpoint deploy recorded, if any and, with `name`, if it has that name. With `backend`,
    a record made by the other backend is a StateError saying how to reach it."""
    record = state.outputs("deploy")
    if record is None or (name is not None and record.get("name") != name):
        return None
    made_by = record.get("backend", "local")  # records before the backend seam: local only
    if backend is not None and made_by != backend:
        raise StateError(f"endpoint '{record['name']}' was deployed by backend {made_by}, this config uses "
                         f"backend {backend}", hint=f"run the same command with --set backend={made_by}")
    return record


def nothing_to_remove(workdir: Any, name: str | None) -> dict[str, Any]:
    """teardown's result when there is no (such) endpoint: a second teardown is a no-op."""
    what = f"no endpoint '{name}'" if name else "no endpoint"
    return {"name": name, "removed": [], "message": f"nothing to remove: {what} recorded in {workdir}"}


def endpoint_to_call(state: State, endpoint: str | None, url: str | None, default: str) -> str:
    """The endpoint name predict calls: the one asked for, else the recorded one, else `default`
    when a URL was given (another workspace's endpoint)."""
    if endpoint:
        return endpoint
    record = state.outputs("deploy")
    if record is None and url is None:
        raise StateError(f"no endpoint: none is deployed in {state.workdir}",
                         hint="run 'bincli deploy' first, or pass --endpoint NAME")
    return record["name"] if record else default
