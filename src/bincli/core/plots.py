"""Report figures drawn with Pillow: the confusion matrix, the learning curves, the reliability
diagram (accuracy against confidence) and the accuracy-vs-coverage curve.

Pillow rather than matplotlib because this runs inside the SageMaker training container, where
the core may import only torch, torchvision, Pillow, numpy and the stdlib. `bincli.steps.report` uses
the same functions, so a figure looks the same whether the job or the CLI drew it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .contract import CONFUSION_PNG, COVERAGE_PNG, CURVES_PNG, RELIABILITY_PNG
from .fileio import atomic_write_bytes

__all__ = ["CONFUSION_PNG", "COVERAGE_PNG", "CURVES_PNG", "RELIABILITY_PNG", "confusion_matrix_image",
           "coverage_image", "learning_curves_image", "reliability_image", "write_confusion_png",
           "write_coverage_png", "write_curves_png", "write_reliability_png"]

_BLUE = np.array([31, 119, 180])
_ORANGE = (255, 127, 14)
_GREY = (200, 200, 200)
_DARK = (40, 40, 40)
_GREEN = (44, 160, 44)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, fill=_DARK,
          anchor: str = "mm") -> None:
    draw.text(xy, text, font=font, fill=fill, anchor=anchor)


def confusion_matrix_image(cm: Sequence[Sequence[int]], labels: Sequence[str],
                           title: str = "confusion matrix") -> Image.Image:
    """Rows: true count, columns: predicted count; cells shaded by the share of their row."""
    cm_arr = np.asarray(cm, dtype=np.int64)
    k = len(labels)
    cell = 64 if k <= 8 else max(24, 512 // k)
    left, top, pad = 90, 70, 30
    f_title, f_cell, f_axis = _font(18), _font(max(10, cell // 4)), _font(14)
    caption = "predicted count (columns)  /  true count (rows)"
    # as wide as the title and the caption too ("train run: confusion matrix (test split)" over 2 classes)
    size = (max(left + k * cell + pad, int(f_title.getlength(title)) + 40, int(f_axis.getlength(caption)) + 20),
            top + k * cell + 60)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    _text(draw, (size[0] / 2, 22), title, f_title)
    rows = cm_arr.sum(axis=1, keepdims=True)
    share = np.divide(cm_arr, rows, out=np.zeros(cm_arr.shape, dtype=float), where=rows > 0)
    for i in range(k):
        for j in range(k):
            x0, y0 = left + j * cell, top + i * cell
            colour = tuple(int(255 - (255 - c) * share[i, j]) for c in _BLUE)
            draw.rectangle((x0, y0, x0 + cell, y0 + cell), fill=colour, outline=_GREY)
            ink = "white" if share[i, j] > 0.5 else _DARK
            _text(draw, (x0 + cell / 2, y0 + cell / 2 - (cell // 8 if cell >= 48 else 0)), str(cm_arr[i, j]),
                  f_cell, fill=ink)
            if cell >= 48 and rows[i, 0]:
                _text(draw, (x0 + cell / 2, y0 + cell * 0.72), f"{share[i, j]:.0%}", _font(10), fill=ink)
        _text(draw, (left - 12, top + i * cell + cell / 2), labels[i], f_axis, anchor="rm")
        _text(draw, (left + i * cell + cell / 2, top - 12), labels[i], f_axis, anchor="ms")
    half = f_axis.getlength(caption) / 2 + 6  # centred under the cells, but inside the image
    _text(draw, (min(max(left + k * cell / 2, half), size[0] - half), top + k * cell + 28), caption, f_axis)
    return img


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [round(start + i * step, 10) for i in range(int((hi - start) / step + 1e-9) + 1)]


def _vertical_text(img: Image.Image, xy: tuple[float, float], text: str, font, fill=_DARK) -> None:
    """`text` turned 90 degrees (read bottom to top) and centred on xy: a y-axis label."""
    left, top, right, bottom = font.getbbox(text)
    label = Image.new("RGBA", (right - left + 2, bottom - top + 2), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((1 - left, 1 - top), text, font=font, fill=fill)
    label = label.rotate(90, expand=True)
    img.paste(label, (round(xy[0] - label.width / 2), round(xy[1] - label.height / 2)), label)


def _panel(img: Image.Image, box: tuple[int, int, int, int], epochs: list[int],
           series: dict[str, list[float | None]], title: str, ylabel: str, best_epoch: int | None = None) -> None:
    x0, y0, x1, y1 = box
    draw = ImageDraw.Draw(img)
    f_axis, f_title = _font(12), _font(15)
    _text(draw, ((x0 + x1) / 2, y0 - 18), title, f_title)
    _vertical_text(img, (x0 - 52, (y0 + y1) / 2), ylabel, _font(13))
    values = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    draw.rectangle(box, outline=_DARK)
    if not values or not epochs:
        _text(draw, ((x0 + x1) / 2, (y0 + y1) / 2), "no data", f_axis)
        return
    ticks = _nice_ticks(min(values), max(values))
    lo, hi = min([*values, *ticks]), max([*values, *ticks])
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    e_lo, e_hi = min(epochs), max(epochs)

    def px(e: float, v: float) -> tuple[float, float]:
        fx = 0.5 if e_hi == e_lo else (e - e_lo) / (e_hi - e_lo)
        return x0 + 10 + fx * (x1 - x0 - 20), y1 - 8 - (v - lo) / (hi - lo) * (y1 - y0 - 16)

    for t in ticks:
        _, y = px(e_lo, t)
        draw.line((x0, y, x1, y), fill=(235, 235, 235))
        _text(draw, (x0 - 6, y), f"{t:g}", f_axis, anchor="rm")
    step = max(1, math.ceil(len(epochs) / 10))
    for e in epochs[::step]:
        x, _ = px(e, lo)
        _text(draw, (x, y1 + 6), str(e), f_axis, anchor="mt")
    _text(draw, ((x0 + x1) / 2, y1 + 26), "epoch", f_axis, anchor="mt")
    marked = best_epoch is not None and e_lo <= best_epoch <= e_hi
    if marked:  # under the curves: the epoch whose weights were kept (the lowest valid loss)
        bx, _ = px(best_epoch, lo)
        for y in range(y0 + 2, y1, 8):
            draw.line((bx, y, bx, min(y + 4, y1)), fill=_GREEN, width=2)
    colours = (tuple(int(c) for c in _BLUE), _ORANGE)
    for vs, colour in zip(series.values(), colours, strict=False):
        pts = [px(e, v) for e, v in zip(epochs, vs, strict=True) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    # The legend in a row under the axis, where no curve can hide it (or it a curve).
    entries = [(name, colour, False) for name, colour in zip(series, colours, strict=False)]
    if marked:
        entries.append((f"best epoch ({best_epoch})", _GREEN, True))
    widths = [25 + draw.textlength(name, font=f_axis) for name, _, _ in entries]
    lx, ly = (x0 + x1 - sum(widths) - 16 * (len(entries) - 1)) / 2, y1 + 52
    for (name, colour, dashed), width in zip(entries, widths, strict=True):
        if dashed:
            draw.line((lx + 10, ly - 6, lx + 10, ly + 6), fill=colour, width=2)
        else:
            draw.line((lx, ly, lx + 20, ly), fill=colour, width=3)
        _text(draw, (lx + 25, ly), name, f_axis, anchor="lm")
        lx += width + 16


def learning_curves_image(history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> Image.Image:
    """Loss and accuracy per epoch, train vs valid, from the per-epoch metric rows; `best_epoch`
    (the epoch whose weights training kept) is marked with a dashed vertical line."""
    epochs = [int(row["epoch"]) for row in history]
    img = Image.new("RGB", (900, 400), "white")
    for box, kind in (((80, 50, 430, 320), "loss"), ((540, 50, 890, 320), "acc")):
        series = {f"{split}_{kind}": [row.get(f"{split}_{kind}") for row in history] for split in ("train", "valid")}
        _panel(img, box, epochs, series, "loss (cross-entropy)" if kind == "loss" else "accuracy",
               "loss" if kind == "loss" else "accuracy", best_epoch)
    return img


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_confusion_png(path: str | Path, metrics: dict[str, Any], title: str = "confusion matrix") -> Path:
    return atomic_write_bytes(path, png_bytes(confusion_matrix_image(metrics["confusion_matrix"],
                                                                     metrics["labels"], title)))


def write_curves_png(path: str | Path, history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> Path:
    return atomic_write_bytes(path, png_bytes(learning_curves_image(history, best_epoch)))


def _unit_axes(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], xlabel: str, ylabel: str,
               x_lo: float = 0.0) -> Any:
    """A [x_lo, 1] x [0, 1] frame with a grid every 0.2; returns px(x, y)."""
    x0, y0, x1, y1 = box
    f = _font(12)
    draw.rectangle(box, outline=_DARK)

    def px(x: float, y: float) -> tuple[float, float]:
        return x0 + (x - x_lo) / (1.0 - x_lo) * (x1 - x0), y1 - y * (y1 - y0)

    for i in range(6):
        v = i / 5
        _, y = px(x_lo, v)
        draw.line((x0, y, x1, y), fill=(235, 235, 235))
        _text(draw, (x0 - 6, y), f"{v:.1f}", f, anchor="rm")
        xv = x_lo + (1.0 - x_lo) * v
        x, _ = px(xv, 0)
        _text(draw, (x, y1 + 6), f"{xv:.1f}", f, anchor="mt")
    _text(draw, ((x0 + x1) / 2, y1 + 26), xlabel, f, anchor="mt")
    _text(draw, (x0 - 40, y0 - 14), ylabel, f, anchor="lm")
    return px


def reliability_image(metrics: dict[str, Any], title: str = "reliability") -> Image.Image:
    """Accuracy per confidence bin (bars) against the diagonal a calibrated model follows."""
    img = Image.new("RGB", (560, 470), "white")
    draw = ImageDraw.Draw(img)
    _text(draw, (280, 20), title, _font(16))
    box = (70, 60, 530, 400)
    px = _unit_axes(draw, box, "confidence (top probability)", "accuracy")
    blue = tuple(int(c) for c in _BLUE)
    for row in metrics.get("reliability") or []:
        if not row["n"]:
            continue
        (xa, ya), (xb, yb) = px(row["low"], row["accuracy"]), px(row["high"], 0)
        draw.rectangle((xa + 2, ya, xb - 2, yb), fill=blue, outline=_DARK)
        _text(draw, ((xa + xb) / 2, ya - 8), str(row["n"]), _font(10))
    draw.line((*px(0, 0), *px(1, 1)), fill=_ORANGE, width=2)
    ece = metrics.get("ece")
    if ece is not None and math.isfinite(ece):
        _text(draw, (box[0] + 10, box[1] + 14), f"ECE {ece:.3f}  (bars: accuracy; line: perfect calibration)",
              _font(12), anchor="lm")
    return img


def coverage_image(metrics: dict[str, Any], baseline: dict[str, Any] | None = None,
                   title: str = "accuracy vs coverage") -> Image.Image:
    """Accuracy of the k% most confident photos against k (the baseline's flat line beside it)."""
    img = Image.new("RGB", (560, 470), "white")
    draw = ImageDraw.Draw(img)
    _text(draw, (280, 20), title, _font(16))
    box = (70, 60, 530, 400)
    px = _unit_axes(draw, box, "coverage (share of photos answered, most confident first)", "accuracy", x_lo=0.0)
    series = [("model", metrics.get("coverage") or [], tuple(int(c) for c in _BLUE))]
    if baseline and baseline.get("coverage"):
        series.append(("baseline", baseline["coverage"], _ORANGE))
    for i, (name, rows, colour) in enumerate(series):
        pts = [px(r["coverage"], r["accuracy"]) for r in rows if r["accuracy"] is not None
               and math.isfinite(r["accuracy"])]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
        ly = box[1] + 14 + 16 * i
        draw.line((box[2] - 120, ly, box[2] - 100, ly), fill=colour, width=3)
        _text(draw, (box[2] - 95, ly), name, _font(12), anchor="lm")
    return img


def write_reliability_png(path: str | Path, metrics: dict[str, Any], title: str = "reliability") -> Path:
    return atomic_write_bytes(path, png_bytes(reliability_image(metrics, title)))


def write_coverage_png(path: str | Path, metrics: dict[str, Any], baseline: dict[str, Any] | None = None,
                       title: str = "accuracy vs coverage") -> Path:
    return atomic_write_bytes(path, png_bytes(coverage_image(metrics, baseline, title)))
