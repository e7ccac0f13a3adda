"""bincli's command line: a table of contents.

Each command lives in bincli/commands/<name>.py, takes typed options, loads the config, calls
one plain step function and renders its result. Nothing heavy (torch, boto3, sagemaker, optuna)
is imported here or in the command modules at import time, so `bincli --help` starts fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from bincli import __version__, lock
from bincli.commands import common, deploy, download, evaluate, predict, split, status, teardown, train, tune, upload
from bincli.commands import config as config_cmd
from bincli.commands import doctor as doctor_cmd
from bincli.commands import inspect as inspect_cmd
from bincli.commands import loadtest as loadtest_cmd
from bincli.commands import pipeline as pipeline_cmd
from bincli.commands.common import ConfigOpt, JsonOpt, PlainHelpCommand, QuietOpt, VerboseOpt, WorkdirOpt
from bincli.console import err
from bincli.errors import BincliError, ConfigError
from bincli.logsafe import redact


class _ErrorFunnel(TyperGroup):
    """One place that turns bincli's own errors into one line and an exit code.

    Unknown errors propagate with their traceback (bugs should be loud); BINCLI_DEBUG=1 shows
    the traceback of bincli's own errors too.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BincliError as exc:
            if os.environ.get("BINCLI_DEBUG"):
                raise
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None


def report_error(exc: BincliError) -> None:
    # Plain write, no rich markup: messages hold paths and values with brackets.
    # Redacted: an AWS error message may echo a key id or a signed URL.
    sys.stderr.write(redact(f"error: {exc.message}\n"))
    if isinstance(exc, ConfigError):
        for line in exc.lines if len(exc.lines) > 1 else []:
            sys.stderr.write(redact(f"  - {line}\n"))
    if exc.hint:
        sys.stderr.write(redact(f"hint: {exc.hint}\n"))


app = typer.Typer(
    cls=_ErrorFunnel,
    name="bincli",
    help=(
        "Count items in Amazon Bin Image Dataset photos: download, split, upload, tune, train, "
        "deploy, predict, teardown. Runs on a laptop (backend: local) or on SageMaker.\n\n"
        "Example: bincli split --ratios 0.8 0.1 0.1 && bincli train --epochs 3 && bincli deploy"
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print credentials held in local variables
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bincli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    # Each of these may also follow the command name; a command's own -c/-w win over these.
    common.begin_group(common.GroupOptions(config=config, workdir=workdir, json=json_out, quiet=quiet,
                                           verbose=verbose))
    ctx.call_on_close(common.end_group)
    # The command's name, for its workdir lock (commands/common.load); released when it ends.
    lock.begin_command(ctx.invoked_subcommand)
    ctx.call_on_close(lock.end_command)


def _command(name: str, function) -> None:
    """A command that also takes -q/-v after its name, with plain help (commands/common.py)."""
    app.command(name, cls=PlainHelpCommand)(common.with_global_flags(function))


# The pipeline, in the order it runs.
_command("download", download.download)
_command("inspect", inspect_cmd.inspect)
_command("split", split.split)
_command("upload", upload.upload)
_command("tune", tune.tune)
_command("train", train.train)
_command("deploy", deploy.deploy)
_command("predict", predict.predict)
_command("evaluate", evaluate.evaluate)
_command("loadtest", loadtest_cmd.loadtest)
_command("teardown", teardown.teardown)
_command("pipeline", pipeline_cmd.pipeline)
# Workspace and config.
_command("status", status.status)
_command("doctor", doctor_cmd.doctor)
app.add_typer(config_cmd.app, name="config")


def main() -> None:
    code: object = 0
    try:
        app(prog_name="bincli")
    except SystemExit as exc:
        code = exc.code
        raise
    finally:
        from bincli.steps.bounded import exit_if_abandoned

        exit_if_abandoned(code)


if __name__ == "__main__":
    main()
