"""Per-request bookkeeping as plain ASGI (Starlette's BaseHTTPMiddleware costs a task per request):
the request id, HTTP metrics, the structured access log line, and the connection rules of a
server that is shutting down."""

from __future__ import annotations

import logging
import random
import re
import time
from typing import Any, Protocol

from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServingError, ShuttingDown, send_error
from service.logs import AccessLog
from service.metrics import Metrics
from service.tracing import Tracing

log = logging.getLogger("service.middleware")
access_log = AccessLog("service.access")

REQUEST_ID_HEADER = b"x-request-id"
OPEN_WHILE_DRAINING = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live"})
READ_TIMED_OUT = "read_timed_out"
"""Set in a request's state by the HTTP protocol when it stopped waiting for the body."""
# Echo a client's id only when it is a plain token, so logs cannot be forged through it.
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


class ShutdownState(Protocol):
    @property
    def draining(self) -> bool:
        """SIGTERM arrived: answer, but close each connection after its response."""

    @property
    def refusing(self) -> bool:
        """The grace period is over: new requests get 503."""


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        record: RequestRecord,
        shutdown: ShutdownState,
        tracing: Tracing | None = None,
    ) -> None:
        self.app = app
        self.record = record
        self.shutdown = shutdown
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_of(scope["headers"])
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        response_started = False
        tracing = self.tracing
        if tracing is not None:
            span, token = tracing.start_request(scope["method"], scope["headers"])
        body_read = False

        async def receive_tracked() -> Message:
            nonlocal body_read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read = True
            return message

        recorded: str | None = None  # the route's template, once the request is recorded

        def record() -> str:
            nonlocal recorded
            if recorded is None:
                elapsed = time.perf_counter() - started
                trace_id = None if tracing is None else tracing.trace_id(span)
                recorded = _route_template(scope)
                self.record(
                    request_id,
                    scope["method"],
                    recorded,
                    scope["path"],
                    status,
                    elapsed,
                    state,
                    trace_id,
                )
            return recorded

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                if tracing is not None and "answered_ns" in state:
                    tracing.child("encode", state["answered_ns"], time.time_ns())
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
                if self.shutdown.draining:
                    # Clients move to another replica instead of reusing a connection the
                    # server is about to close. The unread rest of the body is read first:
                    # closing a socket with unread data makes the kernel send a reset, which
                    # can destroy this very response before the client reads it.
                    headers.append((b"connection", b"close"))
                    if not body_read:
                        await _discard_body(receive_tracked)
                message["headers"] = headers
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Counted before the last byte leaves: a client that scrapes right after its
                # answer (perhaps from the other worker) must find its request counted. (The
                # span ends below: this may run in a task of the response's own, as a file's
                # does, whose context the span's cannot be detached from.)
                record()
            await send(message)

        try:
            if self.shutdown.refusing and scope["path"] not in OPEN_WHILE_DRAINING:
                refusal = ShuttingDown(
                    "server is shutting down; retry on another replica", {"Retry-After": "1"}
                )
                await send_error(refusal, scope, receive_tracked, send_with_id)
            else:
                await self.app(scope, receive_tracked, send_with_id)
        except ClientDisconnect:
            # Gone while its body was arriving (or stalled: the protocol answered 408 and
            # closed); nothing to answer, and no server error to report.
            status = 408 if state.get(READ_TIMED_OUT) else 499
        except Exception:
            # Starlette's last-resort handler sits outside this middleware and would answer
            # without the request id; answer here so every response carries it.
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if not response_started:
                await send_error(
                    ServingError("internal server error"), scope, receive, send_with_id
                )
        finally:
            template = record()
            if tracing is not None:
                tracing.end_request(span, token, scope["method"], template, status, state)


class RequestRecord:
    """What every answered request leaves behind: its HTTP metrics and its access log line.
    Shared by the middleware and by refusals answered before any ASGI task exists
    (`service.http_protocol`)."""

    def __init__(self, metrics: Metrics, log_requests: bool = True) -> None:
        self.metrics = metrics
        self.log_requests = log_requests
        # Each request's series, found once: `labels()` validates and locks on every call. As
        # bounded as the series themselves (route templates, llhttp's methods, statuses).
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def __call__(
        self,
        request_id: str,
        method: str,
        template: str,
        path: str,
        status: int,
        elapsed: float,
        state: dict[str, Any],
        trace_id: str | None = None,
    ) -> None:
        counted = self._counted.get((method, template, status))
        if counted is None:
            counted = self.metrics.http_requests.labels(method, template, str(status))
            self._counted[method, template, status] = counted
        counted.inc()
        timed = self._timed.get((method, template))
        if timed is None:
            timed = self._timed[method, template] = self.metrics.http_duration.labels(
                method, template
            )
        timed.observe(elapsed)
        if self.log_requests:
            fields = {
                "request_id": request_id,
                "method": method,
                "route": template,
                "path": path,
                "status": status,
                "latency_ms": round(elapsed * 1000, 3),
                "images": state.get("images"),
            }
            if trace_id is not None:
                fields["trace_id"] = trace_id
            access_log.info("request", fields)


async def _discard_body(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


# Matching every route again costs ~25 regex matches; refusals under overload repeat few paths.
_TEMPLATES_CACHED = 1024
_templates: dict[tuple[str, str], str] = {}


def _route_template(scope: Scope) -> str:
    """The route's path template: set by routing, or found again for requests answered before
    routing (a missing API key, a refusal during shutdown) and for routes that do not record it
    (the docs), so metrics never lump them together as "unmatched"."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template:
        return str(template)
    template = known_template(scope["method"], scope["path"])
    if template is None:
        template = "unmatched"
        app = scope.get("app")
        # A mount (the docs' assets) moved its prefix into root_path: match as the app saw it.
        outer = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(outer)
            if match != Match.NONE:
                template = str(getattr(candidate, "path", "unmatched"))
                break
        remember_template(scope["method"], scope["path"], template)
    return template


def remember_template(method: str, path: str, template: str) -> None:
    if len(_templates) >= _TEMPLATES_CACHED:  # paths are the client's: keep it bounded
        _templates.clear()
    _templates[method, path] = template


def known_template(method: str, path: str) -> str | None:
    """The route template of a request answered before routing before, or routed by
    service.fastlane, if remembered."""
    return _templates.get((method, path))


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            return new_request_id(value.decode("latin-1"))
    return new_request_id(None)


def new_request_id(offered: str | None) -> str:
    """The client's id if it is a plain token, else a fresh one (gRPC calls use this too)."""
    if offered is not None and _SAFE_ID.match(offered.encode("latin-1", "replace")):
        return offered
    # Not uuid4: its os.urandom system call cost ~5% of the event loop under load, and a
    # request id needs to be unique, not unpredictable.
    return f"{random.getrandbits(128):032x}"
