"""Logging: one JSON object per line, so log pipelines need no parsing rules; or, for a person
at a terminal, plain lines with the same fields."""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import time
import weakref
from typing import Any, TextIO

import orjson

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname.lower(), record.name, record.getMessage())
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _RESERVED)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def _entry(created: float, level: str, logger: str, message: str) -> dict[str, Any]:
    return {"ts": _timestamp(created), "level": level, "logger": logger, "msg": message}


_second: tuple[int, str] = (0, "")
"""The last second formatted, and its text up to the seconds: lines come thousands a second."""


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC to the millisecond, as `datetime.isoformat(timespec="milliseconds")`."""
    global _second
    second, micro = divmod(round(created * 1_000_000), 1_000_000)
    cached = _second  # read once: another thread may replace it meanwhile
    if cached[0] != second:
        clock = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        cached = _second = (second, clock)
    return f"{cached[1]}.{micro // 1000:03d}+00:00"


class TextFormatter(logging.Formatter):
    """`12:00:01 INFO  message  key=value ...`: the JSON entry's fields, for reading."""

    def format(self, record: logging.LogRecord) -> str:
        clock = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = "  ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED and v is not None
        )
        line = f"{clock} {record.levelname:<7} {record.getMessage()}"
        if extras:
            line = f"{line}  {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


FLUSH_SECONDS = 0.2
BUFFERED_CHARACTERS = 1 << 16


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines reach the stream in batches, as nginx's buffered access log does: one write system
    call per line (stderr is line-buffered) was a tenth of what a refused request costs the event
    loop under overload. Lines wait at most `FLUSH_SECONDS` (a daemon thread flushes), warnings
    and errors are written at once with what came before them, and `logging.shutdown` flushes
    at exit."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._characters = 0
        self.unbuffered = False
        """Set by `write_through`: every line is written as it comes."""
        _start_flushing(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.append(line, urgent=record.levelno >= logging.WARNING)

    def append(self, line: str, urgent: bool = False) -> None:
        """A line formatted already; `urgent` writes it (and those before it) at once."""
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            self._characters += len(line)
            if urgent or self.unbuffered or self._characters >= BUFFERED_CHARACTERS:
                self._write()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def _write(self) -> None:
        if self._lines:
            self._lines.append("")
            self.stream.write("\n".join(self._lines))
            self._lines.clear()
            self._characters = 0
        self.stream.flush()


class AccessLog:
    """The access log's info lines, one per answered request or call.

    Through the logging module such a line (a LogRecord of some thirty attributes, the handler
    chain, a formatter walking them) was about a tenth of the server's CPU per single-image
    request at concurrency 64. When the line would end in this module's JSON handler alone, as
    `configure_logging` sets it up, it is written there directly, the same JSON, in about 40% of
    that time. Any other set-up (the text format, a handler or filter someone added, a level
    that hides it) gets the line through the logging module as before.
    """

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def info(self, message: str, fields: dict[str, Any]) -> None:
        handler = self._json_handler()
        if handler is None:
            self.logger.info(message, extra=fields)
            return
        entry = _entry(time.time(), "info", self.logger.name, message)
        entry.update(fields)
        handler.append(orjson.dumps(entry, default=str).decode())

    def _json_handler(self) -> BufferedStreamHandler | None:
        """The one handler a record of this logger would reach, if it is ours writing JSON and
        nothing would filter the record (what `Logger.callHandlers` would do)."""
        if self.logger.filters or not self.logger.isEnabledFor(logging.INFO):
            return None
        found: logging.Handler | None = None
        logger: logging.Logger | None = self.logger
        while logger is not None:
            for handler in logger.handlers:
                if found is not None or handler.level > logging.INFO:
                    return None
                found = handler
            logger = logger.parent if logger.propagate else None
        if (
            type(found) is BufferedStreamHandler
            and not found.filters
            and type(found.formatter) is JsonFormatter
        ):
            return found
        return None


_flushed: weakref.WeakSet[BufferedStreamHandler] = weakref.WeakSet()
_flusher: threading.Thread | None = None


def _start_flushing(handler: BufferedStreamHandler) -> None:
    """One daemon thread flushes every live handler (a handler replaced by a later
    `configure_logging` is flushed at its end, then forgotten)."""
    global _flusher
    _flushed.add(handler)
    if _flusher is None:
        _flusher = threading.Thread(target=_flush_periodically, name="log-flush", daemon=True)
        _flusher.start()


def _flush_periodically() -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        for handler in list(_flushed):
            handler.flush()


def write_through() -> None:
    """What waits is written now, and every line from now on as it comes: the process is ending.

    Not always through `logging.shutdown`, which would flush: once it has shut down after a
    SIGTERM, uvicorn raises the signal again under its default handler, which ends the process
    at once. The lines of the last 0.2 s were lost with the buffer: the access log of requests
    answered while the server stopped, and uvicorn's own "Application shutdown complete"."""
    for handler in list(_flushed):
        handler.unbuffered = True
        handler.flush()


def configure_logging(level: str, log_format: str = "json") -> None:
    """`log_format`: "json", "text", or "auto" (text when stderr is a terminal)."""
    text = log_format == "text" or (log_format == "auto" and sys.stderr.isatty())
    # Fields no formatter here shows, each looked up for every record (the logging HOWTO's
    # "Optimization"): the caller's file and line walk the stack, the process id is a system
    # call.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = BufferedStreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    root = logging.getLogger()
    for replaced in root.handlers:
        replaced.flush()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our middleware writes the access log, with the request id and batch size uvicorn's lacks.
    logging.getLogger("uvicorn.access").disabled = True
