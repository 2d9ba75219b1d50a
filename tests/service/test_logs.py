"""The log handler: lines batched into few writes, none lost or reordered, none held long."""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Iterator

import orjson
import pytest

from service.logs import FLUSH_SECONDS, AccessLog, BufferedStreamHandler, JsonFormatter


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


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def json_logging() -> Iterator[io.StringIO]:
    """`configure_logging`'s JSON set-up on the root logger, writing to a string."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)


def test_an_access_line_reads_as_the_logging_module_would_write_it(
    json_logging: io.StringIO,
) -> None:
    fields = {"request_id": "abc", "status": 200, "images": None, "latency_ms": 1.25}
    AccessLog("test.logs.access").info("request", fields)
    logging.getLogger("test.logs.access").info("request", extra=fields)
    logging.getLogger().handlers[0].flush()
    direct, through_logging = json_lines(json_logging)
    assert direct.pop("ts") <= through_logging.pop("ts")
    assert list(direct.items()) == list(through_logging.items())
    assert (direct["logger"], direct["level"]) == ("test.logs.access", "info")


def test_an_access_line_goes_through_logging_when_anything_else_could_see_it(
    json_logging: io.StringIO,
) -> None:
    """A handler or a filter someone added, or a level that hides the line, is obeyed."""
    name = "test.logs.access.configured"
    logger = logging.getLogger(name)
    seen: list[logging.LogRecord] = []
    extra = logging.Handler()
    extra.emit = seen.append  # type: ignore[method-assign]
    access = AccessLog(name)
    logger.addHandler(extra)
    access.info("request", {"status": 200})
    logger.removeHandler(extra)
    logger.addFilter(lambda record: False)
    access.info("request", {"status": 201})
    logger.filters.clear()
    logger.setLevel(logging.WARNING)
    access.info("request", {"status": 202})
    logger.setLevel(logging.NOTSET)
    access.info("request", {"status": 203})
    logging.getLogger().handlers[0].flush()
    assert [record.status for record in seen] == [200]  # type: ignore[attr-defined]
    assert [line["status"] for line in json_lines(json_logging)] == [200, 203]


@pytest.mark.parametrize(
    "created", [0.0, 1_700_000_000.0, 1_700_000_000.0004, 1_700_000_000.9995, 1_764_147_599.9999996]
)
def test_timestamps_match_isoformat_to_the_millisecond(created: float) -> None:
    expected = dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds")
    record = logging.makeLogRecord({"created": created, "msg": "m", "levelname": "INFO"})
    assert orjson.loads(JsonFormatter().format(record))["ts"] == expected
