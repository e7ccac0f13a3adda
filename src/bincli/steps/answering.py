"""Answers for many photos, streamed: what evaluate and `predict --out` share.

`answers(predictor, paths, concurrency)` yields (index, answer) as answers come: through an
endpoint, `concurrency` requests in flight (and no more queued, so memory stays flat however many
photos); in-process (--model), the handler's input_fn per photo and predict_fn per batch of
BATCH_SIZE, what the endpoint runs, batched. An answer that failed is {"error", "status"}.
Ctrl-C stops it at once; what was yielded stands.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from bincli.core.contract import MAX_PAYLOAD_BYTES

BATCH_SIZE = 16  # in-process: photos per forward pass

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
DEFAULT_CONTENT_TYPE = "application/x-image"


def content_type_for(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), DEFAULT_CONTENT_TYPE)


def answers(predictor: Any, paths: Sequence[Path], concurrency: int = 8) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index into paths, answer) for every photo, in the order they finish."""
    if getattr(predictor, "in_process", False):
        return _in_process(predictor, paths)
    return _remote(predictor, paths, max(1, concurrency))


def _remote(predictor: Any, paths: Sequence[Path], concurrency: int) -> Iterator[tuple[int, dict[str, Any]]]:
    from bincli.backends.runtime import PredictError

    limit = getattr(predictor, "max_payload", None) or MAX_PAYLOAD_BYTES
    of = getattr(predictor, "limit_of", "the endpoint")

    def one(path: Path) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            body = read_photo(path, limit, of)
        except PhotoRefused as exc:
            return {"error": exc.message, "status": exc.status}
        try:
            answer = predictor.invoke(body, content_type_for(path))
        except PredictError as exc:
            return {"error": exc.message, "status": exc.status}
        return {**answer, "ms": _ms_since(t0)}

    if concurrency == 1:
        yield from ((i, one(p)) for i, p in enumerate(paths))
        return
    pending: dict[Future, int] = {}
    todo = iter(enumerate(paths))
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            while True:
                for i, path in todo:  # top up to `concurrency` in flight, no more
                    pending[pool.submit(one, path)] = i
                    if len(pending) >= concurrency:
                        break
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        except BaseException:  # Ctrl-C, or the consumer stopped: start nothing more
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _in_process(predictor: Any, paths: Sequence[Path]) -> Iterator[tuple[int, dict[str, Any]]]:
    from bincli.core import inference
    from bincli.steps.bounded import bounded

    for start in range(0, len(paths), BATCH_SIZE):
        t0 = time.perf_counter()
        images, slots = [], []
        for i in range(start, min(start + BATCH_SIZE, len(paths))):
            try:
                body = read_photo(paths[i], MAX_PAYLOAD_BYTES, "an endpoint")
                images.append(inference.input_fn(body, content_type_for(paths[i])))
                slots.append(i)
            except inference.InferenceError as exc:
                yield i, {"error": exc.message, "status": exc.status_code}
            except PhotoRefused as exc:
                yield i, {"error": exc.message, "status": exc.status}
        if images:  # bounded: a forward pass that never ends (a looping graph) stops at the timeout and on Ctrl-C
            batch = bounded(lambda images=images: inference.predict_fn(images, predictor.model),
                            getattr(predictor, "timeout", 30.0), f"the forward pass of {len(images)} photo(s)")
            ms = _ms_since(t0) / len(images)
            for i, answer in zip(slots, batch, strict=True):
                yield i, {**answer, "ms": round(ms, 1)}


class PhotoRefused(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message, self.status = message, status


def read_photo(path: Path, limit: int, of: str) -> bytes:
    """The photo's bytes, refused without reading it whole when it is over `limit` (what an endpoint
    takes per request) or not a regular file (a FIFO or a device would block or never end)."""
    import stat

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise PhotoRefused("not a regular file; not read")
        if st.st_size > limit:
            raise PhotoRefused(f"{st.st_size / 2**20:.1f} MB is over the {limit / 2**20:g} MB per request of "
                               f"{of}; not sent (resize or recompress the photo)", 413)
        with path.open("rb") as f:
            body = f.read(limit + 1)  # it may have grown since stat
    except OSError as exc:
        raise PhotoRefused(f"cannot read: {exc.strerror}") from None
    if len(body) > limit:
        raise PhotoRefused(f"over the {limit / 2**20:g} MB per request of {of}; not sent", 413)
    return body


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)
