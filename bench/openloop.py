"""An open-loop HTTP/1.1 load generator: requests leave at a constant rate, answered or not.

Closed-loop tools (wrk) send the next request only when one returns, so an overloaded server
slows its own load down and looks better than it is. Here request i is due at start + i/rate
whatever happened before; its latency counts from when it was due (no coordinated omission).
Keep-alive connections are reused while idle and opened as needed (up to `max_connections`;
beyond that a due request counts as `unsent`, the generator's own limit, never the server's).

Plain asyncio streams, one process: about 5,000 requests/s on one core, well above what these
benchmarks send.
"""

from __future__ import annotations

import asyncio
import collections
import gc
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    due: float
    """Seconds from the run's start at which the request was due."""
    latency: float
    """Seconds from due to the end of the response (or of the failure)."""
    status: int
    """HTTP status; 0 for a connection that failed or closed without an answer."""
    error: str = ""
    retry_after: str = ""
    send_lag: float = 0.0
    """Seconds from due to the request's last byte written: the generator's own delay."""


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@dataclass
class OpenLoop:
    host: str
    port: int
    request: bytes
    """The whole HTTP/1.1 request, headers and body, sent as is."""
    max_connections: int = 4096
    idle: collections.deque[Connection] = field(default_factory=collections.deque)
    open_connections: int = 0

    stall_max: float = 0.0
    """The longest the generator's own event loop was held up during the last run, in seconds:
    a latency up to that long may be the generator's rather than the server's."""

    async def run(self, rate: float, seconds: float) -> list[Outcome]:
        """Send at `rate` requests/s for `seconds`; wait for every answer (up to 30 s).

        Python's garbage collector is off meanwhile: with tens of thousands of outcomes and
        tasks alive, one full collection held this loop up for 10-50 ms, and every response due
        in that time counted the wait as the server's."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate * seconds)
        tasks = []
        collecting = gc.isenabled()
        gc.disable()
        watch = asyncio.ensure_future(self._watch_stalls(start + seconds))
        try:
            for i in range(total):
                due = start + i / rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(self._one(due, start)))
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 30)
        finally:
            watch.cancel()
            if collecting:
                gc.enable()
        return list(outcomes)

    async def _watch_stalls(self, until: float) -> None:
        """Wake every millisecond while requests are sent; keep the longest oversleep."""
        loop = asyncio.get_running_loop()
        self.stall_max = 0.0
        while loop.time() < until:
            before = loop.time()
            await asyncio.sleep(0.001)
            self.stall_max = max(self.stall_max, loop.time() - before - 0.001)

    async def close(self) -> None:
        while self.idle:
            connection = self.idle.popleft()
            connection.writer.close()

    async def _connection(self) -> Connection | None:
        if self.idle:
            return self.idle.popleft()
        if self.open_connections >= self.max_connections:
            return None
        self.open_connections += 1
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.open_connections -= 1
            raise
        return Connection(reader, writer)

    async def _one(self, due: float, start: float) -> Outcome:
        loop = asyncio.get_running_loop()
        try:
            connection = await self._connection()
        except OSError as exc:
            return Outcome(due - start, loop.time() - due, 0, f"connect: {type(exc).__name__}")
        if connection is None:
            return Outcome(due - start, loop.time() - due, 0, "unsent")
        try:
            connection.writer.write(self.request)
            await connection.writer.drain()
            send_lag = loop.time() - due
            head = await connection.reader.readuntil(b"\r\n\r\n")
            status, headers = _parse_head(head)
            length = int(headers.get("content-length", "0"))
            if length:
                await connection.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.open_connections -= 1
            connection.writer.close()
            return Outcome(due - start, loop.time() - due, 0, type(exc).__name__)
        if headers.get("connection", "").lower() == "close":
            self.open_connections -= 1
            connection.writer.close()
        else:
            self.idle.append(connection)
        return Outcome(
            due - start,
            loop.time() - due,
            status,
            retry_after=headers.get("retry-after", ""),
            send_lag=send_lag,
        )


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def http_request(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def closed_loop(
    host: str, port: int, request: bytes, concurrency: int, seconds: float
) -> list[Outcome]:
    """`concurrency` clients, each sending its next request when the last one returns (wrk's
    way): what the server sustains, its capacity."""
    generator = OpenLoop(host, port, request)
    loop = asyncio.get_running_loop()
    start = loop.time()
    outcomes: list[Outcome] = []

    async def client() -> None:
        while loop.time() - start < seconds:
            outcomes.append(await generator._one(loop.time(), start))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    await generator.close()
    return outcomes
