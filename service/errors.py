"""Domain errors, each carrying its HTTP status, and the one place that renders them as JSON.

Errors are raised where the problem is found (decoding, batcher, repository) and turned into a
response only here, so every route and protocol answers mistakes in the same shape:
`{"error": "<message>", "code": "<machine-readable code>"}`. `error` is the field TensorFlow
Serving and the Open Inference Protocol both define; `code` is ours.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("service.errors")

# Paths whose protocol says "400 for any invalid argument" (TF Serving's INVALID_ARGUMENT, the
# V2 spec's "typically 400"); the native API uses 422 for well-formed JSON with bad content.
_PROTOCOL_400_PREFIXES = ("/v1/models/", "/v2/")


class ServingError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class MalformedRequest(ServingError):
    """The body is not parseable at all (not JSON, bad binary framing)."""

    status = 400
    code = "malformed_request"


class InvalidInput(ServingError):
    """Parseable, but not images: wrong shape, non-numbers, out of range, empty, too many."""

    status = 422
    code = "invalid_input"


class PayloadTooLarge(ServingError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServingError):
    status = 415
    code = "unsupported_media_type"


class Unauthenticated(ServingError):
    status = 401
    code = "unauthenticated"


class Forbidden(ServingError):
    status = 403
    code = "forbidden"


class ModelNotFound(ServingError):
    status = 404
    code = "model_not_found"


class ModelNotReady(ServingError):
    status = 503
    code = "model_not_ready"


class VersionUnloading(ModelNotReady):
    """The version's batcher is closing (a reload or shutdown took it out of service)."""


class ShuttingDown(ServingError):
    status = 503
    code = "shutting_down"


class Overloaded(ServingError):
    """The queue is full: refuse at once rather than let latency grow without bound."""

    status = 503
    code = "overloaded"


class DeadlineExceeded(ServingError):
    status = 504
    code = "deadline_exceeded"


class ReadTimedOut(ServingError):
    """The client stopped sending its request (headers or body) for the read timeout."""

    status = 408
    code = "request_timeout"


class HeadersTooLarge(ServingError):
    status = 431
    code = "headers_too_large"


class UriTooLong(ServingError):
    status = 414
    code = "uri_too_long"


class ClientGone(ServingError):
    """The client closed the connection before its answer was ready (nginx's 499); the request
    was dropped, and nobody reads this status but the access log and metrics."""

    status = 499
    code = "client_closed_request"


class InferenceFailed(ServingError):
    """The model call itself raised; only the requests of that batch see this."""

    status = 500
    code = "inference_failed"


def status_for(exc: ServingError, path: str) -> int:
    if isinstance(exc, InvalidInput) and path.startswith(_PROTOCOL_400_PREFIXES):
        return 400
    return exc.status


def error_response(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps({"error": message, "code": code}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


async def send_error(exc: ServingError, scope: Scope, receive: Receive, send: Send) -> None:
    """Answer with `exc` from ASGI middleware that refuses a request before any routing."""
    response = error_response(exc.status, exc.message, exc.code, exc.headers)
    await response(scope, receive, send)


async def handle_serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    status = status_for(exc, request.url.path)
    if status >= 500 and not isinstance(exc, Overloaded | ModelNotReady | DeadlineExceeded):
        log.error("request failed: %s", exc.message)
    return error_response(status, exc.message, exc.code, exc.headers)
