"""Reading a request body within the configured limits, before any decoding happens."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from service import content_coding
from service.dataplane import DataPlane
from service.decoding import may_hold_booleans, parse_json
from service.errors import MalformedRequest, PayloadTooLarge, UnsupportedMediaType
from service.fastjson import Path
from service.params import parse_length_header, shown
from service.settings import Settings


# Plain accessors, not FastAPI dependencies: solving dependencies on every request cost about 6%
# of the single-image throughput at concurrency 64 (see service/auth.py).
def plane_of(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.dataplane
    return plane


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Refuse by Content-Length before reading; count while streaming when there is none. A
    compressed body (`Content-Encoding`) is decoded, held to the same limit."""
    # Several lines of a list field are one list (RFC 9110 section 5.3): gzip, then gzip again.
    coding = ", ".join(request.headers.getlist("content-encoding")) or None
    content_coding.codings(coding)  # a 415 before the body is read
    declared = request.headers.get("content-length")
    if declared is not None:
        size = parse_length_header("Content-Length", declared)
        if size > max_bytes:
            raise PayloadTooLarge(
                f"request body of {size} bytes exceeds the {max_bytes} byte limit"
            )
        body = await request.body()
    else:
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > max_bytes:
                raise PayloadTooLarge(f"request body exceeds the {max_bytes} byte limit")
        body = bytes(chunks)
    if coding is None or not body:
        return body
    return content_coding.decode(body, coding, max_bytes)


def media_type(request: Request) -> str | None:
    """The Content-Type without its parameters, lower case; None when the client sent none."""
    content_type = request.headers.get("content-type")
    return None if content_type is None else content_type.split(";", 1)[0].strip().lower()


def require_json_content_type(request: Request, *, lenient: bool = False, also: str = "") -> None:
    """JSON bodies must say so; `lenient` also takes curl's default form type (TF Serving does).
    `also` names the route's other accepted types in the 415 message."""
    media = media_type(request)
    if media is None:
        return
    if media == "application/json" or media.endswith("+json"):
        return
    if lenient and media in ("application/x-www-form-urlencoded", "text/plain"):
        return
    raise UnsupportedMediaType(
        f"unsupported Content-Type {shown(media)}; send the body as application/json{also}"
    )


async def read_json(
    request: Request,
    settings: Settings,
    *,
    lenient: bool = False,
    blocks: frozenset[Path] = frozenset(),
    also: str = "",
) -> tuple[Any, bool]:
    """The parsed body (pixel arrays at `blocks` possibly as ndarrays, see `parse_json`), and
    whether it may hold JSON booleans (see `may_hold_booleans`)."""
    require_json_content_type(request, lenient=lenient, also=also)
    body = await read_body(request, settings.max_body_bytes)
    if not body:
        raise MalformedRequest("request body is empty; send a JSON object")
    return parse_json(body, blocks), may_hold_booleans(body)


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """orjson straight to bytes: response models document the shape, they do not re-check it."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )
