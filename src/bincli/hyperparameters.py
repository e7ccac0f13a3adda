"""The train config section as the entry point's hyperparameters (`--batch-size 32 ...`).

Used by the train step, the local launcher, the local tuner and SageMaker training jobs alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bincli.config import TrainConfig
from bincli.core.contract import HYPERPARAMETERS, hyperparameter_name
from bincli.core.hyperparams import LAUNCH_KEYS
from bincli.errors import ConfigError


def hyperparameters_from(cfg: TrainConfig, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The entry point's hyperparameters ({"batch-size": 32, ...}) from the train config section,
    with `overrides` (e.g. tune's best, keyed by config or hyperparameter names) validated on top.
    Unset ones (None) are left out: a SageMaker job passes every hyperparameter as a string, and
    None would arrive as the word "null"."""
    values = cfg.model_dump()
    if overrides:
        for key, value in overrides.items():
            name = key.replace("-", "_")
            if name not in values or name in LAUNCH_KEYS:  # launch keys shape the launch, not the run
                raise ConfigError(f"tune result: {key!r} is not a train hyperparameter "
                                  f"(expected one of {', '.join(HYPERPARAMETERS)})")
            values[name] = value
        try:
            values = TrainConfig.model_validate(values).model_dump()
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"tune result: {'.'.join(map(str, first['loc']))}: {first['msg']}, "
                              f"got {first.get('input')!r}") from None
    return {hyperparameter_name(k): v for k, v in values.items()
            if hyperparameter_name(k) in HYPERPARAMETERS and v is not None}
