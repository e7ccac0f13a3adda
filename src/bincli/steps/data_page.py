"""The HTML page of `bincli inspect`: one self-contained file (CSS inline, figures and thumbnails as
data: URIs), so it opens from disk, can be mailed, and never makes a network request."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bincli.steps.html_page import CSS as BASE_CSS
from bincli.steps.html_page import data_uri, esc, img_file, page, table

THUMB_PX = 128  # thumbnail width
MAX_GROUPS_SHOWN = 40  # near-duplicate groups with pictures (all are listed in data-summary.json)
MAX_GROUP_THUMBS = 8  # pictures per group

CSS = BASE_CSS + """
.sheet{display:flex;flex-wrap:wrap;gap:6px}.sheet figure{margin:0;width:THUMBpx;font-size:11px;text-align:center}
.sheet img{width:THUMBpx;display:block}.group{border:1px solid #ccc;padding:6px;margin:6px 0}
""".replace("THUMB", str(THUMB_PX))


def thumbnail_uri(path: Path) -> str | None:
    """A small JPEG of one photo as a data URI, or None if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (THUMB_PX, THUMB_PX))
            im = im.convert("RGB")
            im.thumbnail((THUMB_PX, THUMB_PX * 2))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except Exception:  # a photo that vanished or broke since it was surveyed: the page still renders
        return None
    return data_uri(buf.getvalue(), "image/jpeg")


def sheet(ids: Sequence[str], images: dict[str, Path], caption) -> str:
    cells = []
    for id_ in ids:
        uri = thumbnail_uri(images[id_])
        img = f'<img src="{uri}" alt="{esc(id_)}">' if uri else '<span class="muted">unreadable</span>'
        cells.append(f"<figure>{img}<figcaption>{esc(caption(id_))}</figcaption></figure>")
    return f'<div class="sheet">{"".join(cells)}</div>'


def _stats_row(name: str, s: dict[str, Any]) -> list[Any]:
    return [name, *(s.get(k, "") for k in ("min", "median", "mean", "max"))]


def _spread(ids: list[str], n: int) -> list[str]:
    """n ids evenly spread over the sorted list (not just the first n: ids run in time order)."""
    if len(ids) <= n:
        return ids
    return [ids[round(k * (len(ids) - 1) / (n - 1))] for k in range(n)] if n > 1 else ids[:1]


def render_page(summary: dict[str, Any], pngs: dict[str, Path], images: dict[str, Path], counts: dict[str, int],
                per_class: int) -> str:
    s = summary
    parts = [f"<h1>Data report: {esc(s['data_root'])}</h1>",
             f"<p>{s['images']} usable photos; {len(s['problems'])} left out (listed at the end); "
             f"{s['cache']['read']} read this run, {s['cache']['from_cache']} from the cache.</p>"]
    dup = s["duplicates"]
    if dup["leaking"]:
        parts.append(f'<p class="alarm">LEAKAGE: {len(dup["leaking"])} near-duplicate group(s) span more than '
                     "one split, so test photos have near-copies in train and test metrics are inflated. "
                     "Run 'bincli split' (it groups near-duplicates by default) and retrain.</p>")
    elif s["splits"]:
        parts.append('<p class="ok">No near-duplicate group spans two splits.</p>')

    parts.append("<h2>Classes</h2>" + img_file(pngs["classes"], "class histogram"))
    hist = s["classes"]["by_class"]
    parts.append(table(["items in bin", "images", "share"],
                       [(k, v, f"{v / s['images']:.1%}") for k, v in hist.items()]))
    maj = s["classes"]["majority"]
    parts.append(f"<p>Always answering {esc(maj['class'])} is right {maj['accuracy']:.1%} of the time: "
                 "the floor any model must beat.</p>")
    if s["splits"]:
        sp = s["splits"]
        parts.append(table(["split", "images", f"majority accuracy (always {sp['majority_class']})"],
                           [(n, sp[n]["images"], "" if sp[n]["majority_accuracy"] is None
                             else f"{sp[n]['majority_accuracy']:.1%}") for n in ("train", "valid", "test")]))

    parts.append("<h2>Sizes</h2>" + img_file(pngs["sizes"], "sizes"))
    parts.append(table(["", "min", "median", "mean", "max"],
                       [_stats_row("width px", s["sizes"]["width"]), _stats_row("height px", s["sizes"]["height"]),
                        _stats_row("file kB", s["sizes"]["kb"])]))
    parts.append("<p>Commonest sizes: " + esc(", ".join(f"{c['size']} ({c['images']})"
                                                       for c in s["sizes"]["commonest"])) + "</p>")

    parts.append("<h2>Brightness and contrast</h2>" + img_file(pngs["light"], "brightness and contrast"))
    per = s["light"]["per_class"]
    parts.append(table(["items in bin", "images", "luma median", "luma mean", "contrast median", "contrast mean"],
                       [(k, v["images"], v["luma"]["median"], v["luma"]["mean"], v["contrast"]["median"],
                         v["contrast"]["mean"]) for k, v in per.items()]))

    parts.append(f"<h2>Contact sheet ({per_class} per class)</h2>")
    from bincli.steps.data_report import class_of

    for c in s["light"]["per_class"]:
        ids = _spread(sorted(i for i in counts if class_of(counts[i]) == c), per_class)
        parts.append(f"<h3>{c} item(s)</h3>" + sheet(ids, images, lambda i: f"{i} · {counts[i]}"))

    meta = s["metadata"]
    parts.append("<h2>Metadata</h2>")
    parts.append(table(["items in bin", "bins", "products median", "products max", "item weight lb median",
                        "item longest side in median"],
                       [(k, v["bins"], v["products"].get("median", ""), v["products"].get("max", ""),
                         v["item_weight_lb"].get("median", ""), v["item_longest_side_in"].get("median", ""))
                        for k, v in meta["per_class"].items()]))
    mism = meta["quantity_mismatch"]
    parts.append(f"<p>{len(mism)} bin(s) where the sum of per-product quantity differs from EXPECTED_QUANTITY"
                 + (":</p>" + table(["id", "EXPECTED_QUANTITY", "sum of quantity"],
                                    [(m["id"], m["expected"], m["quantity_sum"]) for m in mism]) if mism else ".</p>"))

    parts.append("<h2>Duplicates</h2>")
    parts.append(f"<p>{len(dup['exact'])} group(s) of identical files (sha256)"
                 + (": " + esc("; ".join(", ".join(g) for g in dup["exact"])) if dup["exact"] else "") + ".</p>")
    parts.append(f"<p>{len(dup['near'])} near-duplicate group(s) ({esc(dup['rule'])}).</p>")
    leaking = {tuple(g["ids"]) for g in dup["leaking"]}
    for group in dup["near"][:MAX_GROUPS_SHOWN]:
        flag = ' <b style="color:#c62828">spans splits</b>' if tuple(group) in leaking else ""
        parts.append(f'<div class="group">{esc(", ".join(group))}{flag}'
                     + sheet(group[:MAX_GROUP_THUMBS], images, lambda i: f"{i} · {counts[i]}") + "</div>")
    if dup["leaking"]:
        parts.append(table(["leaking group", "splits"],
                           [(", ".join(g["ids"]), ", ".join(f"{i}: {w}" for i, w in g["splits"].items()))
                            for g in dup["leaking"]]))

    if s["model"]:
        m = s["model"]
        parts.append(f"<h2>Candidate label errors ({esc(m['model'])})</h2>"
                     f"<p>The {len(m['highest_loss'])} photos (of {m['scored']}) whose label the model finds least "
                     "likely. Check each by eye: a wrong label, a hidden item, or a model mistake.</p>")
        rows = {r["id"]: r for r in m["highest_loss"]}
        parts.append(sheet(list(rows), images, lambda i: f"{i} · label {rows[i]['label']} · model "
                           f"{rows[i]['predicted']} · p={rows[i]['p_label']:.2f}"))

    parts.append(f"<h2>Left out ({len(s['problems'])})</h2>")
    parts.append(table(["id", "reason"], [(p["id"], p["reason"]) for p in s["problems"]]) if s["problems"]
                 else "<p>None.</p>")
    return page("bincli data report", parts, CSS)
