"""The PNG figures of `bincli inspect`, drawn with matplotlib from data-summary.json's numbers.

matplotlib (not core/plots.py's Pillow drawing) because these never run in a training container,
and box plots and stacked bars are one call each there. Imported only when a report is written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from bincli.core.contract import SPLITS
from bincli.core.fileio import atomic_write_bytes


def figures(summary: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write every figure into `folder`; returns {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    out["classes"] = _save(plt, _classes(plt, summary), folder / "classes.png")
    out["light"] = _save(plt, _light(plt, summary), folder / "brightness-contrast.png")
    out["sizes"] = _save(plt, _sizes(plt, summary), folder / "sizes.png")
    return out


def _save(plt, fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _classes(plt, summary: dict[str, Any]):
    """Images per count: overall, or stacked by split when a split is recorded."""
    hist = summary["classes"]["by_class"]
    labels = list(hist)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    splits = summary.get("splits")
    if splits:
        bottom = [0] * len(labels)
        for name in SPLITS:
            values = [splits[name]["histogram"].get(k, 0) for k in labels]
            ax.bar(labels, values, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        rest = [hist[k] - b for k, b in zip(labels, bottom, strict=True)]
        if any(rest):
            ax.bar(labels, rest, bottom=bottom, label="not in split", color="#bbbbbb")
        ax.legend()
    else:
        ax.bar(labels, [hist[k] for k in labels])
    ax.set_xlabel("items in bin (EXPECTED_QUANTITY; the tail in one class)")
    ax.set_ylabel("images")
    ax.set_title("class histogram")
    return fig


def _light(plt, summary: dict[str, Any]):
    """Mean luma and contrast per class: min / median / max as a range, mean as a dot."""
    per = summary["light"]["per_class"]
    labels = list(per)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, title in ((axes[0], "luma", "brightness (mean luma, 0-255)"),
                           (axes[1], "contrast", "contrast (std of luma)")):
        x = range(len(labels))
        lo = [per[k][key]["min"] for k in labels]
        hi = [per[k][key]["max"] for k in labels]
        med = [per[k][key]["median"] for k in labels]
        ax.vlines(x, lo, hi, color="#999999")
        ax.plot(x, med, "o", label="median")
        ax.plot(x, [per[k][key]["mean"] for k in labels], "x", label="mean")
        ax.set_xticks(list(x), labels)
        ax.set_xlabel("items in bin")
        ax.set_title(title)
    axes[0].legend()
    return fig


def _sizes(plt, summary: dict[str, Any]):
    """Width, height and file size ranges (the facts that decide the resize)."""
    sizes = summary["sizes"]
    fig, ax = plt.subplots(figsize=(7, 2.6))
    names = ["width px", "height px", "file kB"]
    for y, s in enumerate([sizes["width"], sizes["height"], sizes["kb"]]):
        ax.hlines(y, s["min"], s["max"], color="#999999", linewidth=6)
        ax.plot([s["median"]], [y], "o", color="#1f77b4")
        ax.annotate(f"{s['min']:g} .. {s['median']:g} .. {s['max']:g}", (s["max"], y), xytext=(6, -4),
                    textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xscale("log")
    ax.set_title("sizes: min .. median .. max")
    ax.margins(x=0.25, y=0.3)
    return fig
