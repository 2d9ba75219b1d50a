"""Image uploads prepared on as many threads as the process has cores, admitted by time.

Decoding and filtering a photo costs tens of milliseconds of CPU before the model sees it, and
none of that was in the batcher's forecast: its queue stays empty while uploads wait for a
thread, so it admitted them all. 64 clients sending 12-megapixel photos got 200s after 13 s
(p50, for a 1 s budget), no refusal, and the server's peak RSS rose by 1 GB (every waiting photo
held its body, every running one its decoded pixels). Here, like the model's queue, the uploads
ahead of a request are turned into a wait (their count times the measured time per upload, over
the threads): a request that would wait past its budget is refused with 503 and `Retry-After`
before its body is read, and one that is admitted waits for a thread no longer than its budget.

An upload whose body is still arriving a budget after it was admitted is on a slow link, and is
not counted ahead of later ones until its body is in: otherwise twenty phones sending photos
over a slow network, each counted at a photo's preparation time, refused every other upload,
the drawing page's 5 ms canvases included, while the threads stood idle.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from service.batcher import PLANNED_SHARE
from service.errors import Overloaded

T = TypeVar("T")

PRIOR_SECONDS = 0.05
"""A photo's preparation before any was measured (12 megapixels: ~0.1 s; a canvas: ~5 ms)."""
LEARNING_RATE = 0.2


def cores() -> int:
    """The cores this process may run on (a pinned or limited server has fewer than the host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(eq=False)
class Upload:
    admitted: float
    """When it was admitted (`time.monotonic()`)."""
    arrived: bool = False

    def body_arrived(self) -> None:
        self.arrived = True


class Preparation:
    def __init__(self, threads: int, on_refused: Callable[[], None]) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="prepare-upload")
        self._slots: asyncio.Semaphore | None = None
        self._uploads: set[Upload] = set()
        self._seconds = PRIOR_SECONDS
        self._on_refused = on_refused

    def ahead(self, window: float = math.inf) -> int:
        """Uploads admitted and not yet prepared, less those whose bodies are still arriving
        more than `window` seconds after they were admitted."""
        since = time.monotonic() - window
        return sum(1 for upload in self._uploads if upload.arrived or upload.admitted >= since)

    def estimated_wait(self, ahead: int | None = None) -> float:
        """Until a request admitted now would be prepared: the uploads ahead (by default all
        admitted and not yet prepared), then its own."""
        if ahead is None:
            ahead = self.ahead()
        return (ahead + 1) * self._seconds / self.threads

    @contextmanager
    def admitted(self, budget: float) -> Iterator[Upload]:
        """Refuse now, before the body is read, if the uploads ahead would take past the share
        of `budget` the batcher also plans with (the rest is the model's); otherwise count this
        request as ahead of the next ones until it is prepared. The caller says when its body
        has arrived (`Upload.body_arrived`)."""
        ahead = self.ahead(window=budget)
        wait = self.estimated_wait(ahead)
        if ahead and wait > budget * PLANNED_SHARE:
            self._on_refused()
            raise Overloaded(
                f"server overloaded: {ahead} uploads are ahead of this one, about "
                f"{wait * 1000:.0f} ms of image preparation, too late for its "
                f"{budget * 1000:.0f} ms budget; retry later",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        upload = Upload(time.monotonic())
        self._uploads.add(upload)
        try:
            yield upload
        finally:
            self._uploads.discard(upload)

    async def run(self, work: Callable[[], T], deadline: float) -> T:
        """`work` on a preparation thread once one is free, unless none is by `deadline` (a
        `time.monotonic()` time)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._slots.acquire()
        except TimeoutError:
            self._on_refused()
            raise Overloaded(
                "server overloaded: no thread was free to prepare this upload within its "
                "budget; retry later",
                {"Retry-After": str(max(1, math.ceil(self.estimated_wait())))},
            ) from None
        try:
            started = time.perf_counter()
            result = await asyncio.get_running_loop().run_in_executor(self._pool, work)
            spent = time.perf_counter() - started
            self._seconds += LEARNING_RATE * (spent - self._seconds)
            return result
        finally:
            self._slots.release()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
