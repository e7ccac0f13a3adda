"""Micro-batching for the local endpoint: images of concurrent requests run as one forward pass.

Each request decodes and resizes its own image in the server's pool (errors stay its own: a 4xx
never touches the others), then waits here. One forward runs at a time, on its own thread, over up to
`max_size` waiting images; each request gets its own answer back. Batches form by themselves under
load: while a forward runs, new images queue and go together in the next one. A batch that is not full
also waits for the images other requests are still decoding (`preparing`, counted by the server) up to
PREPARING_WAIT_S: without that, the answers of one batch came back together, the clients' next requests
arrived together, and the first one decoded ran alone (batches of 1, 7, 1, 7: 33 req/s for 8 clients
instead of batches of 8). A lone request has nobody to wait for and starts at once. `delay_s` > 0 also
holds a batch that is not full for up to that long, to wait for requests not yet arrived (it costs a
lone request that much).
A request that finds nobody queued, decoding or running (and delay_s 0) runs its forward alone on the
pool thread that decoded it (run_alone): the same forward of one image, without the two thread hand-offs
to the forward thread and back (issue 14: about 1 ms per request at one client on 2 busy CPUs, what
batching on cost over batching off). A lock keeps one forward at a time either way.

Why it pays (issue 14, 2 CPUs, resnet18): a forward of 8 images costs about what 8 forwards of one
cost when they run one after another (ONNX Runtime: 17 ms each, 58 img/s at batch 8), but concurrent
requests that each run their own forward fight over the same cores (8 clients got 32.8 req/s).
One forward at a time over what has queued keeps the cores on one job and adds no wait at one client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PREPARING_WAIT_S = 0.02  # a decode and resize take 1-3 ms; under heavy load more, but never hold a batch long
NOT_ALONE = object()  # run_alone's answer when the request must go through submit()


class Batcher:
    """Runs `forward(list of inputs) -> list of answers` over the inputs that concurrent submit() calls
    bring, at most `max_size` at once. Used from the event loop's thread only."""

    def __init__(self, forward: Any, max_size: int, delay_s: float = 0.0):
        self.forward, self.max_size, self.delay_s = forward, max_size, delay_s
        self.queue: list[tuple[Any, asyncio.Future]] = []
        self.full = asyncio.Event()
        self.changed = asyncio.Event()  # an image queued or a request stopped preparing
        self.preparing = 0  # requests decoding an image that will come here (the server counts them)
        self.task: asyncio.Task | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.lock = threading.Lock()  # held by whichever thread runs a forward: one at a time
        self.running = False  # a batch is being formed or run (set on the loop's thread)
        self.alone = False    # a request's forward runs on its own thread (run_alone)
        self.batches = 0
        self.images = 0
        self.largest = 0
        self.busy_s = 0.0  # wall time with a forward running: near the uptime under load, or the cores idle

    async def submit(self, item: Any) -> tuple[Any, int, float]:
        """(this item's answer, the size of the batch it ran in, the seconds that batch's forward took)."""
        future = asyncio.get_running_loop().create_future()
        self.queue.append((item, future))
        self.changed.set()
        if len(self.queue) >= self.max_size:
            self.full.set()
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        return await future

    def run_alone(self, loop: asyncio.AbstractEventLoop, item: Any) -> Any:
        """From the pool thread that prepared `item`: its answer, from a forward run here when no other image
        is queued, being prepared or in a forward; NOT_ALONE otherwise (then submit it). The reads of the
        loop thread's state race benignly: the lock still keeps forwards apart, a late batch waits on it."""
        if (self.delay_s > 0 or self.queue or self.running or self.alone or self.preparing > 1
                or not self.lock.acquire(blocking=False)):
            return NOT_ALONE
        self.alone = True
        t0, ran = time.perf_counter(), False
        try:
            answer, ran = self.forward([item])[0], True
            return answer
        finally:
            self.lock.release()
            # Queued before the request's own future completes: the loop sees `alone` cleared first.
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (server shutting down)
                loop.call_soon_threadsafe(self._alone_done, time.perf_counter() - t0, ran)

    def _alone_done(self, seconds: float, ran: bool) -> None:
        self.alone = False
        self.busy_s += seconds
        self.changed.set()
        if not ran:  # a server error: counted as the batches that fail are, not at all
            return
        self.batches += 1
        self.images += 1
        self.largest = max(self.largest, 1)

    def _locked_forward(self, items: list) -> tuple[list, float]:
        """(answers, seconds the forward took once it held the lock)."""
        with self.lock:
            t0 = time.perf_counter()
            return self.forward(items), time.perf_counter() - t0

    @contextlib.contextmanager
    def preparing_one(self):
        """Around a request's decode: a batch that is not full waits for its image (or its failure)."""
        self.preparing += 1
        try:
            yield
        finally:
            self.preparing -= 1
            self.changed.set()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue:
            while self.alone:  # a lone request's forward runs: what queues meanwhile goes after it, together
                self.changed.clear()
                await self.changed.wait()
            if self.delay_s > 0 and len(self.queue) < self.max_size:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.delay_s):
                        await self.full.wait()
            deadline = loop.time() + PREPARING_WAIT_S
            while len(self.queue) < self.max_size and self.preparing > 0 and loop.time() < deadline:
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self.changed.wait()
            self.full.clear()
            self.running = True  # before the queue empties: run_alone must not start now
            batch, self.queue = self.queue[:self.max_size], self.queue[self.max_size:]
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # a client that went away
            if not batch:
                self.running = False
                continue
            t0 = loop.time()
            try:
                answers, seconds = await loop.run_in_executor(self.pool, self._locked_forward,
                                                              [item for item, _ in batch])
            except Exception as exc:  # a server error: every request of this batch gets it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self.running = False
                self.busy_s += loop.time() - t0
            self.batches += 1
            self.images += len(batch)
            self.largest = max(self.largest, len(batch))
            for (_, fut), answer in zip(batch, answers, strict=True):
                if not fut.done():
                    fut.set_result((answer, len(batch), seconds))

    def snapshot(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_size, "max_batch_delay_ms": round(self.delay_s * 1000, 3),
                "batches": self.batches, "images": self.images, "largest": self.largest,
                "mean_size": round(self.images / self.batches, 3) if self.batches else None,
                "forward_busy_s": round(self.busy_s, 3)}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
