"""`bincli download`: ABID images + metadata from the public bucket (or any S3 server)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, JsonOpt, SetOpt, WorkdirOpt, finish, load, renamed
from bincli.console import out


def download(
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: JsonOpt = False,
    sets: SetOpt = None,
    per_class: Annotated[int | None, typer.Option(
        "--per-class", help="Sample this many ids per class (seeded) from the bucket's metadata, or from "
        "--file-list.", show_default=False, metavar="N")] = None,
    classes: Annotated[str | None, typer.Option(
        "--classes", help="Classes for --per-class: '1-5', or '0-5+' where 5+ holds 5 or more (default 1-5).",
        show_default=False, metavar="CLASSES")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the per-class sample (default 0).",
                                             show_default=False)] = None,
    file_list: Annotated[Path | None, typer.Option(
        "--file-list", help="Udacity file_list.json ({\"1\": [\"data/metadata/100313.json\", ...]}), taken as is.",
        dir_okay=False, show_default=False)] = None,
    ids_file: Annotated[Path | None, typer.Option(
        "--ids-file", help="Text file with one id per line.", dir_okay=False, show_default=False)] = None,
    ids: Annotated[list[str] | None, typer.Option(
        "--ids", help="Ids to fetch, comma-separated or repeated: --ids 00002,100313.", show_default=False,
        metavar="ID,...")] = None,
    s3_endpoint_url: Annotated[str | None, typer.Option(
        "--s3-endpoint-url", help="S3-compatible server instead of AWS (e.g. the local ABID mirror).",
        show_default=False, metavar="URL")] = None,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", hidden=True,
                                                     help="Old name of --s3-endpoint-url.")] = None,
    bucket: Annotated[str | None, typer.Option("--bucket", help="Bucket (default aft-vbi-pds).",
                                               show_default=False, metavar="BUCKET")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Concurrent transfers (default 32).",
                                                show_default=False)] = None,
    retries: Annotated[int | None, typer.Option("--retries", help="Retries per file (default 5).",
                                                show_default=False)] = None,
    strict: Annotated[bool | None, typer.Option(
        "--strict/--no-strict", help="Fail if any file fails (default no-strict: only if nothing usable came "
        "down).",
        show_default=False)] = None,
) -> None:
    """Download ABID images and their metadata into <workdir>/data, verified, resumable.

    Fetches only what is missing or bad: interrupt it and run it again. Failures (a missing
    key, a corrupt image) are listed by id at the end and in data/download-report.json.

    Example: bincli download --per-class 500 --classes 1-5 --seed 0
    """
    s3_endpoint_url = renamed(s3_endpoint_url, endpoint_url, "--s3-endpoint-url", "--endpoint-url")
    loaded = load(config, workdir, sets, {
        "download.per_class": ("--per-class", per_class), "download.classes": ("--classes", classes),
        "download.seed": ("--seed", seed), "download.file_list": ("--file-list", file_list),
        "download.ids_file": ("--ids-file", ids_file), "download.endpoint_url": ("--s3-endpoint-url", s3_endpoint_url),
        "download.bucket": ("--bucket", bucket), "download.workers": ("--workers", workers),
        "download.retries": ("--retries", retries), "download.strict": ("--strict", strict),
    })
    from bincli.data.download import DownloadFailed, run_download

    cfg = loaded.config
    flag_ids = [part.strip() for item in ids or [] for part in item.split(",") if part.strip()]
    previous = signal.signal(signal.SIGTERM, _terminate)  # `kill` cleans up like Ctrl-C does
    try:
        result = run_download(cfg.download, cfg.workdir, flag_ids or None)
    except DownloadFailed as exc:
        finish(exc.result, json_out, _render)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    finish(result, json_out, _render)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _render(result: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from bincli.progress import human_bytes

    seconds = max(result["seconds"], 1e-9)
    table = Table(title=f"download from {result['source']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("selection", escape(result["describe"]))
    table.add_row("complete", escape(f"{result['images']} image(s) with metadata in {result['data_dir']}"))
    table.add_row("fetched now", f"{result['fetched']} ({human_bytes(result['bytes'])}, "
                                 f"{human_bytes(result['bytes'] / seconds)}/s)")
    table.add_row("already there", str(result["present"]))
    table.add_row("failed", str(result["failed"]))
    if result["counts"]:
        table.add_row("by count", ", ".join(f"{k}: {v}" for k, v in result["counts"].items()))
    if result["shortfall"]:
        table.add_row("short", ", ".join(f"class {k}: {v} missing" for k, v in result["shortfall"].items()))
    table.add_row("time", f"{result['seconds']:.1f} s, {sum(result['requests'].values())} request(s)")
    out.print(table)
    failures = result["failures"]
    if failures:
        ftable = Table(title=escape(f"{len(failures)} failed (all in {result['report']})"))
        for col in ("id", "file", "problem", "reason"):
            ftable.add_column(col)
        for f in failures[:20]:
            ftable.add_row(*(escape(f[k]) for k in ("id", "key", "kind", "reason")))
        if len(failures) > 20:
            ftable.add_row("...", f"{len(failures) - 20} more", "", "")
        out.print(ftable)
