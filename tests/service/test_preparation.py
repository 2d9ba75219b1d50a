"""Image uploads admitted by the time their preparation would take, with real threads."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from service.errors import Overloaded
from service.preparation import Preparation


def test_uploads_past_the_budget_are_refused_before_their_body_is_read() -> None:
    refused: list[int] = []
    preparation = Preparation(2, on_refused=lambda: refused.append(1))
    alone = preparation.estimated_wait()

    async def learn() -> None:
        for _ in range(5):
            await preparation.run(lambda: time.sleep(0.1), deadline=time.monotonic() + 5)

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
        assert "4 uploads are ahead" in too_late.value.message
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
        busy = asyncio.ensure_future(
            preparation.run(lambda: time.sleep(0.5), deadline=time.monotonic() + 5)
        )
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(Overloaded, match="no thread was free"):
            await preparation.run(lambda: None, deadline=time.monotonic() + 0.1)
        assert time.monotonic() - started < 0.4  # refused at its deadline, not after the work
        assert refused == [1]
        await busy
        assert await preparation.run(lambda: 7, deadline=time.monotonic() + 0.1) == 7

    asyncio.run(scenario())
    preparation.close()


def test_uploads_whose_bodies_are_slow_to_arrive_do_not_hold_off_the_others() -> None:
    """Phones sending photos over a slow network: counted ahead while their bodies could still
    arrive within a newcomer's budget, and again once they have arrived."""
    refused: list[int] = []
    preparation = Preparation(1, on_refused=lambda: refused.append(1))
    budget = 0.3  # with the prior 50 ms per upload, room for three ahead (4 x 50 <= 0.8 x 300)
    with contextlib.ExitStack() as slow:
        uploads = [slow.enter_context(preparation.admitted(budget=10.0)) for _ in range(20)]
        with pytest.raises(Overloaded, match="20 uploads are ahead"):
            slow.enter_context(preparation.admitted(budget))
        time.sleep(budget)  # a budget later, no body in yet: slow links
        with preparation.admitted(budget):
            pass
        for upload in uploads[:3]:
            upload.body_arrived()
        with preparation.admitted(budget):  # three ahead
            pass
        uploads[3].body_arrived()
        with pytest.raises(Overloaded, match="4 uploads are ahead"):
            slow.enter_context(preparation.admitted(budget))
    assert refused == [1, 1]
    preparation.close()
