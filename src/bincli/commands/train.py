"""`bincli train` (not built yet)."""

from bincli.commands.common import ConfigOpt, JsonOpt, WorkdirOpt
from bincli.errors import BincliError


def train(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """train (not built yet)."""
    raise BincliError("train is not built yet")
