"""`bincli split` (being built)."""

from bincli.commands.common import ConfigOpt, JsonOpt, WorkdirOpt
from bincli.errors import BincliError


def split(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """Split (being built)."""
    raise BincliError("split is not built yet")
