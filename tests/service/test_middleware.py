"""The request-context middleware on its own: what every response carries, even a crash's."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
