"""Server-side dynamic batching: many callers' images, one model call.

Plain asyncio around any `predict(ndarray) -> ndarray` callable: no HTTP and no TensorFlow here, so
the rules below are tested with a fake model in microseconds.

- Callers `submit` images and await their own slice of the result. Requests are merged, in arrival
  order, into model calls of at most `max_batch_size` images; a request larger than that is split
  over several calls and answered when its last part is done.
- A batch runs when it is full, or when its oldest request has waited `max_batch_delay`. While the
  model is busy (at most `max_concurrent_batches` calls run at once, in worker threads so the event
  loop keeps accepting requests), the queue fills and the next batch is taken whole.
- Admission is by time: a request is accepted only if the work queued ahead of it, and its own,
  can be done within its time budget and within `max_queue_delay` (so overload never builds a
  standing queue that every later request must wait through), estimated from the measured cost
  of the model's calls (`service.cost`). Otherwise it is refused at once (`Overloaded`, 503 +
  Retry-After), so overload turns into fast refusals while what is accepted is answered in
  time. `admit` makes the same decision before a request's body is even read. The queue is
  also bounded by images, as a memory guard.
- A caller that stops waiting (deadline passed, client gone, task cancelled) is forgotten at
  once: its images leave the queue's count and are dropped before they reach the model.
- A model call that raises fails only the requests in that batch; the loop goes on. A call that
  hangs holds its slot, but callers still get their 504 at their deadline, newcomers a fast 503
  (the estimate counts a call far past its expected time as taking that long again), and
  `close` gives up on it after its timeout.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from service.cost import CostModel
from service.errors import (
    ClientGone,
    DeadlineExceeded,
    InferenceFailed,
    Overloaded,
    ServingError,
    VersionUnloading,
)

log = logging.getLogger("service.batcher")

WATCH_AFTER = 0.05
"""Seconds a request waits before it starts listening for its client's disconnect: most
requests are answered sooner, and a listener task for each cost ~8% of single-image throughput
at 64 connections (A/B)."""
PLANNED_SHARE = 0.8
"""Admission plans to answer within this share of a request's budget; the rest absorbs the
estimate's error (under sustained overload the queue sits at the planned edge, and a plan of the
whole budget sent ~2% of the accepted requests past it, measured with bench/overload.py)."""

Array = npt.NDArray[np.float32]
PredictFn = Callable[[Array], Array]


class BatchObserver(Protocol):
    """What the batcher reports; the app plugs Prometheus metrics in, tests plug a recorder."""

    def batch_done(self, size: int, requests: int, seconds: float) -> None:
        """A model call of `size` images from `requests` requests took `seconds`."""

    def queue_wait(self, seconds: float) -> None: ...
    def queue_depth(self, images: int) -> None: ...
    def accepted(self) -> None: ...
    def rejected(self, reason: str) -> None:
        """Refused before queueing: queue_full, over_budget, shutting_down."""

    def dropped(self, reason: str) -> None:
        """Accepted, then given up: deadline, client_disconnected, cancelled."""


class BatchTracer(Protocol):
    """Tracing's hook (service.tracing), when it is on: what each request carries into the
    queue, and each finished model call with the requests it served."""

    def capture(self) -> Any:
        """Called in the request's own context as it joins the queue."""

    def batch(
        self,
        requests: Sequence[tuple[Any, float]],
        size: int,
        started: float,
        ended: float,
        error: BaseException | None,
    ) -> None:
        """(what `capture` returned, when it was queued) per request; monotonic seconds."""


class NullObserver:
    def batch_done(self, size: int, requests: int, seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def queue_depth(self, images: int) -> None:
        pass

    def accepted(self) -> None:
        pass

    def rejected(self, reason: str) -> None:
        pass

    def dropped(self, reason: str) -> None:
        pass


@dataclass(eq=False)
class _Pending:
    images: Array
    future: asyncio.Future[Array]
    enqueued: float
    deadline: float
    taken: int = 0
    """Images already handed to a batch."""
    forgotten: bool = False
    """Its caller stopped waiting; the images it had not handed over left the queue's count."""
    answered: int = 0
    result: Array | None = field(default=None, repr=False)
    trace: Any = None
    """What the tracer captured at submission (tracing on only)."""

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
        cost: CostModel | None = None,
        max_queue_delay: float = math.inf,
        tracer: BatchTracer | None = None,
        thread_setup: Callable[[], object] | None = None,
    ) -> None:
        """`thread_setup` runs first on the thread that calls the model (its scheduling
        priority, `service.runtime.lower_thread_priority`)."""
        if max_batch_size < 1 or max_queue_images < 1 or max_concurrent_batches < 1:
            raise ValueError("batch size, queue size and concurrency must be positive")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_batch_delay = max_batch_delay
        self.max_queue_images = max_queue_images
        self._merge = merge
        self._retry_after = retry_after_seconds
        self._observer: BatchObserver = observer or NullObserver()
        self.cost = cost or CostModel()
        self.max_queue_delay = max_queue_delay
        self._tracer = tracer
        self._calls: dict[int, tuple[float, int]] = {}
        """Model calls running now: start time and images, by id."""
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_images = 0
        self._typical_request = 1.0
        """Images per request lately (moving average): what `admit(None, ...)` assumes."""
        self._busy_until = 0.0
        """When the last model call ended, if requests were already waiting for the next."""
        self._refusals = 0
        self._refusals_at_last_call = 0
        """Refusals counted, and their count when the last model call ended."""
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrent_batches, thread_name_prefix="model", initializer=thread_setup
        )
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run(), name="batcher")

    async def close(self, give_up_after: float | None = None) -> None:
        """Refuse new work, answer everything already accepted, then stop.

        A model call still running after `give_up_after` seconds (hung) is abandoned: its
        callers and everything still queued get `VersionUnloading`; its thread goes on alone.
        """
        self._closing = True
        self._arrived.set()
        tasks = {t for t in (self._loop_task, *self._running) if t is not None}
        stuck: set[asyncio.Task[None]] = set()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=give_up_after)
        if stuck:
            log.error("a model call is still running after %.1f s; abandoning it", give_up_after)
            for task in stuck:
                task.cancel()
            for pending in self._queue:
                if not pending.future.done():
                    pending.future.set_exception(VersionUnloading("the model stopped"))
            self._queue.clear()
        self._executor.shutdown(wait=not stuck)

    def estimated_wait(self, images: int) -> float:
        """Seconds until `images` queued now would be answered: the running call's rest, then
        the queue ahead, then the images themselves."""
        now = time.monotonic()
        busy = 0.0
        for started, size in self._calls.values():
            expected = self.cost.batched_seconds(size, self.max_batch_size)
            elapsed = now - started
            # Far past its expected time the call has stalled: expect as long again.
            busy = max(busy, expected - elapsed if elapsed < 2 * expected + 0.05 else elapsed)
        queued = self._queued_images + images
        calls = math.ceil(queued / self.max_batch_size) if self._merge else len(self._queue) + 1
        return busy + self.cost.seconds(queued, calls)

    def longest_call(self) -> float:
        """How long the oldest running model call has been running (0 when idle)."""
        if not self._calls:
            return 0.0
        return time.monotonic() - min(started for started, _ in self._calls.values())

    def admit(self, images: int | None, budget: float) -> None:
        """Raise unless `images` can be queued now and answered within `budget` seconds.

        `images` None: not known yet (the body is still unread); as many as requests lately
        carried. Under overload most requests are then refused before their body is parsed,
        which is what keeps the event loop's time for the requests that are accepted.
        """
        if images is None:
            images = max(1, round(self._typical_request))
        if self._closing:
            self._observer.rejected("shutting_down")
            raise VersionUnloading(
                "the model version is being unloaded", {"Retry-After": str(self._retry_after)}
            )
        if self._queued_images + images > self.max_queue_images:
            self._refused("queue_full")
            raise Overloaded(
                f"server overloaded: {self._queued_images} images queued, limit "
                f"{self.max_queue_images}; retry later",
                {"Retry-After": str(self._retry_after)},
            )
        if not self._calls and not self._queued_images:
            # Nothing to wait for, whatever the forecast says; and a forecast gone wrong (a
            # stalled neighbour) would otherwise refuse every request, with no call to learn from.
            return
        wait = self.estimated_wait(images)
        planned = min(budget * PLANNED_SHARE, self.max_queue_delay)
        if wait > planned:
            self._refused("over_budget")
            retry_after = max(self._retry_after, math.ceil(wait - planned))
            limit = (
                f"too late for its {budget * 1000:.0f} ms budget"
                if planned < self.max_queue_delay
                else f"past the {self.max_queue_delay * 1000:.0f} ms of work the queue may hold"
            )
            raise Overloaded(
                f"server overloaded: this request would be answered in about {wait * 1000:.0f} "
                f"ms, {limit}; retry later",
                {"Retry-After": str(retry_after)},
            )

    def _refused(self, reason: str) -> None:
        """Counted twice: for the metrics, and for `_learn`, which must know that refusals ran
        beside the next model call."""
        self._refusals += 1
        self._observer.rejected(reason)

    async def submit(
        self,
        images: Array,
        budget: float,
        abandoned: Callable[[], Awaitable[Any]] | None = None,
    ) -> Array:
        """Queue `images` (N, ...) and return the model's N outputs, or raise a `ServingError`.

        `budget` is the time the request may take, in seconds; `abandoned()`, if given, completes
        when the caller's client has gone away (its images are then dropped).
        """
        count = len(images)
        self._typical_request += 0.1 * (count - self._typical_request)
        self.admit(count, budget)
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        pending = _Pending(images, loop.create_future(), now, now + budget)
        if self._tracer is not None:
            pending.trace = self._tracer.capture()
        self._queue.append(pending)
        self._queued_images += count
        self._observer.accepted()
        self._observer.queue_depth(self._queued_images)
        self._arrived.set()
        watcher: asyncio.Future[Any] | None = None
        timer: asyncio.TimerHandle | None = None

        def expire() -> None:
            if not pending.future.done():
                budget_ms = f"{budget * 1000:.0f}"
                error = DeadlineExceeded(f"request not answered within its {budget_ms} ms budget")
                self._forget(pending, "deadline", error)

        def client_gone(task: asyncio.Future[Any]) -> None:
            if not task.cancelled() and not pending.future.done():
                self._forget(pending, "client_disconnected")

        def watch() -> None:
            """Start listening for the client's disconnect, then wait out the budget's rest."""
            nonlocal watcher, timer
            assert abandoned is not None
            if pending.future.done():  # answered; its caller has not resumed yet
                return
            watcher = asyncio.ensure_future(abandoned())
            watcher.add_done_callback(client_gone)
            timer = loop.call_later(max(0.0, pending.deadline - time.monotonic()), expire)

        # One timer at a time, rather than `asyncio.wait_for` beside a watch timer: most
        # requests are answered within WATCH_AFTER and never start the second.
        if abandoned is not None and budget > WATCH_AFTER:
            timer = loop.call_later(WATCH_AFTER, watch)
        else:
            timer = loop.call_later(budget, expire)
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._forget(pending, "cancelled")
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if watcher is not None:
                watcher.cancel()

    def _forget(
        self, pending: _Pending, reason: str | None, error: ServingError | None = None
    ) -> None:
        """Nobody waits for this request any more (`reason`), or it failed: what it had not
        handed to the model leaves the queue's count at once, and never reaches the model.
        Its caller, if still waiting, gets `error` (by default, the reason's)."""
        if pending.forgotten:
            return
        pending.forgotten = True
        self._queued_images -= pending.size - pending.taken
        self._observer.queue_depth(self._queued_images)
        if reason is not None:
            self._observer.dropped(reason)
        if not pending.future.done():
            if error is None:
                error = (
                    ClientGone("client disconnected")
                    if reason == "client_disconnected"
                    else DeadlineExceeded("request expired in the queue")
                )
            pending.future.set_exception(error)

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
            self._busy_until = 0.0  # idle from here on: the wait is not the model's time
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
            if pending.taken == 0 and pending.deadline <= now and not pending.future.done():
                self._forget(pending, "deadline")
            if pending.forgotten or pending.future.done():
                self._forget(pending, None)  # a split request whose first part failed
                self._queue.popleft()
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

    async def _execute(self, slices: list[_Slice]) -> None:
        try:
            if len(slices) == 1:
                part = slices[0]
                inputs = part.request.images[part.start : part.stop]
            else:
                inputs = np.concatenate([s.request.images[s.start : s.stop] for s in slices])
            started = time.monotonic()
            self._calls[id(slices)] = (started, len(inputs))
            loop = asyncio.get_running_loop()
            try:
                outputs = await loop.run_in_executor(self._executor, self._predict, inputs)
                if len(outputs) != len(inputs):
                    raise RuntimeError(
                        f"model returned {len(outputs)} outputs for {len(inputs)} inputs"
                    )
            except Exception as exc:
                log.exception("model call on a batch of %d images failed", len(inputs))
                self._traced(slices, len(inputs), started, exc)
                failure = InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
                for s in slices:
                    if not s.request.future.done():
                        s.request.future.set_exception(failure)
                return
            ended = time.monotonic()
            seconds = ended - started
            # While requests wait back to back, a batch costs the model call plus the event
            # loop's work between calls (on the same core, decoding the next requests): what
            # admission must plan with is the time from the previous call's end to this one's.
            cycle = ended - self._busy_until if self._busy_until else seconds
            self._learn(len(inputs), max(seconds, cycle))
            self._busy_until = ended if self._queued_images else 0.0
            self._observer.batch_done(len(inputs), len(slices), seconds)
            self._deliver(slices, outputs)
            self._traced(slices, len(inputs), started, None)
        finally:
            self._calls.pop(id(slices), None)
            self._slots.release()

    def _learn(self, size: int, seconds: float) -> None:
        """Learn what a call of `size` images costs, unless the event loop refused requests
        since the last call and the call took longer than forecast.

        Refusing takes the event loop's time on the core the model shares (its thread runs at
        a lower priority), so a call amid refusals takes longer. Learnt, that made the forecast
        longer, which refused more, which made the next calls longer still: 8 clients sending
        32 images each and resending every refusal at once, after a phase of single images had
        taught a higher cost per image, got 3,000 refusals a second and 12-20% of their usual
        throughput for as long as they ran (bench/mix_change.py). So the forecast may always
        fall, but rises only on calls with no refusal around them. The price: under sustained
        overload a model that really slows down is learnt late, and the queue holds more than
        planned (accepted p99 at 5x overload ~0.42 s instead of ~0.32 s, within the budget,
        whose unplanned fifth and the deadline's 504 bound it).
        """
        refused = self._refusals != self._refusals_at_last_call
        self._refusals_at_last_call = self._refusals
        if refused and seconds > self.cost.seconds(size, 1):
            return
        self.cost.observe(size, seconds)

    def _traced(
        self, slices: list[_Slice], size: int, started: float, error: BaseException | None
    ) -> None:
        if self._tracer is not None:
            requests = [(s.request.trace, s.request.enqueued) for s in slices]
            self._tracer.batch(requests, size, started, time.monotonic(), error)

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
