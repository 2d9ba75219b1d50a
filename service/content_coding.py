"""Request bodies sent compressed (`Content-Encoding: gzip` or `deflate`), decoded within limits.

Triton's HTTP client compresses requests when asked (`request_compression_algorithm="gzip"`),
and so do proxies and SDKs that save bandwidth on large batches; a server that ignored the header
parsed the compressed bytes and answered "not valid JSON". The decoded size is held to the same
limit as the body itself, checked while inflating, so a few kilobytes that inflate to gigabytes
(a compression bomb) cost at most the limit. A coding we cannot decode (br, zstd) is a 415, as
RFC 9110 (section 15.5.16) says, with the codings we take in `Accept-Encoding`.
"""

from __future__ import annotations

import zlib

from service.errors import MalformedRequest, PayloadTooLarge, UnsupportedMediaType

ACCEPTED = "gzip, deflate"
_WINDOW_BITS = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,  # zlib-wrapped, as RFC 9110 defines it; raw deflate is tried too
}


def codings(header: str | None) -> list[str]:
    """The codings applied to a body, in the order they were applied; 415 for one we lack."""
    if header is None:
        return []
    applied = [name.strip().lower() for name in header.split(",") if name.strip()]
    unknown = [name for name in applied if name != "identity" and name not in _WINDOW_BITS]
    if unknown:
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding '{unknown[0][:40]}'; send the body as is, or "
            f"compressed with {' or '.join(ACCEPTED.split(', '))}",
            {"Accept-Encoding": ACCEPTED},
        )
    return [name for name in applied if name != "identity"]


def decode(body: bytes, header: str | None, max_bytes: int) -> bytes:
    """The body with its codings undone (the last one applied first), at most `max_bytes`."""
    for name in reversed(codings(header)):
        body = _inflate(body, name, max_bytes)
    return body


def _inflate(body: bytes, name: str, max_bytes: int) -> bytes:
    try:
        return _inflate_members(body, _WINDOW_BITS[name], max_bytes)
    except zlib.error as exc:
        if name == "deflate":  # some clients send raw deflate without the zlib wrapper
            try:
                return _inflate_members(body, -zlib.MAX_WBITS, max_bytes)
            except zlib.error:
                pass
        raise MalformedRequest(f"request body is not valid {name} data: {exc}") from None


def _inflate_members(body: bytes, wbits: int, max_bytes: int) -> bytes:
    """gzip allows members one after another (`cat a.gz b.gz`); each is inflated in turn."""
    decoded = bytearray()
    rest = body
    while True:
        inflater = zlib.decompressobj(wbits)
        decoded += inflater.decompress(rest, max_bytes + 1 - len(decoded))
        if len(decoded) > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the {max_bytes} byte limit once decoded")
        if not inflater.eof:
            raise zlib.error("the compressed data ends early")
        rest = inflater.unused_data
        if not rest:
            return bytes(decoded)
