"""Server-side dynamic batching: many callers' images, one model call.

Plain asyncio around any `predict(ndarray) -> ndarray` callable: no HTTP and no TensorFlow here, so
the rules below are tested with a fake model in microseconds.

- Callers `submit` images and await their own slice of the result. Requests are merged, in arrival
  order, into model calls of at most `max_batch_size` images; a request larger than that is split
  over several calls and answered when its last part is done.
- A batch runs when it is full, or when its oldest request has waited `max_batch_delay`. While the
  model is busy (at most `max_concurrent_batches` calls run at once, in worker threads so the event
  loop keeps accepting requests), the queue fills and the next batch is taken whole.
- The queue is bounded by images: a request that does not fit is refused at once (`Overloaded`),
  so overload turns into fast 503s instead of growing latency.
- A caller that stops waiting (deadline passed, client gone) cancels its future; its images are
  dropped from the queue before they reach the model.
- A model call that raises fails only the requests in that batch; the loop goes on.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.errors import DeadlineExceeded, InferenceFailed, Overloaded, VersionUnloading

log = logging.getLogger("service.batcher")

Array = npt.NDArray[np.float32]
PredictFn = Callable[[Array], Array]


class BatchObserver(Protocol):
    """What the batcher reports; the app plugs Prometheus metrics in, tests plug a recorder."""

    def batch_done(self, size: int, seconds: float) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def queue_depth(self, images: int) -> None: ...
    def rejected(self, reason: str) -> None: ...


class NullObserver:
    def batch_done(self, size: int, seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def queue_depth(self, images: int) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class _Pending:
    images: Array
    future: asyncio.Future[Array]
    enqueued: float
    deadline: float
    taken: int = 0
    """Images already handed to a batch."""
    answered: int = 0
    result: Array | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class _Slice:
    request: _Pending
    start: int
    stop: int


class DynamicBatcher:
    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch_size: int = 64,
        max_batch_delay: float = 0.001,
        max_queue_images: int = 4096,
        merge: bool = True,
        max_concurrent_batches: int = 1,
        retry_after_seconds: int = 1,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_images < 1 or max_concurrent_batches < 1:
            raise ValueError("batch size, queue size and concurrency must be positive")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay
        self.max_queue_images = max_queue_images
        self._merge = merge
        self._retry_after = str(retry_after_seconds)
        self._observer: BatchObserver = observer or NullObserver()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_images = 0
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrent_batches, thread_name_prefix="model"
        )
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Refuse new work, answer everything already accepted, then stop."""
        self._closing = True
        self._arrived.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, images: Array, deadline_seconds: float) -> Array:
        """Queue `images` (N, ...) and return the model's N outputs, or raise a `ServingError`."""
        if self._closing:
            self._observer.rejected("shutting_down")
            raise VersionUnloading(
                "the model version is being unloaded", {"Retry-After": self._retry_after}
            )
        count = len(images)
        if self._queued_images + count > self.max_queue_images:
            self._observer.rejected("queue_full")
            raise Overloaded(
                f"server overloaded: {self._queued_images} images queued, limit "
                f"{self.max_queue_images}; retry later",
                {"Retry-After": self._retry_after},
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending = _Pending(images, loop.create_future(), now, now + deadline_seconds)
        self._queue.append(pending)
        self._queued_images += count
        self._observer.queue_depth(self._queued_images)
        self._arrived.set()
        try:
            return await asyncio.wait_for(pending.future, deadline_seconds)
        except TimeoutError:
            self._observer.rejected("deadline")
            raise DeadlineExceeded(
                f"request not answered within its {deadline_seconds * 1000:.0f} ms deadline"
            ) from None

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            slices = await self._collect()
            if slices is None:
                self._slots.release()
                return
            if not slices:
                self._slots.release()
                continue
            task = asyncio.create_task(self._execute(slices))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Slice] | None:
        """Wait for work, then for a full batch or the oldest request's delay; None means stop."""
        while not self._queue:
            if self._closing:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        if self._merge and self.max_batch_delay > 0:
            flush_at = self._queue[0].enqueued + self.max_batch_delay
            while self._queued_images < self.max_batch_size and not self._closing:
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
        return self._take()

    def _take(self) -> list[_Slice]:
        slices: list[_Slice] = []
        size = 0
        now = time.monotonic()
        while self._queue and (size < self.max_batch_size or not self._merge):
            pending = self._queue[0]
            if pending.future.done() or (pending.taken == 0 and pending.deadline <= now):
                self._drop(self._queue.popleft())
                continue
            if not self._merge and slices:
                break
            remaining = pending.size - pending.taken
            take = remaining if not self._merge else min(remaining, self.max_batch_size - size)
            if pending.taken == 0:
                self._observer.queue_wait(now - pending.enqueued)
            slices.append(_Slice(pending, pending.taken, pending.taken + take))
            pending.taken += take
            size += take
            self._queued_images -= take
            if pending.taken == pending.size:
                self._queue.popleft()
        self._observer.queue_depth(self._queued_images)
        return slices

    def _drop(self, pending: _Pending) -> None:
        """Forget a request nobody waits for any more (its caller timed out or went away)."""
        self._queued_images -= pending.size - pending.taken
        if not pending.future.done():
            pending.future.set_exception(DeadlineExceeded("request expired in the queue"))
            self._observer.rejected("deadline")

    async def _execute(self, slices: list[_Slice]) -> None:
        try:
            if len(slices) == 1:
                part = slices[0]
                inputs = part.request.images[part.start : part.stop]
            else:
                inputs = np.concatenate([s.request.images[s.start : s.stop] for s in slices])
            started = time.monotonic()
            loop = asyncio.get_running_loop()
            try:
                outputs = await loop.run_in_executor(self._executor, self._predict, inputs)
                if len(outputs) != len(inputs):
                    raise RuntimeError(
                        f"model returned {len(outputs)} outputs for {len(inputs)} inputs"
                    )
            except Exception as exc:
                log.exception("model call on a batch of %d images failed", len(inputs))
                failure = InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
                for s in slices:
                    if not s.request.future.done():
                        s.request.future.set_exception(failure)
                return
            self._observer.batch_done(len(inputs), time.monotonic() - started)
            self._deliver(slices, outputs)
        finally:
            self._slots.release()

    @staticmethod
    def _deliver(slices: list[_Slice], outputs: Array) -> None:
        offset = 0
        for s in slices:
            request, count = s.request, s.stop - s.start
            part = outputs[offset : offset + count]
            offset += count
            if request.future.done():
                continue
            if count == request.size:
                request.future.set_result(part)
                continue
            if request.result is None:
                request.result = np.empty((request.size, *outputs.shape[1:]), outputs.dtype)
            request.result[s.start : s.stop] = part
            request.answered += count
            if request.answered == request.size:
                request.future.set_result(request.result)
