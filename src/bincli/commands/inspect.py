"""`bincli inspect`: a report on the downloaded data to read before training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, InputOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import out


def inspect(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    input: InputOpt = None,
    split: Annotated[bool, typer.Option(
        "--split", help="Require the split 'bincli split' recorded (per-split histograms, leakage check); "
        "without it they are reported when a split exists.")] = False,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="model.tar.gz whose highest-loss photos to show (default what 'bincli train' "
        "wrote, if anything).", dir_okay=False, show_default=False)] = None,
    per_class: Annotated[int | None, typer.Option(
        "--per-class", help="Thumbnails per class on the contact sheet (default 8).", show_default=False)] = None,
    top_losses: Annotated[int | None, typer.Option(
        "--top-losses", help="Highest-loss photos to show with a model (default 24).", show_default=False)] = None,
) -> None:
    """Report on the data: classes (per split), sizes, brightness, metadata, duplicates, near-copies.

    Writes <workdir>/report/data/index.html (one self-contained page), its PNGs and
    data-summary.json. Per-photo figures are cached by sha256, so a rerun reads only new photos.
    Near-duplicate groups that span splits are reported as train/test leakage.

    Example: bincli inspect;  bincli inspect --input ../shared/abid-sample --model model/model.tar.gz
    """
    cfg = load(config, workdir, sets, {
        "inspect.input": ("--input", input), "inspect.per_class": ("--per-class", per_class),
        "inspect.top_losses": ("--top-losses", top_losses),
    }).config
    from bincli.progress import Progress
    from bincli.steps.data_report import run_inspect

    with Progress("surveying photos", unit="images", show_bytes=False) as bar:

        def progress(done: int, total: int) -> None:
            if bar.total != total:
                bar.set_total(total)
            bar.advance(1)

        result = run_inspect(cfg, use_split=split, model=model, progress=progress)
    finish(result, json_out, _render)


def _render(result: dict[str, Any]) -> None:
    from rich.table import Table

    classes = Table(title=f"classes of {result['data_root']}")
    columns = ["items in bin", "images"] + (["train", "valid", "test"] if result["splits"] else [])
    for col in columns:
        classes.add_column(col, justify="right")
    for k, n in result["classes"]["by_class"].items():
        per_split = [str(result["splits"][s]["histogram"].get(k, 0)) for s in ("train", "valid", "test")] \
            if result["splits"] else []
        classes.add_row(k, str(n), *per_split)
    out.print(classes)
    maj = result["classes"]["majority"]
    out.print(f"majority class {maj['class']}: {maj['accuracy']:.1%} accuracy (the floor to beat)")
    if result["splits"]:
        sp = result["splits"]
        out.print("majority accuracy per split (always " + sp["majority_class"] + "): " + ", ".join(
            f"{s} {sp[s]['majority_accuracy']:.1%}" for s in ("train", "valid", "test")
            if sp[s]["majority_accuracy"] is not None))

    light = Table(title="photos")
    for col in ("", "min", "median", "mean", "max"):
        light.add_column(col, justify="right")
    for name, stats in (("width px", result["sizes"]["width"]), ("height px", result["sizes"]["height"]),
                        ("file kB", result["sizes"]["kb"]), ("mean luma", result["light"]["luma"]),
                        ("contrast", result["light"]["contrast"])):
        light.add_row(name, *(f"{stats[k]:g}" for k in ("min", "median", "mean", "max")))
    out.print(light)

    dup, meta = result["duplicates"], result["metadata"]
    out.print(f"{len(dup['exact'])} exact-duplicate group(s), {len(dup['near'])} near-duplicate group(s); "
              f"{len(meta['quantity_mismatch'])} bin(s) whose product quantities do not sum to EXPECTED_QUANTITY")
    if dup["leaking"]:
        out.print(f"[bold red]LEAKAGE: {len(dup['leaking'])} near-duplicate group(s) span splits[/] "
                  f"(e.g. {', '.join(dup['leaking'][0]['ids'])}); run 'bincli split' again (it groups them) "
                  "and retrain")
    if result["model"]:
        top = result["model"]["highest_loss"][:5]
        out.print("highest loss (candidate label errors): " + ", ".join(
            f"{r['id']} (label {r['label']}, model {r['predicted']})" for r in top), markup=False)
    if result["problems"]:
        out.print(f"left out {len(result['problems'])} file(s):")
        for p in result["problems"][:10]:
            out.print(f"  {p['id']}: {p['reason']}", markup=False)
    out.print(f"report: {result['page']}", markup=False, soft_wrap=True)
