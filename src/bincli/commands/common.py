"""Options every command shares, config loading from flags, and result output."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.config import FlagValue, LoadedConfig, load_config, parse_set_options
from bincli.console import emit_json, err

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config. Default: $BINCLI_CONFIG, else configs/local.yaml.",
                 show_default=False, dir_okay=False),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option("--workdir", "-w", help="Workspace folder. Default: the config's workdir (./bincli-work).",
                 show_default=False, file_okay=False),
]
InputOpt = Annotated[Path | None, typer.Option(
    "--input", "-i", help="Folder with images/ and metadata/. Default: what 'bincli download' wrote.",
    file_okay=False, show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
ModelOpt = Annotated[Path | None, typer.Option(
    "--model", "-m", help="model.tar.gz to use. Default: what 'bincli train' wrote.", dir_okay=False,
    show_default=False)]
EndpointOpt = Annotated[str | None, typer.Option(
    "--endpoint", "-e", help="Endpoint name. Default: the one 'bincli deploy' recorded.", show_default=False)]
EndpointUrlOpt = Annotated[str | None, typer.Option(
    "--endpoint-url", help="SageMaker runtime URL to call instead (e.g. another workspace's endpoint).",
    show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key, e.g. --set train.lr=0.01 (repeatable).",
                 show_default=False),
]


def load(config: Path | None, workdir: Path | None, sets: list[str] | None = None,
         flags: Mapping[str, tuple[str, Any]] | None = None) -> LoadedConfig:
    """Resolve the config for one command. `flags` maps dotted keys to (flag name, value)."""
    overrides: dict[str, Any] = parse_set_options(sets)
    for key, (flag, value) in (flags or {}).items():
        if value is not None:
            overrides[key] = FlagValue(flag, value)
    if workdir is not None:
        overrides["workdir"] = FlagValue("--workdir", workdir)
    loaded = load_config(config, overrides)
    _lock_workdir(loaded.config.workdir)
    return loaded


# The commands that write to the workdir: one of them at a time per workdir (predict, status
# and config only read it).
LOCKING_COMMANDS = frozenset({"download", "split", "upload", "tune", "train", "deploy", "evaluate", "teardown",
                              "loadtest"})


def _lock_workdir(workdir: Path) -> None:
    """Hold the workdir lock until the current command ends (or its process dies)."""
    from bincli.lock import acquire, current_command, stale_note

    command = current_command()
    if command not in LOCKING_COMMANDS:
        return
    note = stale_note(acquire(workdir, command))  # released by the CLI when the command ends
    if note:
        err.print(note, markup=False, soft_wrap=True)


def finish(result: Mapping[str, Any], json_out: bool,
           render: Callable[[Mapping[str, Any]], None] | None = None) -> None:
    """Show a step's result on stdout: JSON with --json, else the human rendering (rich, console.out)."""
    if json_out:
        emit_json(result)
    elif render is not None:
        render(result)
