"""The metrics' render budget. (What they count, on a real server: tests/service/test_server.py.)"""

from __future__ import annotations

from service.metrics import ScrapeBudget


def test_scrapes_past_the_budget_get_the_last_render_until_the_second_ends() -> None:
    now = [100.0]
    renders: list[float] = []

    def render() -> tuple[bytes, str]:
        renders.append(now[0])
        return str(len(renders)).encode(), "text/plain"

    budget = ScrapeBudget(render, per_second=3, clock=lambda: now[0])
    assert [budget.body()[0] for _ in range(5)] == [b"1", b"2", b"3", b"3", b"3"]
    now[0] += 0.9
    assert budget.body()[0] == b"3"
    now[0] += 0.1  # a second after the window's first render
    assert [budget.body()[0] for _ in range(2)] == [b"4", b"5"]
    assert len(renders) == 5
