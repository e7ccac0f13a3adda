"""`bincli predict PHOTOS... --out results.jsonl`: count many photos, streamed to a file, resumable.

One JSON line per photo, written as its answer comes (the same fields as `predict --json`), so a
night's photos never sit in memory and a kill loses at most the line being written. A rerun of the
same command skips the photos the file already answers: it resumes after Ctrl-C, a kill or a crash.
Lines that are not answers (an error, a line cut short by a kill) are dropped from the file first
(rewritten atomically), so their photos are asked again and each photo has one line at most.
Answers come from answering.answers: `concurrency` requests in flight to an endpoint, or in-process
batches with --model. One writer per file (an exclusive lock on it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bincli.config import Config
from bincli.errors import Interrupted, UsageError
from bincli.steps.predict import add_count_fields


def run_batch_predict(cfg: Config, images: Sequence[Path | str], out: Path, endpoint: str | None = None,
                      endpoint_url: str | None = None, model: Path | None = None,
                      expected: int | None = None, wait: bool = True) -> dict[str, Any]:
    """Answer every photo not yet answered in `out`; the summary counts the whole file's answers
    for these photos (answered earlier or now), and the photos that failed now. One S3 prefix
    (s3://bucket/photos/) instead of photos: the backend's batch job answers them (SageMaker: a
    Batch Transform job; `wait` False only starts or looks at it)."""
    from bincli.progress import Progress

    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as results.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    f, earlier = _open_results(out)
    with f:
        source = _source(cfg, images, earlier, endpoint, endpoint_url, model, wait)
        kept = [row for image, row in earlier.items() if source["wanted"](image)]
        verdicts = [_verdict(row, cfg, expected) for row in kept]
        failed = done_now = 0
        if source["rows"] is not None:
            try:
                with Progress("predict", total=source["todo"], unit="photos", show_bytes=False) as bar:
                    for image, answer in source["rows"]:
                        row = {"image": image, **answer}
                        if "error" in row:
                            failed += 1
                        else:
                            add_count_fields(row, cfg.predict, expected)
                            verdicts.append(row.get("verdict"))
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                        done_now += 1
                        bar.advance(1, failed=int("error" in row))
            except KeyboardInterrupt:
                f.flush()
                raise Interrupted(f"interrupted: {out} holds the answers so far",
                                  hint="run the same command again to go on where it stopped") from None
            finally:
                source["rows"].close()
    seconds = time.monotonic() - t0
    return {"out": str(out), "source": source["where"], "job": source.get("job"), "n": len(kept) + source["todo"],
            "earlier": len(kept), "answered": done_now - failed, "failed": failed, "expected": expected,
            "mismatched": verdicts.count("mismatch"), "review": verdicts.count("review"),
            "seconds": round(seconds, 2),
            "photos_per_s": round(done_now / seconds, 1) if done_now and seconds > 0 else None}


def _source(cfg: Config, images: Sequence[Path | str], earlier: dict[str, Any], endpoint: str | None,
            endpoint_url: str | None, model: Path | None, wait: bool) -> dict[str, Any]:
    """Where the answers come from: {"where", "todo" (photos to answer), "rows" (a generator of
    (image, answer), None while a batch job runs), "wanted" (image -> whether it is one of these
    photos), "job" (a batch job's summary)}."""
    uris = [str(i) for i in images if str(i).startswith("s3://")]
    if uris:
        if len(images) != 1 or endpoint or endpoint_url:
            raise UsageError("an S3 prefix of photos is answered by a batch job: give it alone, without "
                             "--endpoint/--endpoint-url", hint="bincli predict s3://bucket/photos/ --out results.jsonl")
        from bincli.backends import get_backend

        prefix = uris[0] if uris[0].endswith("/") else uris[0] + "/"
        job = get_backend(cfg).batch_predict(prefix, model, set(earlier), wait)
        rows = job.pop("answers")
        return {"where": f"transform job {job['job']}" if job["job"] else None, "job": job,
                "todo": job["photos"] if rows is not None else 0,
                "rows": (r for r in rows) if rows is not None else None,
                "wanted": lambda image: image.startswith(prefix)}
    from bincli.steps.answering import answers
    from bincli.steps.predict import collect_images, open_predictor

    files = collect_images([Path(i) for i in images])
    wanted = {str(p) for p in files}
    todo = list(dict.fromkeys(p for p in files if str(p) not in earlier))  # a photo given twice: one answer
    if not todo:
        return {"where": None, "todo": 0, "rows": None, "wanted": wanted.__contains__}
    predictor = open_predictor(cfg, endpoint, endpoint_url, model)

    def rows():
        try:
            for i, answer in answers(predictor, todo, cfg.predict.concurrency):
                yield str(todo[i]), answer
        finally:
            predictor.close()

    return {"where": predictor.where, "todo": len(todo), "rows": rows(), "wanted": wanted.__contains__}


def _open_results(out: Path) -> tuple[Any, dict[str, dict[str, Any]]]:
    """(`out` opened and locked, {image: answer row} of it), the file first rewritten with its
    answers alone where it held anything else."""
    f = _open_locked(out)
    earlier, clean = _answers_in(f)
    if not clean:
        from bincli.core.fileio import atomic_write_text

        atomic_write_text(out, "".join(json.dumps(row) + "\n" for row in earlier.values()))
        f.close()
        f = _open_locked(out)
    return f, earlier


def _open_locked(out: Path) -> Any:
    """`out` opened to read and append, locked for this process alone (flock, released on close)."""
    import fcntl
    import os

    while True:
        f = open(out, "a+", encoding="utf-8")  # noqa: SIM115 (the caller closes it)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise UsageError(f"--out {out}: another bincli predict is writing to it",
                             hint="wait for it, or give another --out file") from None
        if os.fstat(f.fileno()).st_ino == os.stat(out).st_ino:
            return f
        f.close()  # the file was replaced (rewritten by another run) while we waited: lock the new one


def _answers_in(f: Any) -> tuple[dict[str, dict[str, Any]], bool]:
    """({image: answer row} of the file's answer lines, whether the file holds nothing else: no
    error, no line torn by a kill, no garbage)."""
    f.seek(0)
    rows, dropped = {}, 0
    for line in f:
        try:
            row = json.loads(line) if line.endswith("\n") else None
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("image"), str) and "error" not in row \
                and isinstance(row.get("probabilities"), dict):
            rows[row["image"]] = row
        else:
            dropped += 1
    return rows, dropped == 0


def _verdict(row: dict[str, Any], cfg: Config, expected: int | None) -> str | None:
    """An earlier answer's verdict for this run's --expected (recomputed: that run may have had another)."""
    if expected is None:
        return None
    from bincli.core import counting

    p = cfg.predict
    return counting.order_check(row["probabilities"], expected, p.match_threshold, p.mismatch_threshold)["verdict"]
