"""uvicorn's httptools protocol, answering overload refusals as soon as the headers are parsed,
and bounding what a client may make it wait for and hold.

uvicorn turns every request into an ASGI scope and a task, and the task waits its turn behind
the others in the event loop. For a request that will be refused that is most of its cost (the
server's CPU per refusal went from ~145 to ~100 us without it). Here the decision
(`service.overload.EarlyRefusal`, found in the lifespan state the app yields) is made in the
parser's callback and the answer is written at once. Everything else, and every request the
decision leaves alone, takes uvicorn's own path.

The answer is complete when the request's body has not arrived yet: the body is then read and
dropped as uvicorn drops the rest of any body its app did not read, and the connection stays
open for the client's next request.

`ConnectionLimits` are what uvicorn leaves out. It times out idle keep-alive connections, but
not a new connection that sends nothing, nor a request whose headers or body stall: 500 such
connections (headers and a few body bytes, then nothing) were all still open after 30 s, each
holding a socket and its task, and so were 200 that sent nothing, or one header line every 5 s.
Within `MNIST_CLIENT_READ_TIMEOUT_SECONDS` (10 s) a new connection must send its first byte
(else it is closed, as there is nothing to answer), a request's headers must all arrive once
its first byte has (nginx's client_header_timeout), and its body may not pause longer (nginx's
client_body_timeout) nor, after that long, average under 240 bytes/s (Kestrel's
MinRequestBodyDataRate); past them it gets 408 and its connection is closed. The same rules,
turned round, bound a client that does not read its responses (`MNIST_CLIENT_SEND_TIMEOUT_SECONDS`):
it held its connection, its request's task and the unsent bytes for ever. The number of
connections is bounded too (`service.connections`). And httptools buffers a request line and
headers of any length (200 MB sent by one client: +228 MiB): past 64 KiB they get 431 (a request
target past it 414), counted as they arrive and checked again once parsed.

An upgrade offer (`Upgrade: h2c`, which curl --http2, Java's HttpClient and Spring's RestClient
add to ordinary requests, or `Upgrade: websocket`) is declined, as RFC 9110 section 7.8 allows,
and the request is served as HTTP/1.1. This service has no WebSocket route, and uvicorn's own
handling breaks such requests: llhttp stops at the end of the headers, so a POST reached the app
with an empty body (a 400) and whatever followed it on the connection was lost. What llhttp
parses but HTTP/1 forbids (no Host in 1.1, two of them, a version that is not 1.x) gets 400 and
a closed connection, before the app and before admission.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import re
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from service.connections import ConnectionBook
from service.errors import (
    HeadersTooLarge,
    MalformedRequest,
    Overloaded,
    ReadTimedOut,
    ServingError,
    UriTooLong,
    error_response,
)
from service.middleware import (
    READ_TIMED_OUT,
    REQUEST_ID_HEADER,
    RequestRecord,
    known_template,
    request_id_of,
)
from service.overload import STATE_KEY, EarlyRefusal, Headers

TOO_MANY_CONNECTIONS = "the server holds too many connections: retry, or use another replica"
LIMITS_KEY = "connection_limits"
"""The lifespan state entry holding the app's `ConnectionLimits`."""
MAX_HEAD_BYTES = 64 * 1024
"""Request line and headers (nginx: 4 x 8 KiB buffers; Node: 16 KiB)."""
MIN_BYTES_PER_SECOND = 240
"""Kestrel's MinRequestBodyDataRate and MinResponseDataRate; a phone on 2G moves ~5,000 bytes/s."""
RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""SO_LINGER on, timeout 0: close sends RST and frees the socket's buffers."""
FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


@dataclass(frozen=True)
class ConnectionLimits:
    read_timeout_seconds: float
    record: RequestRecord
    """Records a request refused before the app saw it (its headers incomplete)."""
    connections: ConnectionBook | None = None
    retry_after_seconds: int = 1
    max_head_bytes: int = MAX_HEAD_BYTES
    send_timeout_seconds: float = 30.0
    on_send_stalled: Callable[[], None] = lambda: None


class EarlyRefusalProtocol(HttpToolsProtocol):
    _read_timer: asyncio.TimerHandle | None = None
    _send_timer: asyncio.TimerHandle | None = None
    _running: RequestResponseCycle | None = None
    _send_began = 0.0
    _last_sent = 0.0
    _sent = 0
    _unsent = 0
    _last_read = 0.0
    _began = 0.0
    _head_began = 0.0
    _last_check = 0.0
    _body_began = 0.0
    _body_bytes = 0
    _book: ConnectionBook | None = None
    _limits: ConnectionLimits | None = None
    _headers_done = False
    _reading_head = True
    _head_bytes = 0
    _replaying_framing = False
    url = b""  # uvicorn sets these when a request begins

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits: ConnectionLimits | None = self.app_state.get(LIMITS_KEY)
        if limits is None:
            return
        if limits.connections is not None:
            if not limits.connections.opened(self):
                transport.close()
                return
            self._book = limits.connections
        self._limits = limits
        # uvicorn's keep-alive timer, which the first byte cancels, as it does between requests.
        self.timeout_keep_alive_task = self.loop.call_later(
            limits.read_timeout_seconds, self.timeout_keep_alive_handler
        )

    def close_idle(self) -> None:
        """Closes the connection to make room for a new one (`ConnectionBook`), answering the
        request whose head it was reading, if any: a client told 503 can retry elsewhere."""
        self._unset_keepalive_if_required()
        if self.transport.get_write_buffer_size():
            self._reset()  # it does not take its answers: a close would wait for it
        elif self._head_bytes and self._limits is not None:
            retry = {"Retry-After": str(self._limits.retry_after_seconds)}
            self._refuse_head(self._limits, Overloaded(TOO_MANY_CONNECTIONS, retry))
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._last_read = self.loop.time()
        if self._reading_head:
            self._head_bytes += len(data)
        else:
            self._body_bytes += len(data)
        self._feed(data)
        if self._reading_head and not self.transport.is_closing():
            limits: ConnectionLimits | None = self.app_state.get(LIMITS_KEY)
            if limits is not None and self._head_bytes > limits.max_head_bytes:
                self._refuse_head(limits, _head_too_large(limits.max_head_bytes))

    def _feed(self, data: bytes) -> None:
        """uvicorn's `data_received`, except that an upgrade offer is declined, not obeyed."""
        self._unset_keepalive_if_required()
        while True:
            try:
                self.parser.feed_data(data)
                return
            except httptools.HttpParserError:
                self.send_400_response("Invalid HTTP request received.")
                return
            except httptools.HttpParserUpgrade as offer:
                data = self._decline_upgrade(data[offer.args[0] :])

    def _decline_upgrade(self, rest: bytes) -> bytes:
        """What to feed a fresh parser so that it reads the declined request's body.

        llhttp stopped at the end of the headers and takes nothing more. A fresh parser is given
        a stand-in head with the request's framing headers, whose callbacks are skipped (the
        request's own head was handled already), then the bytes that followed: it reads the body
        into the same request, and every request after it as usual.
        """
        framing = [
            name + b": " + value + b"\r\n"
            for name, value in self.headers
            if name in FRAMING_HEADERS
        ]
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self._replaying_framing = True
        return b"".join([b"POST / HTTP/1.1\r\n", *framing, b"\r\n", rest])

    def _should_upgrade(self) -> bool:
        return False  # no WebSocket route: an upgrade offer is declined (`_decline_upgrade`)

    def on_url(self, url: bytes) -> None:
        if not self._replaying_framing:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._replaying_framing:
            super().on_header(name, value)

    def on_message_begin(self) -> None:
        if self._replaying_framing:
            return
        super().on_message_begin()
        self._headers_done = False
        self._head_began = self._last_check = self.loop.time()
        limits: ConnectionLimits | None = self.app_state.get(LIMITS_KEY)
        if limits is not None and self._read_timer is None:
            self._began = time.perf_counter()
            self._read_timer = self.loop.call_later(
                limits.read_timeout_seconds, self._check_reading, limits
            )

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return  # llhttp's end of a request it will not read the body of: see `_feed`
        super().on_message_complete()
        self._stop_read_timer()
        self._reading_head, self._head_bytes = True, 0  # what follows is the next request's
        self._mark_if_idle()  # answered before its body ended (an early refusal)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._mark_if_idle()
        self._watch_sending()

    def pause_writing(self) -> None:
        """The client takes its response slower than the app writes it: the app's next write
        waits for it. Until it resumes taking, nothing of the connection is the app's doing,
        so it may give way at the connection limit like an idle one."""
        super().pause_writing()
        if self._book is not None and not self.transport.is_closing():
            self._book.idle(self)
        self._watch_sending()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._book is not None and not (self.cycle is None or self.cycle.response_complete):
            self._book.busy(self)

    def _watch_sending(self) -> None:
        """Response bytes wait in our buffer (the kernel's is full): the client must keep taking
        them. A client that never reads would otherwise hold its connection, its request's task
        and the unsent response for ever, and a close would wait for it too."""
        if self._send_timer is not None or self._limits is None:
            return
        if self.transport.get_write_buffer_size():
            self._unsent = self._unsent_bytes()
            self._send_began = self._last_sent = self.loop.time()
            self._sent = 0
            timeout = self._limits.send_timeout_seconds
            self._send_timer = self.loop.call_later(timeout, self._check_sending, self._limits)

    def _check_sending(self, limits: ConnectionLimits) -> None:
        self._send_timer = None
        unsent, now = self._unsent_bytes(), self.loop.time()
        if not self.transport.get_write_buffer_size() or unsent > self._unsent:
            self._watch_sending()  # the kernel holds the rest, or the app wrote more
            return
        if unsent < self._unsent:
            self._sent += self._unsent - unsent
            self._unsent, self._last_sent = unsent, now
        left = self._sending_time_left(limits.send_timeout_seconds, now)
        if left > 0:
            self._send_timer = self.loop.call_later(left, self._check_sending, limits)
            return
        limits.on_send_stalled()
        self._reset()

    def _reset(self) -> None:
        """Closes at once, dropping what neither buffer has sent: a plain abort leaves the
        kernel sending its share (up to megabytes) to a client that takes none of it."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        self._disconnect_cycles()
        self.transport.abort()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def _disconnect_cycles(self) -> None:
        """Tells every request of the connection that its client has gone, so that their sends
        do nothing. uvicorn tells only the last one parsed, which with pipelining is not the one
        running: its next write raised on the closed uvloop transport (a logged 500)."""
        for cycle in (self._running, *(cycle for cycle, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    def _unsent_bytes(self) -> int:
        """Ours and the kernel's: progress seen in ours alone comes in chunks of half the
        kernel's buffer (when it wakes us to write), too coarse for a rate. Ours alone where
        the kernel does not say (not Linux)."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return unsent
        try:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return unsent
        return unsent + int.from_bytes(queued, sys.byteorder, signed=True)

    def _sending_time_left(self, timeout: float, now: float) -> float:
        """The rules a body is read by, turned round (nginx's send_timeout, Kestrel's
        MinResponseDataRate): the client may not stop taking its response for `timeout`, nor
        take it slower than `MIN_BYTES_PER_SECOND` after its first `timeout`. Watched only
        while our buffer holds some: what the kernel alone holds, the kernel bounds."""
        allowed = self._send_began + timeout + self._sent / MIN_BYTES_PER_SECOND
        return min(self._last_sent + timeout, allowed) - now

    def _mark_if_idle(self) -> None:
        """Idle: no request of this connection is the app's, answered or not; it waits for the
        next request's head, or reads it."""
        answered = self.cycle is None or self.cycle.response_complete
        if self._book is None or not answered or not self._reading_head:
            return
        if not self.pipeline and not self.transport.is_closing():
            self._book.idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disconnect_cycles()
        self._stop_read_timer()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        if self._book is not None:
            self._book.closed(self)
        super().connection_lost(exc)

    def _stop_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _check_reading(self, limits: ConnectionLimits) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        timeout = limits.read_timeout_seconds
        now = self.loop.time()
        since_check, self._last_check = now - self._last_check, now
        cycle = self.cycle
        # Not the client's fault: the app is behind (reading paused), or the client waits for
        # the "100 Continue" the app has not asked for yet. That time is not the body's.
        if self.flow.read_paused or (
            self._headers_done and cycle is not None and cycle.waiting_for_100_continue
        ):
            self._head_began += since_check
            self._body_began += since_check
            self._last_read = now
            self._read_timer = self.loop.call_later(timeout, self._check_reading, limits)
            return
        refusal, left = self._reading_rule(timeout, now)
        if left > 0:
            self._read_timer = self.loop.call_later(left, self._check_reading, limits)
            return
        if not self._headers_done:
            self._refuse_head(limits, refusal)
            return
        if cycle is None or cycle.response_started or cycle.response_complete:
            # Refused early (the answer went out, its body never came) or being answered.
            self.transport.close()
            return
        # The app has the request: its receive() returns http.disconnect and its send()
        # nothing, and the middleware records the 408 it finds in the state.
        state = cycle.scope["state"]
        state[READ_TIMED_OUT] = True
        cycle.disconnected = True
        cycle.message_event.set()
        request_id = str(state.get("request_id", "")) or request_id_of(self.headers)
        self._answer_and_close(refusal, request_id)

    def _reading_rule(self, timeout: float, now: float) -> tuple[ReadTimedOut, float]:
        """The rule the request comes closest to breaking, and the time before it does.

        A head is timed as a whole: one header line every few seconds is a stall too. A body
        may take long on a slow link, but not pause for `timeout`, nor average less than
        `MIN_BYTES_PER_SECOND` after its first `timeout` (one byte every few seconds would
        hold the connection for ever, and a connection with a request in progress is never
        closed to make room for another)."""
        if not self._headers_done:
            return ReadTimedOut(
                f"the request line and headers did not arrive within {timeout:g} s; closing"
            ), self._head_began + timeout - now
        paused = ReadTimedOut(f"no part of the request arrived for {timeout:g} s; closing")
        slow = ReadTimedOut(
            f"the request body arrives slower than {MIN_BYTES_PER_SECOND} bytes/s; closing"
        )
        allowed = self._body_began + timeout + self._body_bytes / MIN_BYTES_PER_SECOND
        return min(
            (paused, self._last_read + timeout - now),
            (slow, allowed - now),
            key=lambda rule: rule[1],
        )

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser cannot read (a TLS hello, a broken chunk size),
        as JSON with a request id and recorded like every other answer; uvicorn's own is plain
        text that no metric or access log line sees."""
        refusal = MalformedRequest("invalid HTTP/1.1 request: the parser could not read it")
        limits: ConnectionLimits | None = self.app_state.get(LIMITS_KEY)
        if limits is None:
            self._answer_and_close(refusal, request_id_of([]))
        else:
            self._refuse_head(limits, refusal)

    def _refuse_head(self, limits: ConnectionLimits, refusal: ServingError) -> None:
        """Answer a request the app has not seen, and record it as the middleware would."""
        self._stop_read_timer()
        request_id = request_id_of(self.headers or [])
        method = (self.parser.get_method() or b"-").decode("latin-1") if self.url else "-"
        path = self.url.partition(b"?")[0][:200].decode("latin-1") or "-"
        template = known_template(method, path) or "unmatched"
        elapsed = time.perf_counter() - self._began if self._began else 0.0
        limits.record(request_id, method, template, path, refusal.status, elapsed, {})
        self._answer_and_close(refusal, request_id)

    def _answer_and_close(self, refusal: ServingError, request_id: str) -> None:
        response = error_response(refusal.status, refusal.message, refusal.code, refusal.headers)
        headers = [
            *response.raw_headers,
            (REQUEST_ID_HEADER, request_id.encode()),
            (b"connection", b"close"),
        ]
        self._write(refusal.status, headers, bytes(response.body))
        self.transport.close()

    def _write(self, status: int, headers: Headers, body: bytes) -> None:
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            content.extend((name, b": ", value, b"\r\n"))
        content.extend((b"\r\n", body))
        self.transport.write(b"".join(content))

    def on_headers_complete(self) -> None:
        if self._replaying_framing:
            self._replaying_framing = False
            return
        self._headers_done, self._reading_head = True, False
        if self._book is not None:
            self._book.busy(self)
        self._body_began, self._body_bytes = self.loop.time(), 0
        limits: ConnectionLimits | None = self.app_state.get(LIMITS_KEY)
        if limits is not None:
            faulty = self._oversized_head(limits.max_head_bytes) or self._malformed_head()
            if faulty is not None:
                self.cycle = self._answered_cycle(keep_alive=False)  # its body is dropped
                self._refuse_head(limits, faulty)
                return
        early: EarlyRefusal | None = self.app_state.get(STATE_KEY)
        answer = None
        if (
            early is not None
            and (self.cycle is None or self.cycle.response_complete)  # not pipelined
            and not self.expect_100_continue
            and self.parser.get_http_version() == "1.1"
            and self.parser.should_keep_alive()
        ):
            path, _, _ = self.url.partition(b"?")
            if b"%" not in path and path.isascii():
                method = self.parser.get_method().decode("ascii")
                answer = early.answer(method, self.root_path + path.decode(), self.headers)
        if answer is None:
            super().on_headers_complete()
            return
        status, headers, body = answer
        self.cycle = self._answered_cycle(keep_alive=True)
        self._write(status, headers, body)
        self.on_response_complete()

    def _answered_cycle(self, keep_alive: bool) -> RequestResponseCycle:
        """The cycle of a request answered here: the body that follows is read and dropped."""
        cycle = RequestResponseCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.response_complete = True
        return cycle

    def _oversized_head(self, limit: int) -> ServingError | None:
        """The limit, checked on the parsed head: `data_received` counts what arrives, but a
        head that arrives whole in one read (up to ~256 KiB) is parsed before it can count."""
        if len(self.url) > limit:
            return UriTooLong(f"the request target exceeds {limit // 1024} KiB")
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > limit:
            return _head_too_large(limit)
        return None

    def _malformed_head(self) -> MalformedRequest | None:
        """What llhttp parses but HTTP/1 forbids (RFC 9112 section 3.2, RFC 9110 section 7.2):
        a 1.1 request without Host or with one that is not a host and port; two of a field that
        takes one value, Host among them (`_SINGLETONS`); and a version that is not HTTP/1
        (HTTP/2 has no request line: uvicorn answered `HTTP/2.0` as if it were 1.1)."""
        version = self.parser.get_http_version()
        if version not in ("1.0", "1.1"):
            return MalformedRequest(
                f"HTTP/{version} is not served on this port: send HTTP/1.1 (HTTP/2 is gRPC's,"
                " on the gRPC port)"
            )
        host = None
        seen: set[bytes] = set()
        for name, value in self.headers:
            if name in _SINGLETONS:
                if name in seen:
                    return MalformedRequest(
                        f"the request has more than one {_SINGLETONS[name]} header"
                    )
                seen.add(name)
                if name == b"host":
                    host = value
        if host is None and version == "1.1":
            return MalformedRequest("an HTTP/1.1 request needs a Host header")
        if host is not None and _HOST.fullmatch(host) is None:
            return MalformedRequest("the Host header is not a host name or address and a port")
        return None


_SINGLETONS = {
    name.lower().encode(): name
    for name in ("Host", "Content-Type", "X-Request-Timeout-Ms", "Inference-Header-Content-Length")
}
"""Fields of which one value is allowed, because they say where the request goes, how its body
is read or how long it may take: the app read the first, and a proxy in front may have read
(or routed by) the other."""

_HOST = re.compile(
    rb"(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=%]+\]|[0-9A-Za-z.\-_~!$&'()*+,;=%]*)(?::[0-9]*)?"
)
"""RFC 9110's `uri-host [ ":" port ]`: an IP literal in brackets or a registered name (which
includes IPv4), then an optional port; empty is allowed for a target without an authority."""


def _head_too_large(limit: int) -> HeadersTooLarge:
    return HeadersTooLarge(f"request line and headers exceed {limit // 1024} KiB")
