"""The `inspect` step: what the downloaded data looks like, as numbers, figures and one HTML page.

Reads what `download` (or --input), `split` and `train` recorded; every per-photo figure comes
from the sha256-keyed cache of data/survey.py, so a rerun reads only new photos. Writes
`<workdir>/report/data/` as one unit (index.html, data-summary.json and the PNGs the page
embeds): built in a staging folder, then swapped in, so a failed run leaves the last report.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import secrets
import shutil
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bincli import layout
from bincli.config import Config
from bincli.core.classes import ClassSpec
from bincli.core.contract import SPLITS
from bincli.core.fileio import atomic_write_json, file_sha256
from bincli.data import abid
from bincli.data.bin_metadata import BinFacts
from bincli.data.near_duplicates import exact_groups, groups, near_pairs, search_note
from bincli.data.split import resolve_input
from bincli.data.survey import FactsCache, read_bins, survey
from bincli.errors import DataError, StateError, UsageError
from bincli.state import State

log = logging.getLogger("bincli.inspect")

REPORT_SUBDIR = "data"
OPEN_TOP = 10  # per-class tables and figures put counts from here up in one "10+" class (a long thin tail)
SUMMARY_FILE = "data-summary.json"
PAGE_FILE = "index.html"


def run_inspect(cfg: Config, use_split: bool = False, model: Path | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The whole step; returns the summary (also written as data-summary.json)."""
    workdir = cfg.workdir
    state = State(workdir)
    root, selection = resolve_input(cfg.inspect.input, state, command="inspect")
    meta_files, image_files, bad = abid.local_files(root, selection)
    if not meta_files and not image_files:
        raise DataError(f"{root}: no photos and no metadata in {abid.IMAGES_DIR}/ and {abid.METADATA_DIR}/")
    problems: dict[str, str] = dict(bad)  # names that are not ids, files that are not regular
    problems |= {i: "image without metadata" for i in image_files.keys() - meta_files.keys()}
    problems |= {i: "metadata without image" for i in meta_files.keys() - image_files.keys()}

    bins: dict[str, BinFacts] = {}
    cache = FactsCache.for_workdir(workdir)
    try:
        read, _ = read_bins({i: meta_files[i] for i in sorted(meta_files.keys() & image_files.keys())}, cache)
        for id_, got in read.items():
            if isinstance(got, str):
                problems[id_] = got
            else:
                bins[id_] = got
        if not bins:
            raise DataError(f"{root}: no photo has usable metadata (checked {len(problems)} files; "
                            f"e.g. {min(problems)}: {problems[min(problems)]})")
        surveyed = survey({i: image_files[i] for i in bins}, cache, progress=progress)
    finally:
        cache.close()
    problems |= surveyed.unreadable
    problems |= {i: f.error for i, f in surveyed.facts.items() if f.error}
    facts = {i: f for i, f in surveyed.facts.items() if not f.error}
    counts = {i: bins[i].count for i in facts}
    if not facts:
        raise DataError(f"{root}: none of the {len(bins)} photos could be read (e.g. {min(problems)}: "
                        f"{problems[min(problems)]})")

    split = _split_membership(state, use_split)
    hashes = {i: f.dhash for i, f in facts.items()}
    pairs, note = near_pairs(hashes), search_note(hashes)
    if note:
        log.warning("%s", note)
    same_bytes = exact_groups({i: f.sha256 for i, f in facts.items()})
    near_all = groups(pairs, same_bytes)  # what leaks: near-copies and exact copies alike
    near = [g for g in near_all if g not in same_bytes]
    summary: dict[str, Any] = {
        "data_root": str(root),
        "images": len(facts),
        "cache": {"read": surveyed.computed, "from_cache": len(surveyed.facts) + len(surveyed.unreadable)
                  - surveyed.computed},
        "problems": [{"id": i, "reason": problems[i]} for i in sorted(problems)],
        "classes": _classes(counts),
        "splits": _splits(split, counts) if split else None,
        "sizes": _sizes(facts),
        "light": _light(facts, counts),
        "metadata": _metadata({i: bins[i] for i in facts}),
        "duplicates": {**_duplicates(same_bytes, near, near_all, pairs, split), "search": note},
        "model": None,
    }
    model_tar = model or _trained_model(state)
    if model_tar is not None:
        summary["model"] = _model_losses(Path(model_tar), workdir, {i: image_files[i] for i in facts},
                                         {i: f.sha256 for i, f in facts.items()}, counts, cfg.inspect.top_losses)
    summary = _write(cfg, summary, {i: image_files[i] for i in facts}, counts)
    dup = summary["duplicates"]
    state.record("inspect", {  # what `status` and `pipeline` show; the page has the rest
        "data_root": summary["data_root"], "images": summary["images"], "problems": len(summary["problems"]),
        "majority": summary["classes"]["majority"], "exact_duplicate_groups": len(dup["exact"]),
        "near_duplicate_groups": len(dup["near"]), "leaking_groups": len(dup["leaking"]),
        "page": summary["page"], "report_dir": summary["report_dir"]}, cfg.inspect.model_dump(mode="json"))
    return summary


# ---------------------------------------------------------------- inputs from state
def _split_membership(state: State, required: bool) -> dict[str, str] | None:
    """{id: split name} of the split `bincli split` recorded, or None when there is none."""
    outputs = state.outputs("split")
    if outputs is None:
        if required:
            raise StateError("inspect --split: 'bincli split' has not run in this workspace",
                             hint="run 'bincli split' first, or drop --split")
        return None
    where: dict[str, str] = {}
    for name in SPLITS:
        path = outputs.get("manifests", {}).get(name)
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = csv.reader(f)
                next(rows, None)
                for row in rows:
                    if row:
                        where[row[0]] = name
        except (OSError, TypeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read the {name} manifest the split recorded ({exc})",
                            hint="run 'bincli split' again") from None
    return where


def _trained_model(state: State) -> str | None:
    model = (state.outputs("train") or {}).get("model")
    return model if model and Path(model).is_file() else None


# ---------------------------------------------------------------- the numbers
def _stats(values: list[float], digits: int = 1) -> dict[str, float]:
    if not values:
        return {}
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "mean": round(statistics.fmean(values), digits), "max": round(max(values), digits)}


def class_of(count: int) -> str:
    """The class a count is reported under: itself, or "10+" for the long tail."""
    return str(count) if count < OPEN_TOP else f"{OPEN_TOP}+"


def _ordered(counter: Counter) -> dict[str, int]:
    return {k: counter[k] for k in sorted(counter, key=lambda k: int(k.rstrip("+")))}


def _classes(counts: dict[str, int]) -> dict[str, Any]:
    hist = Counter(counts.values())
    top, n = max(sorted(hist.items()), key=lambda kv: kv[1])
    return {"histogram": {str(k): hist[k] for k in sorted(hist)},
            "by_class": _ordered(Counter(class_of(c) for c in counts.values())),
            "majority": {"class": str(top), "accuracy": round(n / len(counts), 4)}}


def _splits(split: dict[str, str], counts: dict[str, int]) -> dict[str, Any]:
    """Per split: the histogram by class, and the accuracy of always answering the train
    split's commonest count (what a model trained on it must beat)."""
    hists = {name: Counter(c for i, c in counts.items() if split.get(i) == name) for name in SPLITS}
    train = hists["train"]
    top = max(sorted(train.items()), key=lambda kv: kv[1])[0] if train else None
    out = {}
    for name in SPLITS:
        n = sum(hists[name].values())
        by_class = _ordered(Counter(class_of(c) for c in hists[name].elements()))
        out[name] = {"images": n, "histogram": by_class,
                     "majority_accuracy": round(hists[name][top] / n, 4) if n and top is not None else None}
    out["majority_class"] = None if top is None else str(top)
    out["not_in_split"] = sum(1 for i in counts if i not in split)
    return out


def _sizes(facts) -> dict[str, Any]:
    shapes = Counter((f.width, f.height) for f in facts.values())
    return {"width": _stats([f.width for f in facts.values()], 0),
            "height": _stats([f.height for f in facts.values()], 0),
            "kb": _stats([f.bytes / 1000 for f in facts.values()]),
            "commonest": [{"size": f"{w}x{h}", "images": n} for (w, h), n in shapes.most_common(5)]}


def _light(facts, counts: dict[str, int]) -> dict[str, Any]:
    per_class = {}
    for c in _ordered(Counter(class_of(n) for n in counts.values())):
        ids = [i for i in facts if class_of(counts[i]) == c]
        per_class[c] = {"images": len(ids), "luma": _stats([facts[i].luma for i in ids]),
                             "contrast": _stats([facts[i].contrast for i in ids])}
    return {"luma": _stats([f.luma for f in facts.values()]),
            "contrast": _stats([f.contrast for f in facts.values()]), "per_class": per_class}


def _metadata(bins: dict[str, BinFacts]) -> dict[str, Any]:
    mismatch = [{"id": i, "expected": b.count, "quantity_sum": b.quantity_sum}
                for i, b in sorted(bins.items()) if b.quantity_sum != b.count]
    per_class = {}
    for c in _ordered(Counter(class_of(b.count) for b in bins.values())):
        members = [b for b in bins.values() if class_of(b.count) == c]
        per_class[c] = {
            "bins": len(members),
            "products": _stats([b.products for b in members]),
            "item_weight_lb": _stats([w for b in members for w in b.weights_lb], 2),
            "item_longest_side_in": _stats([s for b in members for s in b.max_side_in], 1),
        }
    return {"quantity_mismatch": mismatch, "per_class": per_class,
            "other_units": sum(b.other_units for b in bins.values())}


def _duplicates(same_bytes, near, near_all, pairs, split) -> dict[str, Any]:
    leaking = []
    if split:
        for group in near_all:
            sides = sorted({split[i] for i in group if i in split}, key=SPLITS.index)
            if len(sides) > 1:
                leaking.append({"ids": group, "splits": {i: split.get(i) for i in group}})
    return {"exact": same_bytes, "near": near, "near_pairs": [list(p) for p in pairs],
            "leaking": leaking, "rule": _rule()}


def _rule() -> str:
    from bincli.data.near_duplicates import MARGIN, MAX_DISTANCE

    return (f"64-bit dHash within {MAX_DISTANCE} bits, every other photo at least {MARGIN} bits further "
            "(data/near_duplicates.py)")


# ---------------------------------------------------------------- the model's view
def _model_losses(model_tar: Path, workdir: Path, images: dict[str, Path], shas: dict[str, str],
                  counts: dict[str, int], top: int) -> dict[str, Any]:
    """Cross-entropy of every photo whose count the model knows, highest first: photos whose
    label the model finds least likely are the first candidates for a label error. Answers are
    cached by (model sha256, photo sha256): the model is loaded only for photos it has not seen."""

    from bincli.artifacts.modeltar import read_model_info

    if not model_tar.is_file():
        raise UsageError(f"{model_tar}: no such model file", hint="pass --model model.tar.gz or run 'bincli train'")
    model_sha = file_sha256(model_tar)
    cache = FactsCache.for_workdir(workdir)
    try:
        known = cache.answers(model_sha)
        spec = ClassSpec.parse(read_model_info(model_tar)["classes"])  # checked, without loading torch
        ids = [i for i in sorted(images) if spec.contains(counts[i])]
        todo = [i for i in ids if shas[i] not in known]
        if todo:
            from bincli.steps.predict import InProcessPredictor, predict_files

            with InProcessPredictor(model_tar, workdir) as predictor:
                fresh = predict_files(predictor, [images[i] for i in todo], concurrency=1)
            new = {shas[i]: a for i, a in zip(todo, fresh, strict=True) if "error" not in a}
            cache.add_answers(model_sha, new)
            known |= new
    finally:
        cache.close()
    answers = [known.get(shas[i], {"error": "no answer"}) for i in ids]
    rows = []
    for id_, answer in zip(ids, answers, strict=True):
        if "error" in answer:
            continue
        label = spec.labels[spec.index(counts[id_])]
        p = float(answer["probabilities"].get(label, 0.0))
        rows.append({"id": id_, "label": label, "predicted": answer["label"], "p_label": round(p, 4),
                     "loss": round(-math.log(max(p, 1e-12)), 4)})
    rows.sort(key=lambda r: (-r["loss"], r["id"]))
    return {"model": str(model_tar), "scored": len(rows), "predicted_now": len(todo),
            "mean_loss": round(statistics.fmean(r["loss"] for r in rows), 4) if rows else None,
            "highest_loss": rows[:top]}


# ---------------------------------------------------------------- writing
def _write(cfg: Config, summary: dict[str, Any], images: dict[str, Path], counts: dict[str, int]) -> dict[str, Any]:
    from bincli.steps.data_figures import figures
    from bincli.steps.data_page import render_page

    report_root = layout.under(cfg.workdir, layout.REPORT_DIR)
    target = report_root / REPORT_SUBDIR
    report_root.mkdir(parents=True, exist_ok=True)
    staging = report_root / f".{REPORT_SUBDIR}-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        pngs = figures(summary, staging)
        summary["report_dir"] = str(target)
        summary["page"] = str(target / PAGE_FILE)
        summary["figures"] = {name: str(target / path.name) for name, path in pngs.items()}
        atomic_write_json(staging / SUMMARY_FILE, summary)
        html = render_page(summary, pngs, images, counts, cfg.inspect.per_class)
        (staging / PAGE_FILE).write_text(html, encoding="utf-8")
        old = report_root / f".{REPORT_SUBDIR}-old-{secrets.token_hex(4)}"
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary
