"""The request-context middleware on its own: what every response carries, even a crash's."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from service.metrics import Metrics
from service.middleware import RequestContextMiddleware, RequestRecord
from tests.service.test_server import metric


class Running:
    draining = False
    refusing = False


async def crash(request: Request) -> Response:
    raise RuntimeError("a bug")


def test_an_unexpected_error_is_a_json_500_with_the_request_id_and_its_route() -> None:
    metrics = Metrics()
    app = Starlette(routes=[Route("/items/{item}", crash)])
    app.add_middleware(RequestContextMiddleware, record=RequestRecord(metrics), shutdown=Running())

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/items/7", headers={"X-Request-ID": "crash-1"})

    answer = asyncio.run(call())
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal server error", "code": "internal"}
    assert answer.headers["x-request-id"] == "crash-1"
    text = metrics.render()[0].decode()
    assert metric(text, "http_requests_total", route="/items/{item}", status="500") == 1


async def hello(request: Request) -> Response:
    return Response(b"hello")


def test_a_request_is_counted_before_its_last_byte_is_sent() -> None:
    """A client that scrapes right after its answer (from the other worker, perhaps) must find
    its own request counted: counting after the send raced the client's next request."""
    metrics = Metrics()
    app = Starlette(routes=[Route("/hello", hello)])
    app.add_middleware(RequestContextMiddleware, record=RequestRecord(metrics), shutdown=Running())
    counted_when_sent: list[float] = []

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        """What the server is handed to send, and what the metrics say at that moment."""

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.body":
                text = metrics.render()[0].decode()
                counted_when_sent.append(
                    metric(text, "http_requests_total", route="/hello", status="200")
                )
            await send(message)

        await app(scope, receive, send_observed)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=server)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/hello")

    assert asyncio.run(call()).status_code == 200
    assert counted_when_sent == [1]
    text = metrics.render()[0].decode()
    assert metric(text, "http_requests_total", route="/hello", status="200") == 1  # once only
