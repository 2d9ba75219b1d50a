"""Request messages parsed by the handler, not by grpc: bytes that are not the method's message
are the client's mistake (INVALID_ARGUMENT), where grpc.aio answers a deserializer's exception
with UNKNOWN, the 5xx of gRPC, and before any of our code (no metrics, no log line) runs.

Each method is registered without a request deserializer, so its handler receives the raw
bytes; the wrappers here parse them first. Parsing costs the same either way (the same
`FromString`), only the caller changes.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

Parse = Callable[[bytes], Any]


async def parse_request(parse: Parse | None, raw: Any, context: grpc.aio.ServicerContext) -> Any:
    if parse is None:
        return raw
    try:
        return parse(raw)
    except DecodeError:
        expected = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        name = f"a valid {expected.full_name}" if expected is not None else "a valid message"
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not {name} (protobuf could not parse its {len(raw)} bytes)",
        )


def parsing_streams(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A streaming handler (health's Watch, reflection) that parses its own requests; unary
    handlers are wrapped by the call recorder, which parses as it records."""
    parse = handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_stream is not None:
        inner = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> None:
            request = await parse_request(parse, raw, context)
            await _respond(inner(request, context), context)

        return grpc.unary_stream_rpc_method_handler(unary_stream, None, serialize)
    inner = handler.stream_stream or handler.stream_unary

    async def streamed(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        async def parsed() -> AsyncIterator[Any]:
            async for raw in requests:
                yield await parse_request(parse, raw, context)

        return await _respond(inner(parsed(), context), context)

    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(streamed, None, serialize)
    return grpc.stream_unary_rpc_method_handler(streamed, None, serialize)


async def _respond(result: Any, context: grpc.aio.ServicerContext) -> Any:
    """What a servicer method returned, as grpc.aio would take it: the responses an async
    generator yields are written one by one; a coroutine writes its own or returns one."""
    if inspect.isasyncgen(result):
        async for response in result:
            await context.write(response)
        return None
    return await result
