"""The `tune` step: a hyperparameter search over the train step's hyperparameters, on the backend."""

from __future__ import annotations

from typing import Any

from bincli.backends import get_backend
from bincli.config import Config


def run_tune(cfg: Config, fixed: set[str] | None = None, console=None, *, wait: bool = True,
             stop: bool = False) -> dict[str, Any]:
    """Search `tune.search_space` (less the `fixed` train keys given as flags); the best trial is
    recorded in state 'tune', read by `bincli train --from-tune`. `wait=False` returns once the
    search has started; `stop` stops the search recorded in the workdir (both: SageMaker only)."""
    from bincli.console import err

    backend = get_backend(cfg)
    backend.require("tune")
    if not wait:
        backend.require("--no-wait")
    if stop:
        backend.require("--stop")
    return backend.tune(set(fixed or ()), console or err, wait=wait, stop=stop)
