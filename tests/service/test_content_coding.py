"""Compressed request bodies: decoded within the body limit, refused clearly otherwise."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
import zlib

import pytest
from starlette.requests import Request
from starlette.types import Message

from service.content_coding import decode
from service.errors import MalformedRequest, PayloadTooLarge, UnsupportedMediaType
from service.protocols.body import read_body

BODY = b'{"instances": [' + b"0," * 783 + b"0]}"
LIMIT = 1 << 20


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("header", "sent"),
    [
        (None, BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY)),
        ("GZip", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),  # zlib-wrapped, as HTTP defines deflate
        ("deflate", raw_deflate(BODY)),  # what some clients send instead
        ("gzip, identity", gzip.compress(BODY)),
        ("deflate, gzip", gzip.compress(zlib.compress(BODY))),  # undone last-applied first
        ("gzip", gzip.compress(BODY[:100]) + gzip.compress(BODY[100:])),  # two members
    ],
)
def test_each_coding_is_undone(header: str | None, sent: bytes) -> None:
    assert decode(sent, header, LIMIT) == BODY


@pytest.mark.parametrize("header", ["br", "zstd", "gzip, br", "compress"])
def test_a_coding_we_cannot_undo_is_a_415_naming_the_ones_we_can(header: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="Content-Encoding") as refused:
        decode(gzip.compress(BODY), header, LIMIT)
    assert refused.value.headers == {"Accept-Encoding": "gzip, deflate"}


@pytest.mark.parametrize(
    ("header", "sent"),
    [
        ("gzip", BODY),  # said gzip, sent plain
        ("gzip", gzip.compress(BODY)[:-12]),  # cut short
        ("deflate", b"\x00\x01\x02 not deflate"),
        ("gzip", gzip.compress(BODY) + b"trailing junk"),
    ],
)
def test_bytes_that_are_not_what_the_header_says_are_a_400(header: str, sent: bytes) -> None:
    with pytest.raises(MalformedRequest, match=f"not valid {header} data"):
        decode(sent, header, LIMIT)


def test_a_compression_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(bytes(256 << 20), compresslevel=1)  # 256 MiB of zeros in about 1 MiB
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge, match="once decoded"):
            decode(bomb, "gzip", LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * LIMIT  # inflated to the limit, not to the bomb's size
    with pytest.raises(PayloadTooLarge):
        decode(gzip.compress(BODY), "gzip", len(BODY) - 1)
    assert decode(gzip.compress(BODY), "gzip", len(BODY)) == BODY


def test_codings_on_several_header_lines_are_one_list() -> None:
    """RFC 9110 section 5.3: `Content-Encoding: deflate` then `Content-Encoding: gzip` is
    `deflate, gzip`. Only the first line was read, so such a body was a 400."""
    sent = gzip.compress(zlib.compress(BODY))
    headers = [(b"content-encoding", b"deflate"), (b"content-encoding", b"gzip")]

    async def receive() -> Message:
        return {"type": "http.request", "body": sent, "more_body": False}

    request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
    assert asyncio.run(read_body(request, LIMIT)) == BODY
