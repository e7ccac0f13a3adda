"""`bincli deploy|predict|evaluate|teardown` (not built yet)."""

from bincli.commands.common import ConfigOpt, JsonOpt, WorkdirOpt
from bincli.errors import BincliError


def deploy(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """Deploy (not built yet)."""
    raise BincliError("deploy is not built yet")


def predict(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """Predict (not built yet)."""
    raise BincliError("predict is not built yet")


def evaluate(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """Evaluate (not built yet)."""
    raise BincliError("evaluate is not built yet")


def teardown(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """Teardown (not built yet)."""
    raise BincliError("teardown is not built yet")
