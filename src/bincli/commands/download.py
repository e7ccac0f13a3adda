"""`bincli download` (not built yet)."""

from bincli.commands.common import ConfigOpt, JsonOpt, WorkdirOpt
from bincli.errors import BincliError


def download(config: ConfigOpt = None, workdir: WorkdirOpt = None, json_out: JsonOpt = False) -> None:
    """Download ABID images and metadata (not built yet)."""
    raise BincliError("download is not built yet")
