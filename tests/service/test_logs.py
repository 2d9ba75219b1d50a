"""The log handler: lines batched into few writes, none lost or reordered, none held long."""

from __future__ import annotations

import io
import logging
import time

from service.logs import FLUSH_SECONDS, BufferedStreamHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def logger_writing_to(stream: io.StringIO, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.handlers[:] = [BufferedStreamHandler(stream)]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def test_info_lines_arrive_together_within_the_flush_interval_in_order() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream, "test.logs.batched")
    for i in range(100):
        log.info("line %d", i)
    deadline = time.monotonic() + 5 * FLUSH_SECONDS
    while stream.getvalue().count("\n") < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(100)]
    assert stream.writes <= 2  # one, or two if the flusher woke while they were logged


def test_a_warning_is_written_at_once_after_the_lines_before_it() -> None:
    stream = CountingStream()
    log = logger_writing_to(stream, "test.logs.warning")
    log.info("first")
    log.warning("then trouble")
    assert stream.getvalue().splitlines() == ["first", "then trouble"]


def test_flush_writes_what_is_held() -> None:
    """What `logging.shutdown` calls at exit."""
    stream = CountingStream()
    log = logger_writing_to(stream, "test.logs.flush")
    log.info("last words")
    log.handlers[0].flush()
    assert stream.getvalue() == "last words\n"
