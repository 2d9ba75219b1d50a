"""uvicorn's httptools protocol, answering overload refusals as soon as the headers are parsed.

uvicorn turns every request into an ASGI scope and a task, and the task waits its turn behind
the others in the event loop. For a request that will be refused that is most of its cost (the
server's CPU per refusal went from ~145 to ~100 us without it). Here the decision
(`service.overload.EarlyRefusal`, found in the lifespan state the app yields) is made in the
parser's callback and the answer is written at once. Everything else, and every request the
decision leaves alone, takes uvicorn's own path.

The answer is complete when the request's body has not arrived yet: the body is then read and
dropped as uvicorn drops the rest of any body its app did not read, and the connection stays
open for the client's next request.

It also stops waiting for clients that stop sending. uvicorn times out idle keep-alive
connections, but not a request whose headers or body stall: 500 such connections (headers and
a few body bytes, then nothing) were all still open after 30 s, each holding a socket and its
task. A request that receives no byte for `MNIST_CLIENT_READ_TIMEOUT_SECONDS` (10 s; nginx's
client_body_timeout is 60 s) gets 408 and its connection is closed (`ReadTimeout`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from service.errors import ReadTimedOut, error_response
from service.middleware import (
    READ_TIMED_OUT,
    REQUEST_ID_HEADER,
    RequestRecord,
    known_template,
    request_id_of,
)
from service.overload import STATE_KEY, EarlyRefusal

READ_TIMEOUT_KEY = "read_timeout"
"""The lifespan state entry holding the app's `ReadTimeout`."""


@dataclass(frozen=True)
class ReadTimeout:
    seconds: float
    record: RequestRecord
    """Records a request that timed out before the app saw it (its headers incomplete)."""


class EarlyRefusalProtocol(HttpToolsProtocol):
    _read_timer: asyncio.TimerHandle | None = None
    _last_read = 0.0
    _began = 0.0
    _headers_done = False

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._headers_done = False
        timeout: ReadTimeout | None = self.app_state.get(READ_TIMEOUT_KEY)
        if timeout is not None and self._read_timer is None:
            self._began = time.perf_counter()
            self._read_timer = self.loop.call_later(timeout.seconds, self._check_reading, timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop_read_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _check_reading(self, timeout: ReadTimeout) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        idle = self.loop.time() - self._last_read
        if idle < timeout.seconds or self.flow.read_paused:  # paused: the app is behind, not it
            wait = timeout.seconds - idle if idle < timeout.seconds else timeout.seconds
            self._read_timer = self.loop.call_later(wait, self._check_reading, timeout)
            return
        self._time_out(timeout)

    def _time_out(self, timeout: ReadTimeout) -> None:
        """Answer 408 and close. If the app has the request (its body was arriving), it sees
        the client as gone and records the 408; else it is recorded here."""
        seconds = f"{timeout.seconds:g}"
        refusal = ReadTimedOut(f"no part of the request arrived for {seconds} s; closing")
        cycle = self.cycle
        if self._headers_done and cycle is not None and not cycle.response_complete:
            if cycle.response_started:  # the app answers already: just stop
                self.transport.close()
                return
            state = cycle.scope["state"]
            state[READ_TIMED_OUT] = True
            request_id = str(state.get("request_id", "")) or request_id_of(self.headers)
            cycle.disconnected = True  # its receive() returns http.disconnect, its send nothing
            cycle.message_event.set()
        elif self._headers_done:  # refused early: the answer went out, its body never came
            self.transport.close()
            return
        else:
            request_id = request_id_of(self.headers)
            method = (self.parser.get_method() or b"-").decode("latin-1") if self.url else "-"
            path = self.url.partition(b"?")[0].decode("latin-1") or "-"
            elapsed = time.perf_counter() - self._began
            template = known_template(method, path) or "unmatched"
            timeout.record(request_id, method, template, path, 408, elapsed, {})
        response = error_response(refusal.status, refusal.message, refusal.code)
        content = [STATUS_LINE[refusal.status]]
        headers = (
            *self.server_state.default_headers,
            *response.raw_headers,
            (REQUEST_ID_HEADER, request_id.encode()),
            (b"connection", b"close"),
        )
        for name, value in headers:
            content.extend((name, b": ", value, b"\r\n"))
        content.extend((b"\r\n", bytes(response.body)))
        self.transport.write(b"".join(content))
        self.transport.close()

    def on_headers_complete(self) -> None:
        self._headers_done = True
        early: EarlyRefusal | None = self.app_state.get(STATE_KEY)
        answer = None
        if (
            early is not None
            and (self.cycle is None or self.cycle.response_complete)  # not pipelined
            and not self.expect_100_continue
            and self.parser.get_http_version() == "1.1"
            and self.parser.should_keep_alive()
            and not self.parser.should_upgrade()
        ):
            path, _, _ = self.url.partition(b"?")
            if b"%" not in path and path.isascii():
                method = self.parser.get_method().decode("ascii")
                answer = early.answer(method, self.root_path + path.decode(), self.headers)
        if answer is None:
            super().on_headers_complete()
            return
        status, headers, body = answer
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            content.extend((name, b": ", value, b"\r\n"))
        content.extend((b"\r\n", body))
        self.cycle = RequestResponseCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=True,
            on_response=self.on_response_complete,
        )
        self.cycle.response_complete = True  # the body that follows is dropped
        self.transport.write(b"".join(content))
        self.on_response_complete()
