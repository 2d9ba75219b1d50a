"""The service's errors as gRPC status codes: the same errors the REST routes turn into HTTP
(the retry hint travels as trailing metadata).

| error | HTTP | gRPC |
|---|---|---|
| malformed or invalid input | 400/422 | INVALID_ARGUMENT |
| unknown model or version | 404 | NOT_FOUND |
| not ready, overloaded, shutting down | 503 + Retry-After | UNAVAILABLE + `retry-after` |
| deadline passed | 504 | DEADLINE_EXCEEDED |
| too large | 413 | RESOURCE_EXHAUSTED |
| no key, wrong key / not an admin key | 401 / 403 | UNAUTHENTICATED / PERMISSION_DENIED |
| the client went away | 499 | CANCELLED |
| the model call failed | 500 | INTERNAL |
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service.errors import ServingError

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])
MAX_DETAILS_CHARS = 1_000
"""The status message travels as trailing metadata (`grpc-message`, percent-encoded, up to 12
bytes a character), which gRPC clients refuse past 16 KiB: a longer one reached the client as
RESOURCE_EXHAUSTED instead of its real code. Messages quote client values in bounded form
(`service.params.shown`, `shown_shape`); this is the last guard."""


def code_for(error: ServingError) -> grpc.StatusCode:
    return CODES.get(error.status, grpc.StatusCode.INTERNAL)


def abort_with(handler: Handler) -> Handler:
    """Turn a `ServingError` raised by a servicer method into its status code and message."""

    @functools.wraps(handler)
    async def guarded(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except ServingError as error:
            kept = tuple(context.trailing_metadata() or ())  # the request id
            retry = tuple((k.lower(), v) for k, v in error.headers.items())
            message = error.message
            if len(message) > MAX_DETAILS_CHARS:
                message = message[:MAX_DETAILS_CHARS] + "..."
            await context.abort(code_for(error), message, trailing_metadata=kept + retry)

    return guarded  # type: ignore[return-value]
