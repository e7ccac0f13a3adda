"""`bincli teardown`: delete what `bincli deploy` made, and nothing else."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load, renamed
from bincli.console import out
from bincli.errors import UsageError


def teardown(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", "-e", help="Only if the deployed endpoint has this "
                                                 "name.", show_default=False, metavar="NAME")] = None,
    name: Annotated[str | None, typer.Option("--name", hidden=True, help="Old name of --endpoint.")] = None,
    all_tagged: Annotated[bool, typer.Option("--all", help="Also delete every endpoint, endpoint config and "
                                             "model tagged with this workspace (backend sagemaker).")] = False,
) -> None:
    """Stop the endpoint 'bincli deploy' started and forget it. Safe to run twice.

    Only the process deploy started is stopped (same pid, start time and command line); with
    backend sagemaker, only the endpoint's autoscaling, endpoint, endpoint configs and models deploy
    created are deleted; --all also finds leftovers of this workspace by their bincli:workspace tag.

    Example: bincli teardown   |   bincli teardown --all
    """
    endpoint = renamed(endpoint, name, "--endpoint", "--name")
    cfg = load(config, workdir, sets).config
    from bincli.backends import get_backend

    if all_tagged and endpoint:
        raise UsageError("--all removes everything this workspace made: do not combine it with --endpoint")
    backend = get_backend(cfg)
    finish(backend.teardown_all() if all_tagged else backend.teardown(endpoint), json_out, _render)


def _render(result: dict[str, Any]) -> None:
    out.print(result["message"], markup=False, soft_wrap=True)
    for item in result["removed"]:
        out.print(f"  removed {item}", markup=False, soft_wrap=True)
