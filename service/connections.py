"""How many client connections one server process holds, and which one gives way at the limit.

Every open connection holds a file descriptor, and the process has a fixed number of them. With
nothing bounding connections, one client that opened 20,000 sockets and sent nothing (11 s from
one Python loop here) used them all: every new client, health probes included, was refused by
the kernel, and the repository poll failed with EMFILE. Timeouts alone do not bound the number:
a client that reconnects as each of its sockets is closed keeps them all.

So each protocol has a limit (`MNIST_MAX_CONNECTIONS` per worker, fitted to the open-file limit
at start). At the limit a new HTTP connection takes the place of the one that has been idle the
longest, and is closed at once only when every connection has a request in progress. Idle means
that the app has none of the connection's requests: it waits for a request (closing it loses
nothing, as a keep-alive timeout would close it) or is still reading one's head (answered 503
with `Retry-After`, which a client can retry at once; 10,000 connections dripping header lines
otherwise shut everyone out until their head timeout). Clients that hold sockets without using
them are then the ones that lose them. gRPC's own limit (`grpc.max_allowed_incoming_connections`)
refuses new connections.
"""

from __future__ import annotations

import logging
import resource
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

IDLE_CLOSED = "idle_closed"
"""An idle connection closed to make room for a new one."""
OVER_LIMIT = "over_limit"
"""A new connection closed at once: every open one had a request in progress."""
SHED_REASONS = (IDLE_CLOSED, OVER_LIMIT)
RESERVED_FILES = 512
"""Descriptors kept for everything but client connections: model files, TensorFlow, metrics
files, log files, the repository poll."""


class Connection(Protocol):
    def close_idle(self) -> None: ...


class ConnectionBook:
    """The open connections of one protocol in one process, the idle ones in the order they
    became idle. Every call is O(1): it runs on every request."""

    def __init__(
        self,
        capacity: int,
        on_count: Callable[[int], None] = lambda change: None,
        on_shed: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.capacity = capacity
        self._on_count = on_count
        self._on_shed = on_shed
        self._open: set[Connection] = set()
        self._idle: dict[Connection, None] = {}  # insertion order: longest idle first

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, connection: Connection) -> bool:
        """Whether a new connection may stay open (idle, until its first request starts)."""
        if len(self._open) >= self.capacity and not self._close_longest_idle():
            self._on_shed(OVER_LIMIT)
            return False
        self._open.add(connection)
        self._idle[connection] = None
        self._on_count(1)
        return True

    def busy(self, connection: Connection) -> None:
        self._idle.pop(connection, None)

    def idle(self, connection: Connection) -> None:
        if connection in self._open:
            self._idle.pop(connection, None)
            self._idle[connection] = None

    def closed(self, connection: Connection) -> None:
        self._idle.pop(connection, None)
        if connection in self._open:
            self._open.discard(connection)
            self._on_count(-1)

    def _close_longest_idle(self) -> bool:
        if not self._idle:
            return False
        longest = next(iter(self._idle))
        self.closed(longest)  # counted out now: its connection_lost comes later
        longest.close_idle()
        self._on_shed(IDLE_CLOSED)
        return True


def fit_to_open_files(wanted: int, protocols: int) -> int:
    """The connection limit per protocol that the process's open-file limit can hold.

    The soft limit is raised to the hard one first (as Go's runtime and nginx's
    `worker_rlimit_nofile` do): the soft default is often 1,024, too low for a server.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    fits = max(1, (soft - RESERVED_FILES) // protocols)
    if fits >= wanted:
        return wanted
    log.info(
        "at most %d connections per protocol: the open-file limit (%d) holds no more of the %d "
        "asked for (MNIST_MAX_CONNECTIONS; raise the limit with ulimit -n)",
        fits,
        soft,
        wanted,
    )
    return fits
