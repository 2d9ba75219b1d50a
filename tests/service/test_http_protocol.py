"""The HTTP protocol's early refusal, in a real uvicorn server on 127.0.0.1.

The app behind it would answer 200 to anything that reached it, and it has no overload guard of
its own: a 503 can only come from the protocol, decided from the request's headers."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.auth import ApiKeyMiddleware, ApiKeys
from service.errors import Overloaded, ServingError
from service.http_protocol import EarlyRefusalProtocol
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware, RequestRecord
from service.overload import STATE_KEY, Admission, EarlyRefusal
from tests.conftest import free_port
from tests.service.test_middleware import Running
from tests.service.test_server import metric


class QueueFull(Admission):
    """The decision itself is the batcher's (tests/service/test_batcher.py): here it always
    refuses /v1/predict."""

    def __init__(self) -> None:
        pass

    def refusal(
        self, method: str, path: str, headers: list[tuple[bytes, bytes]]
    ) -> ServingError | None:
        if path == "/v1/predict":
            return Overloaded("server overloaded: the test's queue is full", {"Retry-After": "2"})
        return None


@contextlib.contextmanager
def serving(
    early: EarlyRefusal, record: RequestRecord, keys: ApiKeys
) -> Iterator[tuple[int, list[str]]]:
    reached: list[str] = []

    async def predict(request: Request) -> JSONResponse:
        reached.append(request.url.path)
        return JSONResponse({"predictions": []})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {STATE_KEY: early}

    app = Starlette(routes=[Route("/v1/predict", predict, methods=["POST"])], lifespan=lifespan)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(RequestContextMiddleware, record=record, shutdown=Running())
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=EarlyRefusalProtocol, log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield port, reached
    finally:
        server.should_exit = True
        thread.join(10)


def test_refused_from_the_headers_before_the_app_is_called_on_a_connection_that_serves_on() -> None:
    metrics = Metrics()
    record = RequestRecord(metrics, log_requests=False)
    keys = ApiKeys(["the-key"], [])
    early = EarlyRefusal(QueueFull(), keys, Running(), record, tracing=False)
    body = json.dumps({"instances": [[0] * 784]})
    with serving(early, record, keys) as (port, reached):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def post(headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, Any]]:
            connection.request("POST", "/v1/predict?x=1", body, headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), json.loads(response.read())

        # No key: the app's own middleware answers 401 (and learns the path's route).
        status, _, answer = post({})
        assert (status, answer["code"]) == (401, "unauthenticated")
        # A valid key: refused by the protocol, the body left unread and skipped.
        status, headers, answer = post({"X-API-Key": "the-key", "X-Request-ID": "early-1"})
        assert status == 503
        assert answer == {
            "error": "server overloaded: the test's queue is full",
            "code": "overloaded",
        }
        assert headers["retry-after"] == "2"
        assert headers["x-request-id"] == "early-1"
        assert headers["content-type"] == "application/json"
        # A wrong key is still the app's 401, never a 503 that tells more than it should.
        status, _, answer = post({"X-API-Key": "not-the-key"})
        assert (status, answer["code"]) == (401, "unauthenticated")
        # The same connection goes on: a request the protocol leaves alone reaches the app.
        connection.request("POST", "/v2/elsewhere", body, {"X-API-Key": "the-key"})
        assert connection.getresponse().status == 404
        connection.close()
        assert reached == []
    counted = metrics.render()[0].decode()
    assert metric(counted, "http_requests_total", route="/v1/predict", status="503") == 1
