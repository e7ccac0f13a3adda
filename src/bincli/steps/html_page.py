"""What bincli's HTML pages share (inspect's data page, a run's page): escaping, data: URIs, tables,
the CSS and the page shell. Each page is one self-contained file (CSS inline, figures as data: URIs),
so it opens from disk, can be mailed, and never makes a network request."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.alarm{background:#fde8e8;border:2px solid #c62828;padding:10px 14px;color:#8e0000;font-weight:600}
.ok{background:#e8f5e9;border:1px solid #81c784;padding:8px 12px}
.muted{color:#666}img.fig{max-width:100%}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def img_file(path: str | Path, alt: str) -> str:
    """A PNG file as an <img> with the picture inside it."""
    return f'<img class="fig" alt="{esc(alt)}" src="{data_uri(Path(path).read_bytes(), "image/png")}">'


def page(title: str, parts: Iterable[str], css: str = CSS) -> str:
    """The whole document around already-escaped body parts; `title` is escaped here."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{css}</style></head><body>{''.join(parts)}</body></html>\n")
