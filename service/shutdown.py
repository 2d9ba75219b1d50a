"""Graceful shutdown in the order Kubernetes needs it.

On SIGTERM the pod is being removed from the Service's endpoints, but load balancers learn that
a few seconds late. So: readiness turns 503 at once; requests keep being served for
`drain_grace_seconds`; then new requests get 503 and uvicorn's own shutdown starts, which stops
accepting connections, lets accepted requests finish (up to `shutdown_timeout_seconds`) and runs
the lifespan shutdown, where every batcher answers what it queued. A second signal skips the wait.
SIGINT (Ctrl-C at a terminal) skips the grace period: no load balancer sends traffic there.

uvicorn installs its SIGTERM/SIGINT handlers with `signal.signal` before the app starts, so the
lifespan can wrap them; each worker process does this for itself.

From the signal on, every response carries `Connection: close` (service.middleware), so clients
open their next request elsewhere instead of reusing a connection about to be closed under it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

log = logging.getLogger("service.shutdown")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any]


class GracefulShutdown:
    def __init__(self, grace_seconds: float, on_drain: Callable[[], None]) -> None:
        self.grace_seconds = grace_seconds
        self._on_drain = on_drain
        self.refusing = False
        """True once the grace period is over: new requests get 503."""
        self._signalled = False
        self._originals: dict[int, Handler] = {}

    @property
    def draining(self) -> bool:
        """True from the signal on: responses close their connections."""
        return self._signalled

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            original = signal.getsignal(sig)
            if callable(original):
                self._originals[sig] = original
                signal.signal(sig, lambda s, f: self._handle(loop, s, f))

    def _handle(self, loop: asyncio.AbstractEventLoop, sig: int, frame: FrameType | None) -> None:
        original = self._originals[sig]
        if self._signalled:  # a second signal: stop waiting
            original(sig, frame)
            return
        self._signalled = True
        self._on_drain()
        if sig == signal.SIGINT:
            # Ctrl-C at a terminal: no load balancer to wait for. Refuse new requests and stop
            # once the accepted ones are answered.
            log.info("interrupted: finishing accepted requests, then stopping")
            loop.call_soon_threadsafe(self._refuse_and_stop, original, sig)
            return
        log.info(
            "received %s: readiness is now 503; serving for %.1f s more, then shutting down",
            signal.Signals(sig).name,
            self.grace_seconds,
        )
        loop.call_soon_threadsafe(loop.call_later, self.grace_seconds, self._finish, original, sig)

    def _finish(self, original: Handler, sig: int) -> None:
        log.info("grace period over: refusing new requests, finishing accepted ones")
        self._refuse_and_stop(original, sig)

    def _refuse_and_stop(self, original: Handler, sig: int) -> None:
        self.refusing = True
        original(sig, None)


LINGER_SECONDS = 0.3


class LingeringServer(uvicorn.Server):
    """uvicorn's server, with a pause between "stop accepting" and "close idle connections".

    uvicorn closes the listening socket and every idle connection in one step. A client that
    had just connected, and sent its request, then loses it: the connection is closed before
    the request was read, and the client cannot tell whether it ran (SIGTERM under load lost
    0-3 requests a run, bench/shutdown.py). Closing the listener first makes new connections
    fail cleanly (refused: nothing was sent), and the pause lets requests already on accepted
    connections arrive and be answered (a 503 with `Connection: close`) before the rest of
    uvicorn's shutdown runs.
    """

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await asyncio.sleep(LINGER_SECONDS)
        await super().shutdown(sockets)
