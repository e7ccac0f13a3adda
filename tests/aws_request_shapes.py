"""Every AWS request the suite sends, checked against botocore's service model: what AWS itself
refuses and moto lets through (botocore's own validation checks required members and types, not
these): string patterns and lengths, enum values, list lengths and number ranges.

`install()` adds one `before-parameter-build` handler to botocore's built-in handlers, so every
session made afterwards (boto3's, the SageMaker SDK's) checks each request before it is built; a
request that breaks a rule is recorded in `VIOLATIONS`, and conftest fails the test that sent it.
A pattern Python's `re` cannot read (Java's \\p{...} classes) is left unchecked.
"""

from __future__ import annotations

import functools
import re
from typing import Any

VIOLATIONS: list[str] = []


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


def problems(shape: Any, value: Any, where: str) -> list[str]:
    """What in `value` breaks the rules of `shape` (a botocore Shape), each as one line."""
    if value is None or shape is None:
        return []
    meta = shape.metadata
    out: list[str] = []
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            out += problems(member, value.get(name), f"{where}.{name}")
    elif kind == "list" and isinstance(value, list):
        out += _length(meta, len(value), where, "items")
        for i, item in enumerate(value):
            out += problems(shape.member, item, f"{where}[{i}]")
    elif kind == "map" and isinstance(value, dict):
        out += _length(meta, len(value), where, "entries")
        for k, v in value.items():
            out += problems(shape.key, k, f"{where} key {k!r}") + problems(shape.value, v, f"{where}[{k!r}]")
    elif kind == "string" and isinstance(value, str):
        out += _length(meta, len(value), where, "characters")
        if shape.enum and value not in shape.enum:
            out.append(f"{where}: {value!r} is not one of {shape.enum}")
        pattern = _compiled(meta["pattern"]) if "pattern" in meta else None
        if pattern is not None and not pattern.fullmatch(value):
            out.append(f"{where}: {value!r} does not match {meta['pattern']!r}")
    elif kind in ("integer", "long", "float", "double") and isinstance(value, int | float):
        if "min" in meta and value < meta["min"]:
            out.append(f"{where}: {value} is below the minimum {meta['min']}")
        if "max" in meta and value > meta["max"]:
            out.append(f"{where}: {value} is above the maximum {meta['max']}")
    return out


def _length(meta: dict[str, Any], n: int, where: str, unit: str) -> list[str]:
    if "min" in meta and n < meta["min"]:
        return [f"{where}: {n} {unit}, fewer than {meta['min']}"]
    if "max" in meta and n > meta["max"]:
        return [f"{where}: {n} {unit}, more than {meta['max']}"]
    return []


def check_request(params: dict[str, Any], model: Any, **_: Any) -> None:
    """before-parameter-build: record what breaks the operation's input rules."""
    for line in problems(model.input_shape, params, model.name):
        VIOLATIONS.append(f"{model.service_model.service_name} {line}")


def install() -> None:
    from botocore import handlers

    entry = ("before-parameter-build", check_request)
    if entry not in handlers.BUILTIN_HANDLERS:
        handlers.BUILTIN_HANDLERS.append(entry)
