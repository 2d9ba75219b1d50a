"""Refusing inference requests under overload from their request line and headers alone.

Under overload most requests are refused, and what a refusal costs is taken from the requests
being answered: the server's one core runs the event loop and the model. The routes already
refuse before reading a body (`service.protocols.admission`). This makes the same decision
earlier, in two places:

- `EarlyRefusal`, called by the HTTP protocol (`service.http_protocol`) as soon as a request's
  headers are parsed: no ASGI scope, task, middleware or routing. A refusal then costs about
  two thirds of what it costs as ASGI middleware, and it is answered at once rather than after
  the tasks already waiting in the event loop.
- `OverloadGuard`, ASGI middleware ahead of FastAPI's routing, for what the early path leaves:
  servers without that protocol, pipelined requests, the first refusal of each path. Requests
  on the fast lane (`service.fastlane`) skip it: with no routing to save, the route's own
  admission refuses them as early, before their body is read.

Both apply when one version serves (the common case), where every inference route would land on
the same queue; with several versions the routes decide.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import ApiKeys
from service.dataplane import DataPlane
from service.errors import ServingError, error_response, send_error
from service.middleware import (
    REQUEST_ID_HEADER,
    RequestRecord,
    ShutdownState,
    known_template,
    request_id_of,
)
from service.params import TIMEOUT_HEADER, parse_timeout_ms

INFERENCE_PATH_ENDS = (":predict", "/infer", "/v1/predict", "/v1/predict/image")
_TIMEOUT_HEADER = TIMEOUT_HEADER.encode()
STATE_KEY = "early_refusal"
"""The lifespan state entry holding the app's `EarlyRefusal`, where the protocol finds it."""

Headers = list[tuple[bytes, bytes]]


class Admission:
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    def refusal(self, method: str, path: str, headers: Headers) -> ServingError | None:
        """The refusal of an inference request the queue cannot take in time; None when it can,
        or when the route must decide (another method or path, several versions served, a
        malformed timeout header that deserves its 400)."""
        plane = self.plane
        if method != "POST" or not path.endswith(INFERENCE_PATH_ENDS) or len(plane.served) != 1:
            return None
        budget = self._budget(headers)
        if budget is None:
            return None
        try:  # the one version every inference route would resolve to
            plane.admit(plane.name, None, None, budget)
        except ServingError as refusal:
            return refusal
        return None

    def _budget(self, headers: Headers) -> float | None:
        for name, value in headers:
            if name == _TIMEOUT_HEADER:
                milliseconds = parse_timeout_ms(value.decode("latin-1"))
                return None if milliseconds is None else self.plane.budget(milliseconds)
        return self.plane.budget()


class OverloadGuard:
    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.admission.refusal(scope["method"], scope["path"], scope["headers"])
            if refusal is not None:
                await send_error(refusal, scope, receive, send)
                return
        await self.app(scope, receive, send)


class EarlyRefusal:
    """The refusal as the HTTP protocol sends it: the same status, body, headers, metrics and
    access log line as the middleware path, or None to leave the request to that path (a
    missing or wrong API key answers 401 first; tracing and the drain need the full path; the
    route template of a path not yet refused there is not known here)."""

    def __init__(
        self,
        admission: Admission,
        keys: ApiKeys,
        shutdown: ShutdownState,
        record: RequestRecord,
        tracing: bool,
    ) -> None:
        self.admission = admission
        self.keys = keys
        self.shutdown = shutdown
        self.record = record
        self.tracing = tracing

    def answer(self, method: str, path: str, headers: Headers) -> tuple[int, Headers, bytes] | None:
        """(status, headers, body) of the refusal, already recorded; None to go on."""
        if self.tracing or self.shutdown.draining:
            return None
        started = time.perf_counter()
        template = known_template(method, path)
        if template is None:
            return None
        try:
            self.keys.check(path, headers)
        except ServingError:
            return None
        # Last: a refusal counts in the metrics, so nothing may hand the request on after it.
        refusal = self.admission.refusal(method, path, headers)
        if refusal is None:
            return None
        request_id = request_id_of(headers)
        # The response the middleware path would send, so body and headers have one source.
        response = error_response(refusal.status, refusal.message, refusal.code, refusal.headers)
        response_headers = [*response.raw_headers, (REQUEST_ID_HEADER, request_id.encode())]
        elapsed = time.perf_counter() - started
        self.record(request_id, method, template, path, refusal.status, elapsed, {})
        return refusal.status, response_headers, bytes(response.body)
