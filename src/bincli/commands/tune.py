"""`bincli tune` (not built yet)."""

from bincli.commands.common import ConfigOpt, JsonOpt, WorkdirOpt
from bincli.errors import BincliError


def tune(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """tune (not built yet)."""
    raise BincliError("tune is not built yet")
