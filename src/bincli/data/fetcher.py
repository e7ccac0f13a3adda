"""GETs of single objects for `download`, streamed into the local store, with the retries
botocore does not do itself and a size cap (an object far bigger than any ABID file is one
failed id, refused on its Content-Length or cut off as soon as it streams past the cap)."""

from __future__ import annotations

import io
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bincli.data.local_store import Check, FetchError, Interrupted, LocalStore
from bincli.progress import Progress

log = logging.getLogger("bincli.download")

CHUNK = 1 << 16


@dataclass
class Stats:
    requests: Counter = field(default_factory=Counter)
    nbytes: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str) -> None:
        with self.lock:
            self.requests[kind] += 1


class Fetcher:
    """GETs one object to a file (or into memory), with retries for what botocore does not
    retry itself: a connection dropped while the body streams, a body shorter than promised.
    (Throttling, 5xx and connect/read timeouts on the request are retried by botocore.)"""

    def __init__(self, client: Any, bucket: str, store: LocalStore, retries: int, stats: Stats,
                 stop: threading.Event, progress: Progress | None = None, max_bytes: int | None = None):
        self.client = client
        self.max_bytes = max_bytes
        self.bucket = bucket
        self.store = store
        self.retries = retries
        self.stats = stats
        self.stop = stop
        self.progress = progress

    def to_file(self, key: str, dest: Path, check: Check, kind: str) -> tuple[int, Any]:
        return self._get(key, kind, lambda chunks, expected: self.store.write(dest, chunks, expected, check,
                                                                               self.stop))

    def to_memory(self, key: str, check: Check, kind: str) -> tuple[bytes, Any]:
        """For small objects (metadata while sampling): kept in memory, still under the cap."""
        def sink(chunks: Iterable[bytes], expected: int | None) -> tuple[bytes, Any]:
            data = b"".join(chunks)
            if expected is not None and len(data) != expected:
                raise FetchError("short", f"got {len(data)} bytes, Content-Length says {expected}")
            return data, check(io.BytesIO(data))

        return self._get(key, kind, sink)

    def _get(self, key: str, kind: str, sink: Callable[[Iterable[bytes], int | None], Any]) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            IncompleteReadError,
        )

        # OSError: a socket error botocore did not wrap (local disk errors come as DiskError).
        transient = (HTTPClientError, ConnectionError, IncompleteReadError, OSError)
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Interrupted()
            failure: BaseException
            try:
                self.stats.count(kind)
                resp = self.client.get_object(Bucket=self.bucket, Key=key)
                body = resp["Body"]
                try:
                    size = resp.get("ContentLength")
                    if size is not None:
                        self._within_cap(size)  # refused before a byte of the body is read
                    return sink(self._counted(body.iter_chunks(CHUNK)), size)
                finally:
                    body.close()
            except ClientError as exc:
                raise _client_failure(exc) from None
            except FetchError as exc:
                if exc.kind != "short":
                    raise
                failure = exc
            except transient as exc:
                failure = exc
            except BotoCoreError as exc:
                raise FetchError("error", f"{type(exc).__name__}: {exc}") from None
            if attempt >= self.retries:
                reason = getattr(failure, "reason", None) or f"{type(failure).__name__}: {failure}"
                raise FetchError("error", f"{reason} (gave up after {attempt + 1} tries)")
            attempt += 1
            with self.stats.lock:
                self.stats.retries += 1
            log.debug("%s: %s; retry %d of %d", key, failure, attempt, self.retries)
            # Full-jitter exponential backoff, as botocore's: 0..min(20, 0.5 * 2^attempt) s.
            if self.stop.wait(random.uniform(0, min(20.0, 0.5 * 2**attempt))):
                raise Interrupted()

    def _within_cap(self, nbytes: int, streamed: bool = False) -> None:
        if self.max_bytes is not None and nbytes > self.max_bytes:
            size = "streamed past" if streamed else f"is {nbytes / 2**20:.1f} MB, over"
            raise FetchError("too_large", f"object {size} the download.max_object_mb cap of "
                                          f"{self.max_bytes / 2**20:g} MB (ABID files are under 1 MB)")

    def _counted(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The body's chunks, counted; cut off once past the cap (a server may send no length, or lie)."""
        total = 0
        for chunk in chunks:
            if self.stop.is_set():
                raise Interrupted()
            total += len(chunk)
            self._within_cap(total, streamed=True)
            with self.stats.lock:
                self.stats.nbytes += len(chunk)
            if self.progress is not None:
                self.progress.add_bytes(len(chunk))
            yield chunk


def _client_failure(exc: Any) -> FetchError:
    from bincli.data.s3 import error_code

    code = error_code(exc) or "?"
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in {"NoSuchKey", "404", "NotFound"}:
        return FetchError("missing", "not in the bucket (404 NoSuchKey)")
    if code in {"AccessDenied", "403"}:
        return FetchError("denied", "access denied (403)")
    return FetchError("error", f"S3 error {code}" + (f" (HTTP {status})" if status else ""))
