"""The flags of the billed commands (train, tune, deploy, pipeline): skip the preflight, do not ask."""

from __future__ import annotations

from typing import Annotated, Any

import typer

SkipPreflightOpt = Annotated[bool, typer.Option(
    "--skip-preflight", help="Create without checking first (the checks of 'bincli doctor': role, rights, quotas, "
                             "images); the same as sagemaker.preflight: false.")]
YesOpt = Annotated[bool, typer.Option(
    "--yes", "-y", help="Do not ask before a billed step (never asked without a terminal, as in CI).")]


def preflight_flags(skip: bool) -> dict[str, tuple[str, Any]]:
    """The config override --skip-preflight makes (none when it is not given)."""
    return {"sagemaker.preflight": ("--skip-preflight", False if skip else None)}
