"""Options every command shares, config loading from flags, and result output."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand

from bincli.config import FlagValue, LoadedConfig, load_config, parse_set_options
from bincli.console import emit_json, err, set_quiet
from bincli.errors import UsageError

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default $BINCLI_CONFIG, else configs/local.yaml).",
                 show_default=False, dir_okay=False, metavar="FILE"),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option("--workdir", "-w", help="Workspace folder (default the config's workdir, ./bincli-work).",
                 show_default=False, file_okay=False, metavar="DIR"),
]
InputOpt = Annotated[Path | None, typer.Option(
    "--input", "-i", help="Folder with images/ and metadata/ (default what 'bincli download' wrote).",
    file_okay=False, show_default=False, metavar="DIR")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
ModelOpt = Annotated[Path | None, typer.Option(
    "--model", "-m", help="model.tar.gz to use (default what 'bincli train' wrote).", dir_okay=False,
    show_default=False, metavar="FILE")]
EndpointOpt = Annotated[str | None, typer.Option(
    "--endpoint", "-e", help="Endpoint name (default the one 'bincli deploy' recorded).", show_default=False,
    metavar="NAME")]
EndpointUrlOpt = Annotated[str | None, typer.Option(
    "--endpoint-url", help="SageMaker runtime URL to call instead (e.g. another workspace's endpoint).",
    show_default=False, metavar="URL")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override any config key, e.g. --set train.lr=0.01 (repeatable).",
                 show_default=False, metavar="KEY=VALUE"),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and results: no logs, progress or "
                                        "hints on stderr.")]
VerboseOpt = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Debug logging (AWS libraries stay at INFO; credentials are redacted).")]


# ---------------------------------------------------------------- options before or after the command
# `bincli -c x.yaml -w wd -q status` and `bincli status -c x.yaml -w wd -q` mean the same (as in the
# AWS CLI). The group callback (cli.py) records what was given before the command name here; load()
# and finish() fall back on it where the command's own flag is not given (the command's own wins),
# and with_global_flags gives every command -q/-v. Chosen over rewriting argv: click still parses
# every token (a value that happens to read "-q" stays a value) and each --help lists what it takes.
@dataclass(frozen=True)
class GroupOptions:
    config: Path | None = None
    workdir: Path | None = None
    json: bool = False
    quiet: bool = False
    verbose: bool = False


_group = GroupOptions()


def begin_group(options: GroupOptions) -> None:
    """The options given before the command name, for this invocation (cli.py's callback)."""
    global _group
    _group = options
    _apply_verbosity(options.quiet, options.verbose)


def end_group() -> None:
    """Forget them when the command ends (one process may run several: tests, the REPL)."""
    global _group
    _group = GroupOptions()


def _apply_verbosity(quiet: bool, verbose: bool) -> None:
    from bincli.logsafe import setup_logging

    set_quiet(quiet)
    setup_logging(verbose=verbose, quiet=quiet)


def config_path(config: Path | None) -> Path | None:
    """The command's -c, else the one given before the command name."""
    return config if config is not None else _group.config


def wants_json(json_out: bool) -> bool:
    """The command's --json, or one given before the command name."""
    return json_out or _group.json


F = TypeVar("F", bound=Callable[..., Any])


def with_global_flags(command: F) -> F:
    """Give a command -q/--quiet and -v/--verbose (also accepted before its name); Typer reads the
    signature built here. The command itself never sees them."""
    own = inspect.signature(command, eval_str=True)
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=annotation)
             for name, annotation in (("quiet", QuietOpt), ("verbose", VerboseOpt))]
    if any(p.name in own.parameters for p in added):
        raise TypeError(f"{command.__name__} already has a quiet or verbose parameter")

    @functools.wraps(command)
    def wrapper(*args: Any, quiet: bool = False, verbose: bool = False, **kwargs: Any) -> Any:
        if quiet or verbose:
            _apply_verbosity(quiet or _group.quiet, verbose or _group.verbose)
        return command(*args, **kwargs)

    return with_signature(wrapper, own, [*own.parameters.values(), *added])  # type: ignore[return-value]


def with_signature(wrapper: Any, own: inspect.Signature, params: list[inspect.Parameter]) -> Any:
    """`wrapper` showing Typer `params` (the command's own and those a decorator adds) in place of
    the signature functools.wraps copied from the command."""
    wrapper.__signature__ = own.replace(parameters=params)
    wrapper.__annotations__ = {**{p.name: p.annotation for p in params}, "return": own.return_annotation}
    return wrapper


T = TypeVar("T")


def renamed(new: T | None, old: T | None, new_flag: str, old_flag: str) -> T | None:
    """A renamed flag's value: the new spelling's, or the old hidden alias's; both must agree."""
    if new is not None and old is not None and new != old:
        raise UsageError(f"{new_flag} {new} and {old_flag} {old} (its old name) disagree; give {new_flag} only")
    return new if new is not None else old


def load(config: Path | None, workdir: Path | None, sets: list[str] | None = None,
         flags: Mapping[str, tuple[str, Any]] | None = None) -> LoadedConfig:
    """Resolve the config for one command. `flags` maps dotted keys to (flag name, value)."""
    overrides: dict[str, Any] = parse_set_options(sets)
    for key, (flag, value) in (flags or {}).items():
        if value is not None:
            overrides[key] = FlagValue(flag, value)
    workdir = workdir if workdir is not None else _group.workdir
    if workdir is not None:
        overrides["workdir"] = FlagValue("--workdir", workdir)
    loaded = load_config(config_path(config), overrides)
    _lock_workdir(loaded.config.workdir)
    return loaded


# The commands that write to the workdir: one of them at a time per workdir (predict, status
# and config only read it).
LOCKING_COMMANDS = frozenset({"download", "split", "upload", "tune", "train", "deploy", "evaluate", "teardown",
                              "loadtest", "pipeline"})


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
    if wants_json(json_out):
        emit_json(result)
    elif render is not None:
        render(result)


# ---------------------------------------------------------------- help
class PlainHelpCommand(TyperCommand):
    """Help as plain text (no boxes: it pastes into an issue and reads on any terminal), with options
    under their rich_help_panel as plain sections, plain metavars (FLOAT FLOAT FLOAT, KEY=VALUE,
    [a|b]) and every default written one way: '(default X)' at the end of its help line."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        # `[OPTIONS] IMAGE...` and `[FILE]`, as click and most tools write them (not Typer's `{IMAGE}...`).
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument_name(param) if param.required else f"[{_argument_name(param)}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        sections: dict[str, list[tuple[str, str]]] = {"Options": []}
        for param in self.get_params(ctx):
            record = _help_record(param, ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(record)
            else:
                sections.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        # One help column for every section: each section's widest name (up to click's 30) is padded
        # to the widest of all, so the sections line up.
        width = min(max((len(name) for rows in [arguments, *sections.values()] for name, _ in rows), default=0), 30)
        for title, rows in [("Arguments", arguments), *sections.items()]:
            if rows:
                with formatter.section(title):
                    formatter.write_dl([(name.ljust(width), text) for name, text in rows])


_PLAIN_TYPES = {"int": "INT", "float": "FLOAT", "str": "TEXT", "file": "FILE", "dir": "DIR", "path": "PATH",
                "bool": "BOOL"}


def _plain_metavar(param: Any, ctx: Any) -> str | None:
    """<int> -> INT, <float,float,float> -> FLOAT FLOAT FLOAT, <list[str]> -> TEXT, <a|b> -> [a|b]."""
    if getattr(param, "is_flag", False) or not hasattr(param, "display_type"):
        return None
    label = param.display_type(ctx).strip("<>").removesuffix(" range")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    if "|" in label:
        return f"[{label}]"
    return " ".join(_PLAIN_TYPES.get(part, part.upper()) for part in label.split(","))


def _default_text(param: Any) -> str | None:
    """The default as the help line should say it, where Typer would have shown one."""
    from bincli.core.hyperparams import show_value

    shown = getattr(param, "show_default", None)
    if param.param_type_name != "option" or not shown:
        return None
    if isinstance(shown, str):
        return shown
    default = param.default
    if default is None or callable(default):
        return None
    if isinstance(default, bool):
        if not getattr(param, "secondary_opts", None):
            return None  # a plain flag is off unless given
        return (param.opts if default else param.secondary_opts)[0].lstrip("-")
    if isinstance(default, list | tuple):
        return " ".join(show_value(v) for v in default) or None
    return show_value(default)


def _argument_name(param: Any) -> str:
    name = param.metavar or param.name.upper()
    return name if param.nargs == 1 or name.endswith("...") else f"{name}..."


def _help_record(param: Any, ctx: Any) -> tuple[str, str] | None:
    if param.param_type_name == "argument":
        return (_argument_name(param), param.help or "") if not param.hidden else None
    default = _default_text(param)
    metavar, show_default = param.metavar, getattr(param, "show_default", None)
    try:
        if metavar is None:
            param.metavar = _plain_metavar(param, ctx)
        if show_default is not None:
            param.show_default = False
        record = param.get_help_record(ctx)
    finally:
        param.metavar = metavar
        if show_default is not None:
            param.show_default = show_default
    if record is None:
        return None
    name, text = record
    if default and "default" not in text.lower():
        # Before Typer's range ("  [x>=1]"), which stays last.
        text, bounds = re.fullmatch(r"(.*?)((?:\s+\[[^\]]*\])?)", text, re.DOTALL).groups()
        text = (f"{text.rstrip('.')} (default {default})." if text else f"(default {default})") + bounds
    return name, text
