"""Which of AWS's PyTorch images can run the core: the versions the installed SageMaker SDK has an
image for (its own table, sagemaker/core/image_uri_config/pytorch.json), whose Python is at least
the core's minimum (bincli's Requires-Python). The config checks the framework versions with it at
load, and deploy asks it which Python tag to request.

The table is read as a file, not through the SDK: importing the SDK takes seconds, and the config
is loaded by every command. Without the SDK (backend local) there is nothing to check.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

SDK_TABLE = ("core", "image_uri_config", "pytorch.json")  # under the sagemaker package


@cache
def core_min_python() -> tuple[int, int] | None:
    """The lowest Python the core runs on: the `>=X.Y` of bincli's Requires-Python (pyproject's
    requires-python), from the installed metadata or, in a source tree, pyproject.toml."""
    import importlib.metadata

    try:
        spec = importlib.metadata.metadata("bincli")["Requires-Python"] or ""
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        spec = pyproject.read_text() if pyproject.is_file() else ""
    found = re.search(r">=\s*(\d+)\.(\d+)", spec)
    return (int(found[1]), int(found[2])) if found else None


@cache
def _images(scope: str) -> tuple[dict[str, str], dict[str, str]] | None:
    """({full version: the newest Python tag of its image}, {alias: full version}) for the images
    of `scope` that run the core; None when the SageMaker SDK is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("sagemaker")  # finds the package without importing it
    paths = [Path(p, *SDK_TABLE) for p in (spec.submodule_search_locations or [])] if spec else []
    table = next((p for p in paths if p.is_file()), None)
    if table is None:
        return None
    section = json.loads(table.read_text())[scope]
    lowest = core_min_python() or (0, 0)
    versions: dict[str, str] = {}
    for version, image in section["versions"].items():
        tags = [(tuple(map(int, m.groups())), tag) for tag in image.get("py_versions", [])
                if (m := re.fullmatch(r"py(\d)(\d+)", tag))]  # py312; not the bare py3 of old images
        runs = [pair for pair in tags if pair[0] >= lowest]
        if runs:
            versions[version] = max(runs)[1]
    aliases = {alias: full for alias, full in section.get("version_aliases", {}).items() if full in versions}
    return versions, aliases


def image_versions(scope: str) -> dict[str, str] | None:
    """{PyTorch version or its alias: its image's Python tag} for the images of `scope` ("training"
    or "inference") that run the core, e.g. {"2.6": "py312", "2.6.0": "py312"}; None without the SDK."""
    images = _images(scope)
    if images is None:
        return None
    versions, aliases = images
    return {**versions, **{alias: versions[full] for alias, full in aliases.items()}}


def allowed_versions(scope: str) -> list[str]:
    """The versions to name in an error: each image once, by its alias (2.6 for 2.6.0) where it has one."""
    versions, aliases = _images(scope) or ({}, {})
    shown = [*aliases, *(v for v in versions if v not in aliases.values())]
    return sorted(shown, key=lambda v: tuple(int(p) for p in v.split(".")))


def py_version(version: str, scope: str) -> str:
    """The Python tag to ask image_uris.retrieve for with `version` (e.g. "py312"); ValueError with
    the versions there are, when the installed SDK has no image of it that runs the core."""
    versions = image_versions(scope)
    if versions is not None and version in versions:
        return versions[version]
    lowest = core_min_python()
    python = f" with Python >= {lowest[0]}.{lowest[1]} (the core's)" if lowest else ""
    have = ", ".join(allowed_versions(scope)) or "none"
    raise ValueError(f"must be a PyTorch version with a SageMaker {scope} image{python} in the installed "
                     f"SageMaker SDK: {have}; got {version!r}")
