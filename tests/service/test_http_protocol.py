"""The HTTP protocol's early refusal, in a real uvicorn server on 127.0.0.1.

The app behind it would answer 200 to anything that reached it, and it has no overload guard of
its own: a 503 can only come from the protocol, decided from the request's headers."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from service.auth import ApiKeyMiddleware, ApiKeys
from service.connections import IDLE_CLOSED, OVER_LIMIT, ConnectionBook
from service.errors import Overloaded, ServingError
from service.http_protocol import LIMITS_KEY, MAX_HEAD_BYTES, ConnectionLimits, EarlyRefusalProtocol
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware, RequestRecord
from service.overload import STATE_KEY, Admission, EarlyRefusal
from tests.conftest import answer_until_closed, free_port
from tests.service.test_middleware import Running
from tests.service.test_server import metric

LARGE_BODY_BYTES = 16 * 1024 * 1024
"""More than the kernel's send buffer takes on loopback (at most 4 MiB here)."""


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
    early: EarlyRefusal,
    record: RequestRecord,
    keys: ApiKeys,
    book: ConnectionBook | None = None,
    **limits: Any,
) -> Iterator[tuple[int, list[str]]]:
    reached: list[str] = []

    async def predict(request: Request) -> JSONResponse:
        reached.append(request.url.path)
        return JSONResponse({"predictions": []})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {STATE_KEY: early, LIMITS_KEY: ConnectionLimits(10.0, record, book, **limits)}

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"method": request.method, "body": body.decode()})

    async def large(request: Request) -> Response:
        """In one write, or in chunks: the app then waits for the client between them."""
        chunks = int(request.query_params.get("chunks", "1"))
        if chunks == 1:
            return Response(b"x" * LARGE_BODY_BYTES, media_type="application/octet-stream")
        chunk = b"x" * (LARGE_BODY_BYTES // chunks)
        return StreamingResponse(iter([chunk] * chunks), media_type="application/octet-stream")

    routes = [
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/echo", echo, methods=["GET", "POST"]),
        Route("/large", large),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
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


def responses(stream: bytes) -> list[tuple[int, bytes]]:
    """Each (status, body) of the responses one after another on a connection."""
    answered = []
    while stream:
        head, _, stream = stream.partition(b"\r\n\r\n")
        length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
        assert length is not None, head
        size = int(length.group(1))
        answered.append((int(head.split(b" ", 2)[1]), stream[:size]))
        stream = stream[size:]
    return answered


UPGRADE_OFFERS = [
    b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n",
    b"Upgrade: foo/2\r\nConnection: upgrade\r\n",
]


@pytest.mark.parametrize("offer", UPGRADE_OFFERS, ids=["h2c", "websocket", "other"])
def test_an_upgrade_offer_is_declined_and_the_request_served_as_http_1_1(offer: bytes) -> None:
    """curl --http2, Java's HttpClient and Spring's RestClient offer h2c on ordinary POSTs."""
    record = RequestRecord(Metrics(), log_requests=False)
    keys = ApiKeys([], [])
    early = EarlyRefusal(QueueFull(), keys, Running(), record, tracing=False)
    payload = b'{"instances": [[0, 1, 2]]}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    requests = [
        b"POST /echo HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s"
        % (offer, len(payload), payload),
        b"POST /echo HTTP/1.1\r\nHost: x\r\n%sTransfer-Encoding: chunked\r\n\r\n%s"
        % (offer, chunked),
        b"GET /echo HTTP/1.1\r\nHost: x\r\n%s\r\n" % offer,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    ]
    with serving(early, record, keys) as (port, _):
        # All four on one connection, sent at once, then again in small pieces: each answered in
        # turn, bodies whole, and the connection still reads requests after the offers.
        for pieces in ([b"".join(requests)], [bytes([b]) for b in b"".join(requests)]):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                for piece in pieces:
                    connection.sendall(piece)
                answers = b"\r\n\r\n".join(answer_until_closed(connection))
            answered = responses(answers)
            assert [status for status, _ in answered] == [200] * 4, answers
            bodies = [json.loads(body) for _, body in answered]
            assert bodies == [
                {"method": "POST", "body": payload.decode()},
                {"method": "POST", "body": payload.decode()},
                {"method": "GET", "body": ""},
                {"method": "POST", "body": "ok"},
            ]
            assert b"101 Switching" not in answers


@pytest.mark.parametrize(
    ("padding", "status"),
    [
        (b"X-Padding: " + b"a" * (MAX_HEAD_BYTES - 2000) + b"\r\n", 200),
        (b"X-Padding: " + b"a" * (MAX_HEAD_BYTES + 2000) + b"\r\n", 431),
        (b"X-A: " + b"a" * 40_000 + b"\r\nX-B: " + b"b" * 40_000 + b"\r\n", 431),
    ],
    ids=["under", "just-over", "two-halves"],
)
def test_a_head_over_the_limit_is_refused_however_it_arrives(padding: bytes, status: int) -> None:
    """Sent in one write, a head a little over the limit is parsed whole before the bytes read
    could be counted: the limit is checked on the parsed head too. (A head still arriving past
    the limit is refused as it arrives: tests/service/test_faults.py.)"""
    record = RequestRecord(Metrics(), log_requests=False)
    keys = ApiKeys([], [])
    early = EarlyRefusal(QueueFull(), keys, Running(), record, tracing=False)
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\n%sContent-Length: 2\r\n\r\nok" % padding
    long_url = b"GET /echo?%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"q" * (MAX_HEAD_BYTES + 10))
    with serving(early, record, keys) as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(request)
            if status == 200:
                connection.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answered = responses(b"\r\n\r\n".join(answer_until_closed(connection)))
        assert answered[0][0] == status
        if status == 200:
            assert [code for code, _ in answered] == [200, 200]
        else:
            assert len(answered) == 1  # and the connection closed
            assert json.loads(answered[0][1])["code"] == "headers_too_large"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(long_url)
            (code, body), *_ = responses(b"\r\n\r\n".join(answer_until_closed(connection)))
        assert (code, json.loads(body)["code"]) == (414, "uri_too_long")


HEADS = {
    # What HTTP/1 allows: served, and the connection reads the next request.
    b"GET /echo HTTP/1.1\r\nHost: example.com:8080\r\n\r\n": 200,
    b"GET /echo HTTP/1.1\r\nHost: [::1]:80\r\n\r\n": 200,
    b"GET /echo HTTP/1.1\r\nHost: 10.0.0.7\r\n\r\n": 200,
    b"GET /echo HTTP/1.1\r\nHost:\r\n\r\n": 200,  # a target without an authority
    b"GET /echo HTTP/1.0\r\n\r\n": 200,  # 1.0 needs no Host (uvicorn then closes)
    # What llhttp parses and HTTP/1 forbids: 400, and the connection closed.
    b"GET /echo HTTP/1.1\r\n\r\n": 400,
    b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n": 400,
    b"GET /echo HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n": 400,
    b"GET /echo HTTP/1.1\r\nHost: user@example.com\r\n\r\n": 400,
    b"GET /echo HTTP/1.1\r\nHost: example.com/path\r\n\r\n": 400,
    b"GET /echo HTTP/1.1\r\nHost: a b\r\n\r\n": 400,
    b"GET /echo HTTP/1.1\r\nHost: example.com:80x\r\n\r\n": 400,
    b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n": 400,
    b"GET /echo HTTP/0.9\r\nHost: x\r\n\r\n": 400,
    b"POST /v1/predict HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}": 400,  # before admission
    # Two of a field that takes one value: the app read the first, a proxy maybe the other.
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"content-type: text/plain\r\nContent-Length: 2\r\n\r\n{}": 400,
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Request-Timeout-Ms: 5\r\n"
    b"X-Request-Timeout-Ms: 5000\r\n\r\n": 400,
    b"GET /echo HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: 2\r\n"
    b"Inference-Header-Content-Length: 3\r\n\r\n": 400,
    b"GET /echo HTTP/1.1\r\nHost: x\r\nAccept: a/b\r\nAccept: c/d\r\n\r\n": 200,  # a list
}


def test_heads_http_1_forbids_are_refused_and_the_rest_served() -> None:
    """RFC 9112 section 3.2: a 1.1 request without Host, or any with two or an invalid one, is
    a 400 (a proxy in front may have routed by another Host than the one the app sees); so is
    one with two of a field that takes one value, such as Content-Type."""
    metrics = Metrics()
    record = RequestRecord(metrics, log_requests=False)
    keys = ApiKeys([], [])
    early = EarlyRefusal(QueueFull(), keys, Running(), record, tracing=False)
    with serving(early, record, keys) as (port, reached):
        for head, status in HEADS.items():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                connection.sendall(head)
                if status == 200:
                    connection.sendall(
                        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                stream = b"\r\n\r\n".join(answer_until_closed(connection))
            answered = responses(stream)
            if status == 200:
                served = [200] if b"HTTP/1.0" in head else [200, 200]
                assert [code for code, _ in answered] == served, (head, stream)
                continue
            assert len(answered) == 1, (head, stream)  # and the connection closed
            code, body = answered[0]
            assert (code, json.loads(body)["code"]) == (400, "malformed_request"), (head, stream)
            assert b"x-request-id: " in stream.lower()
    assert reached == []
    text = metrics.render()[0].decode()
    refused = sum(status == 400 for status in HEADS.values())
    assert metric(text, "http_requests_total", status="400") == refused


def test_at_the_connection_limit_the_longest_idle_connection_gives_way() -> None:
    """A client holding sockets it does not use loses them to new clients: idle ones are closed,
    one still sending a request's head is answered 503. A connection whose request the app has
    is never closed for room, and a newcomer finding none idle is closed."""
    record = RequestRecord(Metrics(), log_requests=False)
    keys = ApiKeys([], [])
    early = EarlyRefusal(QueueFull(), keys, Running(), record, tracing=False)
    shed: list[str] = []
    book = ConnectionBook(4, on_shed=shed.append)
    echo = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n"

    def connect() -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", port), timeout=10)
        time.sleep(0.2)  # accepted by the server, in order
        return connection

    def closed(connection: socket.socket) -> bool:
        return connection.recv(100) == b""

    def answer_to(connection: socket.socket, rest: bytes) -> bytes:
        connection.sendall(rest)
        return connection.recv(1000)

    with serving(early, record, keys, book) as (port, _), contextlib.ExitStack() as stack:
        silent = stack.enter_context(connect())
        served = stack.enter_context(connect())
        assert answer_to(served, echo + b"ok").startswith(b"HTTP/1.1 200 ")  # then keep-alive
        heading = stack.enter_context(connect())
        heading.sendall(echo[:20])  # its head half sent
        sending = stack.enter_context(connect())
        sending.sendall(echo + b"o")  # its body half sent: the app has the request
        time.sleep(0.2)
        newcomers = []
        for gives_way in (silent, served, heading):
            newcomers.append(stack.enter_context(connect()))
            if gives_way is heading:
                head, body = answer_until_closed(heading)
                assert head.startswith(b"HTTP/1.1 503 "), head
                assert b"retry-after: 1" in head.lower()
                assert json.loads(body)["code"] == "overloaded"
            else:
                assert closed(gives_way)
            newcomers[-1].sendall(echo)  # its request the app's too
        time.sleep(0.2)
        assert closed(stack.enter_context(connect()))  # none idle: the newcomer is closed
        assert answer_to(sending, b"k").startswith(b"HTTP/1.1 200 ")
        for connection in newcomers:
            assert answer_to(connection, b"ok").startswith(b"HTTP/1.1 200 ")
        assert shed == [IDLE_CLOSED] * 3 + [OVER_LIMIT]
        assert len(book) == 4


def read_until_closed(connection: socket.socket, pause_seconds: float = 0.0) -> tuple[int, bool]:
    """Bytes read, and whether the server reset the connection (else it closed it, or the read
    timed out)."""
    received = 0
    try:
        while chunk := connection.recv(1 << 20):
            received += len(chunk)
            time.sleep(pause_seconds)
    except ConnectionResetError:
        return received, True
    except TimeoutError:
        pass
    return received, False


def test_a_client_that_does_not_take_its_response_is_reset_and_the_server_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without it a client that never reads holds its connection, the request's task and the
    unsent response for ever. Its requests are pipelined: the one running is not the one
    uvicorn tells of the disconnect, and its next write used to raise on the closed transport."""
    record = RequestRecord(Metrics(), log_requests=False)
    keys = ApiKeys([], [])
    early = EarlyRefusal(QueueFull(), keys, Running(), record, tracing=False)
    stalled: list[None] = []
    get_large = b"GET /large?chunks=16 HTTP/1.1\r\nHost: x\r\n\r\n"
    limits = {"send_timeout_seconds": 1.0, "on_send_stalled": lambda: stalled.append(None)}
    with serving(early, record, keys, **limits) as (port, _):
        reader = socket.create_connection(("127.0.0.1", port), timeout=20)
        with reader, socket.socket() as sleeper:
            sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sleeper.settimeout(20)
            sleeper.connect(("127.0.0.1", port))
            sleeper.sendall(get_large * 3)
            reader.sendall(get_large.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            # Slower than the server writes, never slower than the limit.
            received, reset = read_until_closed(reader, pause_seconds=0.002)
            assert (received > LARGE_BODY_BYTES, reset) == (True, False)
            time.sleep(3)  # the sleeper took nothing for longer than the send timeout
            received, reset = read_until_closed(sleeper)
            assert (received < LARGE_BODY_BYTES, reset) == (True, True)
    assert len(stalled) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("target", [b"/large", b"/large?chunks=16"])
def test_at_the_connection_limit_a_client_that_does_not_take_its_response_gives_way(
    target: bytes,
) -> None:
    """It is as good as idle, whether its response is all written (a close would wait for it
    to read) or the app waits for it to read the rest."""
    record = RequestRecord(Metrics(), log_requests=False)
    keys = ApiKeys([], [])
    early = EarlyRefusal(QueueFull(), keys, Running(), record, tracing=False)
    shed: list[str] = []
    book = ConnectionBook(1, on_shed=shed.append)
    with serving(early, record, keys, book) as (port, _), socket.socket() as sleeper:
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sleeper.settimeout(20)
        sleeper.connect(("127.0.0.1", port))
        sleeper.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1)  # the server writes until the kernel's buffer and ours are full
        with socket.create_connection(("127.0.0.1", port), timeout=20) as newcomer:
            newcomer.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head, _ = answer_until_closed(newcomer)
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert read_until_closed(sleeper)[1]  # reset
    assert shed == [IDLE_CLOSED]
