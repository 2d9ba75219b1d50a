"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

With no keys configured everything is open (a service behind a trusted network or a gateway).
With keys, every path needs a key except the probes, the metrics, the drawing page and the API
docs, and `/v1/admin/` needs an admin key. Keys are compared in constant time, against every
configured key, and never logged.

This is ASGI middleware rather than a FastAPI dependency on each route: default-deny cannot be
forgotten on a new route, and FastAPI's per-request dependency solving cost about 6% of the
single-image throughput at concurrency 64 (A/B, as bench/serve_benchmark.py runs the server).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Forbidden, ServingError, Unauthenticated, send_error

OPEN_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/favicon.ico",
    }
)
OPEN_PREFIXES = ("/docs/assets/",)  # the docs' scripts and styles
ADMIN_PREFIX = "/v1/admin/"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key from `Authorization: Bearer` or else `X-API-Key` (raw ASGI headers)."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            if scheme.lower() == b"bearer" and credentials.strip():
                return credentials.strip()
        elif name == b"x-api-key" and value:
            api_key = value
    return api_key


def _matches(candidate: bytes, keys: list[bytes]) -> bool:
    found = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        found |= hmac.compare_digest(candidate, key)
    return found


def _is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class ApiKeys:
    """The configured keys, and whether a request's path and headers pass them."""

    def __init__(self, api_keys: list[str], admin_api_keys: list[str]) -> None:
        self.admin_keys = [key.encode() for key in admin_api_keys]
        self.any_keys = [key.encode() for key in api_keys] + self.admin_keys

    def check(self, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        """Raise `Unauthenticated` or `Forbidden` unless the request may go on."""
        if not self.any_keys or _is_open(path):
            return
        key = presented_key(headers)
        if key is None:
            raise Unauthenticated(
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                _CHALLENGE,
            )
        if not _matches(key, self.any_keys):
            raise Unauthenticated("the API key is not valid", _CHALLENGE)
        if path.startswith(ADMIN_PREFIX) and not _matches(key, self.admin_keys):
            raise Forbidden("this API key does not have the admin right")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                self.keys.check(scope["path"], scope["headers"])
            except ServingError as refusal:
                await send_error(refusal, scope, receive, send)
                return
        await self.app(scope, receive, send)
