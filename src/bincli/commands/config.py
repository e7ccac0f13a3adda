"""`bincli config show|validate`: look at the resolved config and check config files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bincli.commands.common import (
    ConfigOpt,
    JsonOpt,
    PlainHelpCommand,
    SetOpt,
    WorkdirOpt,
    config_path,
    finish,
    load,
    with_global_flags,
)
from bincli.config import STEPS, flatten, load_config, parse_set_options, resolve_config_path
from bincli.console import info, out
from bincli.errors import UsageError

app = typer.Typer(help="Show the resolved config or validate a config file.", no_args_is_help=True,
                  rich_markup_mode=None)


@app.command("show", cls=PlainHelpCommand)
@with_global_flags
def show(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    step: Annotated[str | None, typer.Option("--step", help="Only this section.", metavar=f"[{'|'.join(STEPS)}]",
                                             show_default=False)] = None,
) -> None:
    """Print the resolved config and which source set each key (default, file, env, flag).

    Example: bincli config show --step split
    """
    loaded = load(config, workdir, sets)
    if step is not None and step not in STEPS:
        raise typer.BadParameter(f"unknown step {step!r}; choose from {', '.join(STEPS)}", param_hint="--step")
    values = flatten(loaded.config)
    if step:
        values = {k: v for k, v in values.items() if k.startswith(step + ".")}
    rows = [{"key": k, "value": v, "source": loaded.source_of(k)} for k, v in values.items()]
    result = {"config_file": str(loaded.path) if loaded.path else None, "keys": rows}

    def render(_):
        from rich.table import Table

        table = Table(title=f"config ({loaded.path or 'built-in defaults'})")
        for col in ("key", "value", "source"):
            table.add_column(col)
        for row in rows:
            table.add_row(row["key"], _show(row["value"]), row["source"])
        out.print(table)

    finish(result, json_out, render)


@app.command("validate", cls=PlainHelpCommand)
@with_global_flags
def validate(
    file: Annotated[Path | None, typer.Argument(
        help="The YAML config to check (default -c, else $BINCLI_CONFIG, else configs/local.yaml).",
        dir_okay=False, show_default=False, metavar="FILE")] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
) -> None:
    """Check a config file (with any --set overrides); exit 2 with one line per problem if it is invalid.

    Environment overrides (BINCLI_<SECTION>__<KEY>) are not applied: this checks the file itself.

    Example: bincli config validate configs/local.yaml;  bincli config validate -c x.yaml --set train.lr=0.1
    """
    config = config_path(config)
    if file is not None and config is not None and file != config:
        raise UsageError(f"two config files given ({file} and -c {config}): give one")
    path, _ = resolve_config_path(file or config)
    if path is None:
        raise UsageError("no config file to validate: configs/local.yaml not found",
                         hint="bincli config validate FILE, or -c FILE")
    load_config(path, parse_set_options(sets), env={})
    finish({"config_file": str(path), "valid": True}, json_out, lambda _: info(f"{path}: valid"))


def _show(value) -> str:
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    return "null" if value is None else str(value)
