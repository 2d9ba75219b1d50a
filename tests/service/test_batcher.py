"""The dynamic batcher with fake models: fast, exact, no TensorFlow."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from service.batcher import WATCH_AFTER, DynamicBatcher, NullObserver
from service.cost import CostModel
from service.errors import (
    ClientGone,
    DeadlineExceeded,
    InferenceFailed,
    Overloaded,
    VersionUnloading,
)
from service.runtime import lower_thread_priority

Array = npt.NDArray[np.float32]


class RecordingModel:
    """Doubles its input and records the size of every call; can be made slow or failing."""

    def __init__(self, delay: float = 0.0, fail_when: Callable[[Array], bool] | None = None):
        self.delay = delay
        self.fail_when = fail_when
        self.calls: list[int] = []
        self.seen: list[float] = []
        self.release = threading.Event()
        self.release.set()

    def __call__(self, batch: Array) -> Array:
        self.release.wait(10)
        self.calls.append(len(batch))
        self.seen.extend(batch[:, 0].tolist())
        if self.delay:
            time.sleep(self.delay)
        if self.fail_when is not None and self.fail_when(batch):
            raise RuntimeError("model exploded")
        return batch * 2


def images(*values: float) -> Array:
    return np.array([[v] for v in values], dtype=np.float32)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_concurrent_requests_merge_into_batches_and_get_their_own_answers() -> None:
    model = RecordingModel(delay=0.01)

    async def scenario() -> list[Array]:
        batcher = DynamicBatcher(model, max_batch_size=8, max_batch_delay=0.005)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(images(float(i)), 5) for i in range(40)))
        await batcher.close()
        return list(results)

    results = run(scenario())
    assert [r[0, 0] for r in results] == [2.0 * i for i in range(40)]  # type: ignore[index]
    assert sum(model.calls) == 40
    assert max(model.calls) <= 8
    assert len(model.calls) < 40, "requests were not merged"


def test_batches_never_exceed_the_maximum_and_large_requests_are_split() -> None:
    model = RecordingModel()

    async def scenario() -> Array:
        batcher = DynamicBatcher(model, max_batch_size=4, max_batch_delay=0.001)
        batcher.start()
        big, small = await asyncio.gather(
            batcher.submit(images(*range(10)), 5), batcher.submit(images(100, 101), 5)
        )
        await batcher.close()
        assert small.tolist() == [[200.0], [202.0]]
        return big

    big = run(scenario())
    assert big.ravel().tolist() == [2.0 * i for i in range(10)]  # type: ignore[union-attr]
    assert max(model.calls) <= 4
    assert sum(model.calls) == 12


def test_a_lone_request_is_flushed_after_the_delay() -> None:
    model = RecordingModel()

    async def scenario() -> float:
        batcher = DynamicBatcher(model, max_batch_size=64, max_batch_delay=0.05)
        batcher.start()
        started = time.monotonic()
        await batcher.submit(images(1), 5)
        elapsed = time.monotonic() - started
        await batcher.close()
        return elapsed

    elapsed = run(scenario())
    assert 0.04 <= elapsed < 1.0  # type: ignore[operator]
    assert model.calls == [1]


def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    model = RecordingModel()

    async def scenario() -> float:
        batcher = DynamicBatcher(model, max_batch_size=4, max_batch_delay=5.0)
        batcher.start()
        started = time.monotonic()
        await asyncio.gather(*(batcher.submit(images(i), 10) for i in range(4)))
        elapsed = time.monotonic() - started
        await batcher.close()
        return elapsed

    assert run(scenario()) < 1.0  # type: ignore[operator]
    assert model.calls == [4]


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    model = RecordingModel()
    model.release.clear()  # the model hangs until released

    async def scenario() -> None:
        batcher = DynamicBatcher(
            model, max_batch_size=2, max_batch_delay=0, max_queue_images=4, retry_after_seconds=3
        )
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(images(1, 2), 5))
        await asyncio.sleep(0.05)  # taken by the (stuck) model: the queue is empty again
        queued = [asyncio.ensure_future(batcher.submit(images(i, i), 5)) for i in range(2)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(images(9), 5)
        assert time.monotonic() - started < 0.05
        assert refused.value.headers["Retry-After"] == "3"
        model.release.set()
        await asyncio.gather(first, *queued)
        await batcher.close()

    run(scenario())


def test_expired_requests_are_dropped_before_the_model() -> None:
    model = RecordingModel()
    model.release.clear()

    async def scenario() -> None:
        batcher = DynamicBatcher(model, max_batch_size=1, max_batch_delay=0)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(images(1), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(images(666), 0.1)
        model.release.set()
        await blocker
        await batcher.close()

    run(scenario())
    assert 666.0 not in model.seen
    assert model.calls == [1]


def test_a_failing_batch_fails_only_its_requests_and_the_batcher_goes_on() -> None:
    model = RecordingModel(fail_when=lambda batch: bool((batch == 13).any()))

    async def scenario() -> None:
        batcher = DynamicBatcher(model, max_batch_size=2, max_batch_delay=0.02)
        batcher.start()
        bad, neighbour = await asyncio.gather(
            batcher.submit(images(13), 5), batcher.submit(images(1), 5), return_exceptions=True
        )
        assert isinstance(bad, InferenceFailed)
        assert "model exploded" in bad.message
        assert isinstance(neighbour, InferenceFailed)  # same batch, same fate
        later = await batcher.submit(images(7), 5)
        assert later.tolist() == [[14.0]]
        await batcher.close()

    run(scenario())


def test_merge_off_runs_each_request_alone_even_when_large() -> None:
    model = RecordingModel(delay=0.005)

    async def scenario() -> None:
        batcher = DynamicBatcher(model, max_batch_size=4, merge=False)
        batcher.start()
        await asyncio.gather(*(batcher.submit(images(*range(6)), 5) for _ in range(5)))
        await batcher.close()

    run(scenario())
    assert model.calls == [6] * 5


def test_close_answers_everything_queued_then_refuses() -> None:
    model = RecordingModel(delay=0.01)

    async def scenario() -> None:
        batcher = DynamicBatcher(model, max_batch_size=2, max_batch_delay=0.01)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(images(i), 5)) for i in range(7)]
        await asyncio.sleep(0)
        await batcher.close()
        assert [p.result()[0, 0] for p in pending] == [2.0 * i for i in range(7)]
        with pytest.raises(VersionUnloading):
            await batcher.submit(images(1), 5)

    run(scenario())


class CountingObserver(NullObserver):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.depth = 0

    def accepted(self) -> None:
        self.counts["accepted"] = self.counts.get("accepted", 0) + 1

    def rejected(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def dropped(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    def queue_depth(self, images: int) -> None:
        self.depth = images


def test_cost_model_fits_a_fixed_and_a_per_image_cost() -> None:
    cost = CostModel([(n, 0.0005 + 0.0001 * n) for n in (1, 2, 4, 8, 16, 32, 64)])
    per_call, per_image = cost.coefficients()
    assert per_call == pytest.approx(0.0005, rel=1e-6)
    assert per_image == pytest.approx(0.0001, rel=1e-6)
    assert cost.batched_seconds(100, 64) == pytest.approx(2 * 0.0005 + 100 * 0.0001)
    steady = CostModel([(64, 0.0064)] * 10)  # one size only: the mean cost per image
    assert steady.batched_seconds(128, 64) == pytest.approx(0.0128)


def test_a_request_that_cannot_be_answered_within_its_budget_is_refused_at_once() -> None:
    model = RecordingModel(delay=0.02)  # 20 ms per call, whatever its size
    observer = CountingObserver()

    async def scenario() -> None:
        batcher = DynamicBatcher(
            model,
            max_batch_size=1,
            max_batch_delay=0,
            observer=observer,
            cost=CostModel([(1, 0.02), (2, 0.02)]),
        )
        batcher.start()
        queued = [asyncio.ensure_future(batcher.submit(images(i), 5)) for i in range(10)]
        await asyncio.sleep(0)
        assert batcher.estimated_wait(1) == pytest.approx(0.22, abs=0.03)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(images(99), 0.1)
        assert time.monotonic() - started < 0.05  # at once, not at its 0.1 s deadline
        assert "budget" in refused.value.message
        assert refused.value.headers["Retry-After"] == "1"
        with pytest.raises(Overloaded):
            batcher.admit(1, 0.1)  # the same decision, before any body is read
        answered = await batcher.submit(images(7), 2)  # a larger budget is admitted
        assert answered.tolist() == [[14.0]]
        await asyncio.gather(*queued)
        await batcher.close()

    run(scenario())
    assert 99.0 not in model.seen
    assert observer.counts == {"accepted": 11, "over_budget": 2}


def test_time_the_batcher_sat_idle_is_not_learnt_as_model_time() -> None:
    """A request whose client left stays in the queue until the batcher reaches it. A call that
    ended with only such requests waiting must not make the next call, long after, look as slow
    as the gap: that once taught admission that a 32-image call took seconds, after which it
    refused every request."""
    model = RecordingModel()
    model.release.clear()

    async def scenario() -> None:
        batcher = DynamicBatcher(
            model, max_batch_size=1, max_batch_delay=0, cost=CostModel([(1, 0.001)])
        )
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(images(1), 5))
        await asyncio.sleep(0.01)  # taken by the held model
        gone = asyncio.ensure_future(batcher.submit(images(2), 5))
        await asyncio.sleep(0)
        gone.cancel()  # its client left: forgotten, still queued
        model.release.set()
        await running
        await asyncio.sleep(0.5)  # nothing to do
        await batcher.submit(images(3), 5)
        assert batcher.cost.seconds(1, 1) < 0.1  # the calls took ~0-10 ms; the gap 500 ms
        await batcher.close()

    run(scenario())
    assert model.seen == [1.0, 3.0]


@pytest.mark.parametrize("refused_meanwhile", [False, True])
def test_a_slow_call_amid_refusals_does_not_raise_the_forecast(refused_meanwhile: bool) -> None:
    """Refusing takes the event loop's time on the core the model shares, so calls amid
    refusals run longer. Learning that as model time made the forecast refuse more, which made
    calls longer still: 8 clients resending refused requests at once were refused for seconds
    (bench/mix_change.py). A slow call is learnt only when nothing was refused around it."""
    model = RecordingModel()

    async def scenario() -> float:
        batcher = DynamicBatcher(
            model, max_batch_size=1, max_batch_delay=0, cost=CostModel([(1, 0.001)])
        )
        batcher.start()
        await batcher.submit(images(0), 5)
        model.release.clear()
        slow = asyncio.ensure_future(batcher.submit(images(1), 5))
        await asyncio.sleep(0.01)  # its call has started
        if refused_meanwhile:
            with pytest.raises(Overloaded):
                batcher.admit(1, 0.0001)  # too late for a 0.1 ms budget
        await asyncio.sleep(0.2)
        model.release.set()
        await slow
        learnt = batcher.cost.seconds(1, 1)
        await batcher.close()
        return learnt

    learnt = run(scenario())
    if refused_meanwhile:
        assert learnt < 0.005  # the 200 ms call was not learnt
    else:
        assert learnt > 0.05  # it was


def test_an_idle_batcher_admits_whatever_its_forecast_says() -> None:
    """Admission refuses on a forecast learnt from the calls it lets through. With nothing queued
    or running there is nothing to wait for, so it admits: otherwise one bad forecast refuses
    every request and, with no call left to learn from, goes on refusing them forever."""
    model = RecordingModel()

    async def scenario() -> None:
        batcher = DynamicBatcher(
            model,
            max_batch_size=1,
            max_batch_delay=0,
            cost=CostModel([(1, 30.0)]),  # 30 s per image, as a stalled neighbour might teach it
            max_queue_delay=0.25,
        )
        batcher.start()
        model.release.clear()
        held = asyncio.ensure_future(batcher.submit(images(1), 5))  # idle: admitted
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):  # a call is running: the forecast decides
            await batcher.submit(images(-1), 5)
        model.release.set()
        assert (await held).tolist() == [[2.0]]
        for i in range(300):  # one at a time, each admitted: the forecast relearns
            await batcher.submit(images(i), 5)
        assert batcher.estimated_wait(1) < 0.01
        await batcher.close()

    run(scenario())
    assert -1.0 not in model.seen


def test_a_request_whose_client_left_never_reaches_the_model() -> None:
    model = RecordingModel()
    model.release.clear()
    observer = CountingObserver()

    async def scenario() -> None:
        batcher = DynamicBatcher(model, max_batch_size=1, max_batch_delay=0, observer=observer)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(images(1), 5))
        await asyncio.sleep(0.01)
        client_left = asyncio.Event()
        abandoned = asyncio.ensure_future(
            batcher.submit(images(666, 667), 5, abandoned=client_left.wait)
        )
        await asyncio.sleep(0.01)
        assert observer.depth == 2
        client_left.set()
        with pytest.raises(ClientGone):
            await abandoned
        assert observer.depth == 0  # the queue's count drops at once, not when reached
        model.release.set()
        await blocker
        await batcher.close()

    run(scenario())
    assert 666.0 not in model.seen
    assert observer.counts == {"accepted": 2, "client_disconnected": 1}


def test_a_request_listening_for_its_client_still_gets_its_504_at_the_deadline() -> None:
    """Past WATCH_AFTER the request's one timer becomes the disconnect listener's; the deadline
    must still come after it, and count once."""
    model = RecordingModel()
    model.release.clear()  # hangs until released
    observer = CountingObserver()

    async def scenario() -> None:
        batcher = DynamicBatcher(model, max_batch_size=1, max_batch_delay=0, observer=observer)
        batcher.start()
        client_stays = asyncio.Event()
        budget = WATCH_AFTER + 0.1
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="within its 150 ms budget"):
            await batcher.submit(images(1), budget, abandoned=client_stays.wait)
        assert budget <= time.monotonic() - started < budget + 0.1
        model.release.set()
        await batcher.close()

    run(scenario())
    assert observer.counts == {"accepted": 1, "deadline": 1}


def test_a_hung_model_call_bounds_waits_refusals_and_close() -> None:
    model = RecordingModel()
    model.release.clear()  # hangs until released

    async def scenario() -> None:
        batcher = DynamicBatcher(
            model, max_batch_size=1, max_batch_delay=0, cost=CostModel([(1, 0.001), (2, 0.002)])
        )
        batcher.start()
        hung = asyncio.ensure_future(batcher.submit(images(1), 0.3))
        await asyncio.sleep(0.1)
        assert batcher.longest_call() >= 0.1
        started = time.monotonic()
        with pytest.raises(Overloaded):  # far past its expected 1 ms: counted as stalled
            await batcher.submit(images(2), 0.04)
        assert time.monotonic() - started < 0.03  # at once, not at its 0.04 s deadline
        with pytest.raises(DeadlineExceeded):
            await hung  # its caller still gets an answer at its deadline
        queued = asyncio.ensure_future(batcher.submit(images(3), 5))
        await asyncio.sleep(0)
        started = time.monotonic()
        await batcher.close(give_up_after=0.1)
        assert time.monotonic() - started < 1
        with pytest.raises(VersionUnloading):
            await queued
        model.release.set()

    run(scenario())


def test_the_model_runs_on_a_thread_scheduled_below_the_event_loop() -> None:
    """TensorFlow Lite computes on the batcher's own thread: niced, it yields the core to the
    event loop whenever a request arrives."""
    niceness: list[int] = []

    def model(batch: Array) -> Array:
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return batch

    async def scenario() -> None:
        batcher = DynamicBatcher(model, thread_setup=functools.partial(lower_thread_priority, 5))
        batcher.start()
        await batcher.submit(images(1.0), 5.0)
        await batcher.close()

    loop_niceness = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    run(scenario())
    assert niceness == [min(loop_niceness + 5, 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_niceness
