"""The import rules of DESIGN.md, checked on the source: cli -> commands -> steps -> backends -> core,
backends/sagemaker never imports backends/local, core imports nothing of bincli, and only
backends/ asks which backend is configured."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "bincli"

# package -> packages of bincli it must never import
FORBIDDEN = {
    "core": ("bincli.",),  # relative imports only: it is shipped without bincli
    "artifacts": ("bincli.steps", "bincli.backends", "bincli.commands", "bincli.cli"),
    "data": ("bincli.steps", "bincli.backends", "bincli.commands", "bincli.cli"),
    "backends": ("bincli.steps", "bincli.commands", "bincli.cli"),
    "backends/sagemaker": ("bincli.backends.local",),
    "backends/local": ("bincli.backends.sagemaker",),
    "steps": ("bincli.commands", "bincli.cli"),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package):
    files = sorted((SRC / package).rglob("*.py"))
    assert files
    wrong = [f"{f.relative_to(SRC)}: {name}" for f in files for name in _imports(f)
             if name.startswith(FORBIDDEN[package]) or (package == "core" and name == "bincli")]
    assert not wrong


def test_only_the_backends_ask_which_backend_is_configured():
    asks = re.compile(r"\bcfg\.backend\b|\bconfig\.backend\b|\.backend\s*==")
    outside = [f"{f.relative_to(SRC)}:{n}" for f in sorted(SRC.rglob("*.py"))
               if "backends" not in f.relative_to(SRC).parts
               for n, line in enumerate(f.read_text().splitlines(), 1) if asks.search(line)]
    assert not outside
