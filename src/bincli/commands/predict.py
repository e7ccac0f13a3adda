"""`bincli predict`: count the items in bin photos through the endpoint (or a model in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from bincli.commands.common import ConfigOpt, EndpointOpt, EndpointUrlOpt, SetOpt, WorkdirOpt, load, wants_json
from bincli.console import emit_json, out
from bincli.errors import UsageError


def predict(
    images: Annotated[list[str], typer.Argument(help="Images (.jpg, .jpeg, .png), folders of them, and/or "
                                                "list files (.txt: one path a line); or, with --out on backend "
                                                "sagemaker, one S3 prefix (a Batch Transform job).",
                                                 show_default=False, metavar="IMAGE")],
    config: ConfigOpt = None,
    workdir: WorkdirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout.")] = False,
    sets: SetOpt = None,
    endpoint: EndpointOpt = None,
    endpoint_url: EndpointUrlOpt = None,
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Predict in-process with this model.tar.gz instead of an endpoint.",
        dir_okay=False, show_default=False)] = None,
    expected: Annotated[int | None, typer.Option(
        "--expected", help="Order check: each image's probability of holding exactly N and a verdict "
        "(match, mismatch, review); exit 1 on a mismatch (a CI gate).", show_default=False)] = None,
    review_exit_code: Annotated[int | None, typer.Option(
        "--review-exit-code", help="Exit code when a verdict is review (default 0: passes; config "
        "predict.review_exit_code).", show_default=False, min=0, max=255)] = None,
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", help="Requests in flight (default 8).", show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", help="Seconds per request (default 30).", show_default=False)] = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write one JSON line per photo to this file as answers come (for many photos); "
        "a rerun skips the photos it already answers. stdout gets the summary.", show_default=False)] = None,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="With an S3 prefix: start the batch job (or look at it) and return; the same "
        "command again collects its answers.")] = False,
) -> None:
    """Count the items in bin photos through the deployed endpoint (or --model, in-process).

    Exits 1 if an image fails or, with --expected N, if the model is sure a bin does not hold N
    (verdict mismatch); an unsure one (review) exits --review-exit-code.

    Example: bincli predict bin.jpg more/ --json;  bincli predict bin.jpg --expected 3;
    bincli predict night/ --out counts.jsonl
    """
    if expected is not None and expected < 0:  # a count is never negative: such a gate could never pass
        raise UsageError(f"--expected: must be a count of 0 or more, got {expected}")
    cfg = load(config, workdir, sets, {
        "predict.endpoint": ("--endpoint", endpoint), "predict.endpoint_url": ("--endpoint-url", endpoint_url),
        "predict.concurrency": ("--concurrency", concurrency), "predict.timeout": ("--timeout", timeout),
        "predict.review_exit_code": ("--review-exit-code", review_exit_code),
    }).config
    from bincli.steps.predict import outcome_error, run_predict

    if out_file is not None:  # many photos: answers to the file, one summary here
        from bincli.steps.batch_predict import run_batch_predict

        result = run_batch_predict(cfg, images, out_file, endpoint=endpoint, endpoint_url=endpoint_url,
                                   model=model, expected=expected, wait=not no_wait)
        rows, render = [result], _render_summary
    elif no_wait or any(i.startswith("s3://") for i in images):
        raise UsageError("an S3 prefix of photos (and --no-wait) goes with --out results.jsonl: a batch job's answers "
                         "are written to a file")
    else:
        result = run_predict(cfg, [Path(i) for i in images], endpoint=endpoint, endpoint_url=endpoint_url,
                             model=model, expected=expected)
        rows, render = result["results"], _render
    if wants_json(json_out):
        for row in rows:
            emit_json(row)
    else:
        render(result)
    problem = outcome_error(result, cfg.predict.review_exit_code)
    if problem is not None:
        raise problem


def _render(result: dict[str, Any]) -> None:
    from rich.table import Table

    rows = result["results"]
    if len(rows) == 1:
        r = rows[0]
        if "error" in r:
            out.print(f"{r['image']}: error {r['status'] or ''} {r['error']}", markup=False, soft_wrap=True)
        else:
            line = f"{r['image']}: count {r['label']} (confidence {r['confidence']:.2f})"
            if "expected_count" in r:
                line += f", mean {r['expected_count']:.2f}, range {_range(r)}"
            if "verdict" in r:
                line += f"; holds {result['expected']}: {r['verdict']} (p {r['p_expected']:.2f})"
            out.print(line, markup=False, soft_wrap=True)
        return
    check = result.get("expected") is not None
    table = Table(title=f"predictions from {result['source']}")
    columns = [("image", "left"), ("count", "right"), ("confidence", "right"), ("mean", "right"),
               ("range", "right")]
    if check:
        columns += [(f"p({result['expected']})", "right"), ("verdict", "left")]
    for col, justify in [*columns, ("ms", "right")]:
        table.add_column(col, justify=justify)
    for r in rows:
        if "error" in r:
            table.add_row(r["image"], "error", f"{r['status'] or ''} {r['error']}", *[""] * (len(columns) - 2))
        else:
            extra = [_num(r.get("p_expected")), r.get("verdict", "-")] if check else []
            table.add_row(r["image"], r["label"], f"{r['confidence']:.2f}", _num(r.get("expected_count")),
                          _range(r), *extra, f"{r['ms']:.0f}")
    out.print(table)
    tail = f"; {result['mismatched']} mismatch, {result.get('review', 0)} review" if check else ""
    out.print(f"{result['n']} image(s), {result['failed']} failed{tail}", markup=False, soft_wrap=True)


def _render_summary(s: dict[str, Any]) -> None:
    job = s.get("job") or {}
    if job.get("job") and job["status"] not in ("Completed", "Failed", "Stopped"):
        out.print(f"transform job {job['job']}: {job['status']} ({job['photos']} photo(s)); the same command "
                  f"again collects its answers into {s['out']}", markup=False, soft_wrap=True)
        return
    rate = f" at {s['photos_per_s']} photos/s" if s["photos_per_s"] else ""
    earlier = f"; {s['earlier']} answered before" if s["earlier"] else ""
    tail = f"; {s['mismatched']} mismatch, {s['review']} review" if s["expected"] is not None else ""
    out.print(f"{s['out']}: {s['answered']} photo(s) answered now{rate}, {s['failed']} failed{earlier} "
              f"({s['n']} given){tail}", markup=False, soft_wrap=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _range(r: dict[str, Any]) -> str:
    lo, hi = r.get("count_range") or (None, None)
    return "-" if lo is None else (str(lo) if lo == hi else f"{lo}-{hi}")
