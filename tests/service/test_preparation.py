"""Image uploads admitted by the time their preparation would take, with real threads."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from service.errors import ClientGone, DeadlineExceeded, Overloaded
from service.preparation import Preparation


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_uploads_past_the_budget_are_refused_before_their_body_is_read() -> None:
    refused: list[int] = []
    preparation = Preparation(2, on_refused=lambda: refused.append(1))
    alone = preparation.estimated_wait()

    async def learn() -> None:
        for _ in range(5):
            await preparation.run(nap, [0.1], deadline=time.monotonic() + 5)

    asyncio.run(learn())
    one = preparation.estimated_wait()
    assert one > 1.4 * alone  # the uploads were measured slower than first assumed
    with contextlib.ExitStack() as ahead:
        for _ in range(4):
            ahead.enter_context(preparation.admitted(budget=10.0))
        wait = preparation.estimated_wait()
        assert wait == pytest.approx(5 * one)  # four ahead of it, then itself
        with pytest.raises(Overloaded) as too_late, preparation.admitted(budget=wait / 0.8 * 0.9):
            pass
        assert "4 images are ahead" in too_late.value.message
        assert int(too_late.value.headers["Retry-After"]) >= 1
        assert refused == [1]
        with preparation.admitted(budget=wait / 0.8 * 1.1):
            pass
    with preparation.admitted(budget=wait / 0.8 * 0.9):  # those four are done: nothing ahead
        pass
    assert refused == [1]
    preparation.close()


def test_an_admitted_upload_waits_for_a_thread_only_until_its_deadline() -> None:
    refused: list[int] = []
    preparation = Preparation(1, on_refused=lambda: refused.append(1))

    async def scenario() -> None:
        busy = asyncio.ensure_future(preparation.run(nap, [0.5], deadline=time.monotonic() + 5))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(Overloaded, match="no thread was free"):
            await preparation.run(nap, [0.0, 0.0, 0.0], deadline=time.monotonic() + 0.2)
        assert time.monotonic() - started < 0.4  # refused at its deadline, not after the work
        assert refused == [1]  # one request refused, once, whatever its image count
        await busy
        assert await preparation.run(str, [7], deadline=time.monotonic() + 0.1) == ["7"]

    asyncio.run(scenario())
    preparation.close()


def test_uploads_whose_bodies_are_slow_to_arrive_do_not_hold_off_the_others() -> None:
    """Phones sending photos over a slow network: counted ahead while their bodies could still
    arrive within a newcomer's budget, and again once they have arrived."""
    refused: list[int] = []
    preparation = Preparation(1, on_refused=lambda: refused.append(1))
    budget = 0.3  # with the prior 50 ms per upload, room for three ahead (4 x 50 <= 0.8 x 300)
    with contextlib.ExitStack() as slow:
        # Raw image bodies (one image, known before the body) and multipart ones (not known).
        uploads = [
            slow.enter_context(preparation.admitted(budget=10.0, images=(1, None)[index % 2]))
            for index in range(20)
        ]
        with pytest.raises(Overloaded, match="20 images are ahead"):
            slow.enter_context(preparation.admitted(budget))
        time.sleep(budget)  # a budget later, no body in yet: slow links
        with preparation.admitted(budget):
            pass
        for upload in uploads[:3]:
            preparation.body_arrived(upload, images=1, budget=10.0)
        with preparation.admitted(budget):  # three ahead
            pass
        preparation.body_arrived(uploads[3], images=1, budget=10.0)
        with pytest.raises(Overloaded, match="4 images are ahead"):
            slow.enter_context(preparation.admitted(budget))
    assert refused == [1, 1]
    preparation.close()


def test_the_wait_is_counted_in_images_and_a_body_is_counted_once_read() -> None:
    """A 12-photo upload ahead is 12 photos of work; counted as one upload, the singles behind
    it were admitted into a wait past their budget, or refused after 12-photo requests had
    taught the forecast that an upload takes 12 photos' time."""
    refused: list[int] = []
    preparation = Preparation(1, on_refused=lambda: refused.append(1))
    per_image = preparation.estimated_wait(images=1, ahead=0)
    room = 6 * per_image / 0.8  # a budget with room for six images in its planned share
    with preparation.admitted(budget=10.0) as big:
        with preparation.admitted(room):  # its count not yet known: one image ahead
            pass
        preparation.body_arrived(big, images=12, budget=10.0)
        late = pytest.raises(Overloaded, match="12 images are ahead of this upload's 1")
        with late, preparation.admitted(room):
            pass
    assert refused == [1]
    with preparation.admitted(room) as upload:  # nothing ahead: admitted, then its count known
        preparation.body_arrived(upload, images=12, budget=room)  # its own alone: never refused
        ahead = pytest.raises(Overloaded, match="12 images are ahead of this upload's 2")
        with preparation.admitted(10.0) as behind, ahead:
            preparation.body_arrived(behind, images=2, budget=room)
    assert refused == [1, 1]
    preparation.close()


def test_one_uploads_images_are_prepared_side_by_side_and_learnt_one_by_one() -> None:
    preparation = Preparation(2, on_refused=lambda: None)

    async def prepare() -> list[str]:
        def where(item: int) -> str:
            time.sleep(0.1)
            return f"{item}:{threading.current_thread().name}"

        return await preparation.run(where, range(6), deadline=time.monotonic() + 5)

    prepared = asyncio.run(prepare())
    assert [int(answer.split(":")[0]) for answer in prepared] == list(range(6))  # in order
    assert len({answer.split(":")[1] for answer in prepared}) == 2  # on both threads
    # Learnt per image (~0.1 s each, from a prior of 0.05), not per upload (0.3 s a thread).
    assert 0.07 < preparation.estimated_wait(images=2, ahead=0) < 0.12
    preparation.close()


def test_a_failed_image_fails_its_upload_and_its_threads_stay_busy_until_done() -> None:
    """The first image's error is the answer's; the other images' threads are not free again
    until their work is, so the next upload does not count on them early."""
    preparation = Preparation(2, on_refused=lambda: None)

    naps = {"slow": 0.5, "bad 1": 0.15}

    def prepare(item: str) -> str:
        time.sleep(naps.get(item, 0.05))
        if item.startswith("bad"):
            raise ValueError(item)
        return item

    async def scenario() -> None:
        started = time.monotonic()
        with pytest.raises(ValueError, match="bad 1"):  # "bad 2" failed first
            await preparation.run(prepare, ["bad 1", "bad 2", "slow"], time.monotonic() + 5)
        assert time.monotonic() - started < 0.4  # not kept waiting for the slow image
        # One thread is still on "slow": this upload's second image finds none free in time.
        with pytest.raises(Overloaded, match="no thread was free"):
            await preparation.run(prepare, ["slow", "b"], deadline=time.monotonic() + 0.3)
        await asyncio.sleep(0.8)  # both slow images are done: both threads are free
        assert await preparation.run(prepare, ["a", "b"], time.monotonic() + 0.2) == ["a", "b"]

    asyncio.run(scenario())
    preparation.close()


def test_the_images_of_an_upload_whose_client_left_are_not_prepared() -> None:
    dropped: list[str] = []
    preparation = Preparation(1, on_refused=lambda: None, on_dropped=dropped.append)
    started: list[float] = []

    def prepare(seconds: float) -> float:
        started.append(seconds)
        return nap(seconds)

    async def scenario() -> None:
        left = asyncio.Event()
        asyncio.get_running_loop().call_later(0.15, left.set)
        begun = time.monotonic()
        with pytest.raises(ClientGone):
            await preparation.run(prepare, [0.1] * 8, time.monotonic() + 5, abandoned=left.wait)
        assert time.monotonic() - begun < 0.3  # answered when the client left
        await asyncio.sleep(0.3)
        assert len(started) == 2  # the one running then finished; the other six never began
        assert dropped == ["client_disconnected"]
        # A client that stays gets every image, in order.
        assert await preparation.run(
            str, [1, 2, 3], time.monotonic() + 5, abandoned=asyncio.Event().wait
        ) == ["1", "2", "3"]

    asyncio.run(scenario())
    preparation.close()


def test_an_upload_too_big_for_its_budget_on_its_own_is_told_so_not_to_retry() -> None:
    """Its own images, not others', take past the budget: a 503 with `Retry-After` would have
    the client send it again, to the same end."""
    refused: list[int] = []
    dropped: list[str] = []
    preparation = Preparation(1, on_refused=lambda: refused.append(1), on_dropped=dropped.append)

    async def scenario() -> None:
        with pytest.raises(DeadlineExceeded, match="send fewer images per request"):
            await preparation.run(nap, [0.1] * 6, deadline=time.monotonic() + 0.25)

    asyncio.run(scenario())
    assert dropped == ["deadline"]
    assert refused == []
    preparation.close()
