"""`bincli split`: stratified train/valid/test manifests from downloaded ABID data."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, InputOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load
from bincli.console import out


def split(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    input: InputOpt = None,
    ratios: Annotated[tuple[float, float, float] | None, typer.Option(
        "--ratios", help="Train, valid and test shares, space-separated, summing to 1 (default 0.8 0.1 0.1).",
        show_default=False, metavar="TRAIN VALID TEST")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Shuffle seed (default 42).", show_default=False)] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Counts to keep: '1-5', or '0-5+' where 5+ holds 5 or more (default 1-5).",
        show_default=False, metavar="CLASSES")] = None,
    max_per_class: Annotated[int | None, typer.Option(
        "--max-per-class", help="Cap images per class.", show_default=False, metavar="N")] = None,
    layout: Annotated[str | None, typer.Option(
        "--layout", help="manifest, or folders (also hard-links <split>/<count>/<id>.jpg) (default manifest).",
        show_default=False, metavar="[manifest|folders]")] = None,
    group_near_duplicates: Annotated[bool | None, typer.Option(
        "--group-near-duplicates/--no-group-near-duplicates",
        help="Keep each group of near-identical photos inside one split (default on), so no test photo "
        "has a near-copy in train.", show_default=False)] = None,
) -> None:
    """Split images into train/valid/test, stratified by count; check every image on the way.

    Writes <workdir>/splits/{train,valid,test}.csv (id,path,count), split-report.json (every image
    left out, with the reason) and class-histogram.png.

    Example: bincli split --input ../shared/abid-sample --ratios 0.8 0.1 0.1 --classes 1-5
    """
    loaded = load(config, workdir, sets, {
        "split.input": ("--input", input), "split.ratios": ("--ratios", ratios), "split.seed": ("--seed", seed),
        "split.classes": ("--classes", classes), "split.max_per_class": ("--max-per-class", max_per_class),
        "split.layout": ("--layout", layout),
        "split.group_near_duplicates": ("--group-near-duplicates", group_near_duplicates),
    })
    from bincli.data.split import run_split

    cfg = loaded.config
    result = run_split(cfg.split, cfg.workdir)
    finish(result, json_out, _render)


def _render(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"split of {result['data_root']}")
    for col in ("class", "train", "valid", "test", "total"):
        table.add_column(col, justify="right")
    for row in result["table"]:
        table.add_row(row["class"], *(str(row[s]) for s in ("train", "valid", "test")),
                      str(row["train"] + row["valid"] + row["test"]))
    table.add_row("all", *(str(result[s]) for s in ("train", "valid", "test")),
                  str(result["train"] + result["valid"] + result["test"]), style="bold")
    out.print(table)
    if result["rejected_ids"]:
        shown = result["rejected_ids"][:10]
        out.print(f"left out {len(result['rejected_ids'])} image(s):")
        for r in shown:
            out.print(f"  {r['id']}: {r['reason']}", markup=False)
        if len(result["rejected_ids"]) > len(shown):
            out.print(f"  ... all listed in {result['report']}", markup=False)
    if result["outside_classes"]:
        out.print(f"{result['outside_classes']} image(s) have counts outside classes {result['classes']}")
    grouping = result.get("near_duplicates")
    if grouping:
        out.print(f"{grouping['groups']} near-duplicate group(s); {grouping['groups_moved']} moved into one split "
                  f"({grouping['images_moved']} photo(s))"
                  + (f"; {grouping['unbalanced']} could not be balanced within their class" if grouping["unbalanced"]
                     else ""))
    out.print(f"manifests in {result['manifests_dir']}", markup=False)
