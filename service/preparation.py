"""Image uploads prepared on as many threads as the process has cores, admitted by time.

Decoding and filtering a photo costs tens of milliseconds of CPU before the model sees it, and
none of that was in the batcher's forecast: its queue stays empty while uploads wait for a
thread, so it admitted them all. 64 clients sending 12-megapixel photos got 200s after 13 s
(p50, for a 1 s budget), no refusal, and the server's peak RSS rose by 1 GB (every waiting photo
held its body, every running one its decoded pixels). Here, like the model's queue, the images
ahead of a request are turned into a wait (their count times the measured time per image, over
the threads): a request that would wait past its budget is refused with 503 and `Retry-After`,
and one that is admitted waits for a thread no longer than its budget.

The wait is counted in images, not uploads, and a request's images are spread over every
thread. Counted in uploads, with the time per upload learnt, 12-photo requests taught the
forecast that a single photo takes 12 photos' time, and a 12-photo request admitted behind
another waited for its thread, was prepared, and ended in a 504: two clients sending 12 photos
per request beside four sending one (`bench/upload_flood.py --batch-clients 2`, one core) had 4
and 8 such requests in 30 s, 48 and 96 photos prepared for nothing; none now.

A request is admitted twice: before its body is read, as if it held one image (the least any
request holds, so no request that would fit is refused on a guess), and once the body is read
and its images counted, before any is decoded.

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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from service.batcher import PLANNED_SHARE
from service.errors import ClientGone, DeadlineExceeded, Overloaded
from service.metrics import CLIENT_DISCONNECTED, DEADLINE

T = TypeVar("T")
X = TypeVar("X")

PRIOR_SECONDS = 0.05
"""An image's preparation before any was measured (12 megapixels: ~0.1 s; a canvas: ~5 ms)."""
LEARNING_RATE = 0.2


def cores() -> int:
    """The cores this process may run on (a pinned or limited server has fewer than the host)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _NoThreadInTime(Exception):
    pass


@dataclass(eq=False)
class Upload:
    admitted: float
    """When it was admitted (`time.monotonic()`)."""
    images: int | None = None
    """How many images its body holds; None while not known (a multipart body not yet read)."""
    arrived: bool = False


class Preparation:
    def __init__(
        self,
        threads: int,
        on_refused: Callable[[], None],
        on_dropped: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="prepare-upload")
        self._slots: asyncio.Semaphore | None = None
        self._uploads: set[Upload] = set()
        self._seconds = PRIOR_SECONDS
        self._typical_images = 1.0
        self._on_refused = on_refused
        self._on_dropped = on_dropped

    def images_ahead(self, window: float = math.inf, besides: Upload | None = None) -> float:
        """Images of the uploads admitted and not yet prepared (as many as uploads lately held
        while a body is still arriving), less the uploads whose bodies are still arriving more
        than `window` seconds after they were admitted."""
        since = time.monotonic() - window
        return sum(
            self._typical_images if upload.images is None else upload.images
            for upload in self._uploads
            if upload is not besides and (upload.arrived or upload.admitted >= since)
        )

    def estimated_wait(self, images: int = 1, ahead: float | None = None) -> float:
        """Until `images` admitted now would be prepared: the images ahead (by default those of
        every upload admitted and not yet prepared), then its own, over every thread."""
        if ahead is None:
            ahead = self.images_ahead()
        return (ahead + images) * self._seconds / self.threads

    @contextmanager
    def admitted(self, budget: float, images: int | None = None) -> Iterator[Upload]:
        """Refuse now, before the body is read, if the images ahead would take past the share
        of `budget` the batcher also plans with (the rest is the model's); otherwise count this
        request as ahead of the next ones until it is prepared. `images`: how many the body
        holds, if known before it is read (one image as the whole body). The caller says when
        the body has arrived (`body_arrived`)."""
        self._refuse_if_late(budget, images or 1, self.images_ahead(window=budget))
        upload = Upload(time.monotonic(), images)
        self._uploads.add(upload)
        try:
            yield upload
        finally:
            self._uploads.discard(upload)

    def body_arrived(self, upload: Upload, images: int, budget: float) -> None:
        """The body is read and holds `images`: refuse now, before any is decoded, if they
        would be prepared too late behind the uploads ahead."""
        self._typical_images += LEARNING_RATE * (images - self._typical_images)
        self._refuse_if_late(budget, images, self.images_ahead(window=budget, besides=upload))
        upload.images, upload.arrived = images, True

    def _refuse_if_late(self, budget: float, images: int, ahead: float) -> None:
        wait = self.estimated_wait(images, ahead)
        if ahead and wait > budget * PLANNED_SHARE:
            self._on_refused()
            raise Overloaded(
                f"server overloaded: {ahead:.0f} images are ahead of this upload's {images}, "
                f"about {wait * 1000:.0f} ms of image preparation, too late for its "
                f"{budget * 1000:.0f} ms budget; retry later",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )

    async def run(
        self,
        work: Callable[[X], T],
        items: Sequence[X],
        deadline: float,
        abandoned: Callable[[], Awaitable[object]] | None = None,
    ) -> list[T]:
        """`work(item)` for every item, each on a preparation thread once one is free, unless
        one is not by `deadline` (a `time.monotonic()` time); the first item's error if several
        fail. Items of one request run side by side, so its preparation takes the time of its
        share of the threads, not of them all in a row. `abandoned()`, if given, completes when
        the caller's client has gone: its items that have not started never will. `on_dropped`
        counts such a request, and one whose own items took past the deadline."""
        planned = deadline - time.monotonic()
        tasks = [asyncio.ensure_future(self._run_one(work, item, deadline)) for item in items]
        watcher = None if abandoned is None else asyncio.ensure_future(abandoned())
        try:
            results = []
            for task in tasks:
                if watcher is not None:
                    await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
                    if not task.done():
                        self._on_dropped(CLIENT_DISCONNECTED)
                        raise ClientGone("client disconnected while its images were prepared")
                results.append(await task)
            return results
        except _NoThreadInTime:
            alone = len(items) * self._seconds / self.threads
            if alone > planned:  # its own images, not others', took its budget: so would a retry
                self._on_dropped(DEADLINE)
                raise DeadlineExceeded(
                    f"preparing this upload's {len(items)} images takes about "
                    f"{alone * 1000:.0f} ms on this server ({self._seconds * 1000:.0f} ms each "
                    f"on {self.threads} threads), past its {planned * 1000:.0f} ms share of the "
                    "budget; send fewer images per request"
                ) from None
            self._on_refused()  # once for the request, however many of its images waited
            raise Overloaded(
                "server overloaded: no thread was free to prepare this upload's images within "
                "its budget; retry later",
                {"Retry-After": str(max(1, math.ceil(self.estimated_wait())))},
            ) from None
        finally:
            if watcher is not None:
                watcher.cancel()
            for task in tasks:
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # the first error is the answer; the others are seen

    async def _run_one(self, work: Callable[[X], T], item: X, deadline: float) -> T:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.threads)
        slots = self._slots
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await slots.acquire()
        except TimeoutError:
            raise _NoThreadInTime from None

        def timed() -> tuple[T, float]:
            started = time.perf_counter()
            return work(item), time.perf_counter() - started

        def done(future: asyncio.Future[tuple[T, float]]) -> None:
            slots.release()
            if not future.cancelled() and future.exception() is None:
                self._seconds += LEARNING_RATE * (future.result()[1] - self._seconds)

        running = asyncio.get_running_loop().run_in_executor(self._pool, timed)
        running.add_done_callback(done)
        # The thread is released when its work is done, not when the request stops waiting for
        # it (another of its images failed, or its client left): until then it is not free.
        result, _ = await asyncio.shield(running)
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
