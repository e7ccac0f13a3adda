"""The `tune` step: a hyperparameter search over the train step's hyperparameters, on the backend."""

from __future__ import annotations

from typing import Any

from bincli.backends import get_backend
from bincli.config import Config


def run_tune(cfg: Config, fixed: set[str] | None = None, console=None) -> dict[str, Any]:
    """Search `tune.search_space` (less the `fixed` train keys given as flags); the best trial is
    recorded in state 'tune', read by `bincli train --from-tune`."""
    from bincli.console import err

    backend = get_backend(cfg)
    backend.require("tune")
    return backend.tune(set(fixed or ()), console or err)
