"""`bincli upload` (not built yet)."""

from bincli.commands.common import ConfigOpt, JsonOpt, WorkdirOpt
from bincli.errors import BincliError


def upload(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """upload (not built yet)."""
    raise BincliError("upload is not built yet")
