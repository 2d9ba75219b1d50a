"""A status message too long for gRPC's metadata limit still reaches the client with its code."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from service.errors import InvalidInput
from service.grpc_api.errors import MAX_DETAILS_CHARS, abort_with


class Refuser:
    @abort_with
    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise InvalidInput("shape " + "[1, " * 50_000 + "784]")


async def refused_call() -> grpc.aio.AioRpcError:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(Refuser().call)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("t.T", {"Call": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call: Any = channel.unary_unary("/t.T/Call")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"", timeout=10)
            return refused.value
    finally:
        await server.stop(None)


def test_a_long_message_is_cut_and_keeps_its_code() -> None:
    """Sent whole (200 KB), the client's library refused the trailing metadata and reported
    RESOURCE_EXHAUSTED instead of the INVALID_ARGUMENT the server sent."""
    refused = asyncio.run(refused_call())
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith("shape [1, [1, ")
    assert len(refused.details()) == MAX_DETAILS_CHARS + 3
