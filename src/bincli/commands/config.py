"""`bincli config show|validate`: look at the resolved config and check config files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.config import STEPS, flatten, load_config
from bincli.console import info, out

app = typer.Typer(help="Show the resolved config or validate a config file.", no_args_is_help=True)


@app.command("show")
def show(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    step: Annotated[str | None, typer.Option("--step", help=f"Only this section: {', '.join(STEPS)}.")] = None,
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


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="The YAML config to check.", dir_okay=False)],
    json_out: JsonOpt = False,
) -> None:
    """Check a config file; exit 2 with one line per problem if it is invalid.

    Example: bincli config validate configs/local.yaml
    """
    load_config(file, env={})
    finish({"config_file": str(file), "valid": True}, json_out, lambda _: info(f"{file}: valid"))


def _show(value) -> str:
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    return "null" if value is None else str(value)
