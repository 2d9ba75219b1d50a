"""Optional API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

With no keys configured everything is open (a service behind a trusted network or a gateway).
With keys, prediction routes need any key and admin routes an admin key; health, readiness and
metrics stay open for probes and scrapers. Keys are compared in constant time, against every
configured key, and never logged.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from service.errors import Forbidden, Unauthenticated
from service.settings import Settings


def presented_key(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key") or None


def _matches(candidate: str, keys: list[str]) -> bool:
    encoded = candidate.encode()
    found = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        found |= hmac.compare_digest(encoded, key.encode())
    return found


def check_api_key(request: Request) -> None:
    settings: Settings = request.app.state.settings
    allowed = settings.api_keys + settings.admin_api_keys
    if not allowed:
        return
    key = presented_key(request)
    if key is None:
        raise Unauthenticated(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            {"WWW-Authenticate": "Bearer"},
        )
    if not _matches(key, allowed):
        raise Unauthenticated("the API key is not valid", {"WWW-Authenticate": "Bearer"})


async def require_api_key(request: Request) -> None:
    """`async` so FastAPI calls it inline instead of in its thread pool."""
    check_api_key(request)


async def require_admin_key(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if not settings.api_keys and not settings.admin_api_keys:
        return
    check_api_key(request)
    key = presented_key(request)
    if key is None or not _matches(key, settings.admin_api_keys):
        raise Forbidden("this API key does not have the admin right")


ApiKey = Annotated[None, Depends(require_api_key)]
AdminKey = Annotated[None, Depends(require_admin_key)]
