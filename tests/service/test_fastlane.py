"""The fast lane answers exactly as FastAPI's full path does, on every inference route.

One app, one loaded model: each request is sent twice, once with the lane and once with it off,
and the two answers must agree in status, body, the headers a client acts on, and metrics.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import pytest
from fastapi import APIRouter, Depends, Header
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from service.app import ServingApp, create_app
from service.auth import ApiKeys
from service.fastlane import FastLane, takes_plain_parameters
from service.metrics import Metrics
from service.middleware import RequestRecord, known_template
from service.params import TIMEOUT_HEADER
from service.settings import Settings
from tests.service.test_errors import CASES, FLAT, body, v2
from tests.service.test_middleware import Running
from tests.service.test_server import metric

KEY = "lane-key"
JSON = "application/json"
RAW = "application/octet-stream"
ACTED_ON = ("content-type", "retry-after", "www-authenticate", "connection", "x-request-id")


def npy(images: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, images)
    return buffer.getvalue()


def requests(digits: np.ndarray) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(id, path, body, headers): every inference route, answered and refused."""
    pixels = digits[:2].astype(np.uint8)
    nested = {"instances": pixels.tolist()}
    keyed = {"x-api-key": KEY, "content-type": JSON}
    cases = [
        (f"error-{case[0]}", case[1], case[2], {**keyed, "content-type": case[3]}) for case in CASES
    ]
    return [
        *cases,
        ("native", "/v1/predict", body(nested), keyed),
        ("native-raw", "/v1/predict", pixels.tobytes(), {**keyed, "content-type": RAW}),
        ("native-npy", "/v1/predict", npy(pixels), {**keyed, "content-type": "application/x-npy"}),
        ("native-version", "/v1/predict?version=1", body(nested), keyed),
        ("native-repeated-query", "/v1/predict?version=x&version=1", body(nested), keyed),
        ("native-bad-version", "/v1/predict?version=%C2%B2", body(nested), keyed),
        ("native-empty-version", "/v1/predict?version=", body(nested), keyed),
        ("native-version-and-label", "/v1/predict?version=1&label=a", body(nested), keyed),
        ("native-unknown-label", "/v1/predict?label=stable", body(nested), keyed),
        ("native-long-label", "/v1/predict?label=" + "a" * 500, body(nested), keyed),
        ("native-no-key", "/v1/predict", body(nested), {"content-type": JSON}),
        ("native-wrong-key", "/v1/predict", body(nested), {**keyed, "x-api-key": "nope"}),
        ("native-bearer", "/v1/predict", body(nested), {"authorization": f"Bearer {KEY}"}),
        ("native-bad-timeout", "/v1/predict", body(nested), {**keyed, TIMEOUT_HEADER: "soon"}),
        ("native-request-id", "/v1/predict", body(nested), {**keyed, "x-request-id": "lane-1"}),
        ("native-raw-ragged", "/v1/predict", b"\0" * 785, {**keyed, "content-type": RAW}),
        ("tfs", "/v1/models/mnist:predict", body(nested), keyed),
        ("tfs-version", "/v1/models/mnist/versions/1:predict", body(nested), keyed),
        ("tfs-superscript", "/v1/models/mnist/versions/%C2%B2:predict", body(nested), keyed),
        ("tfs-label", "/v1/models/mnist/labels/stable:predict", body(nested), keyed),
        ("tfs-no-key", "/v1/models/mnist:predict", body(nested), {"content-type": JSON}),
        ("v2", "/v2/models/mnist/infer", v2(pixels.reshape(2, -1).tolist(), (2, 784)), keyed),
        ("v2-version", "/v2/models/mnist/versions/1/infer", v2(FLAT, (1, 784)), keyed),
        ("v2-huge-version", "/v2/models/mnist/versions/" + "9" * 5000 + "/infer", b"{}", keyed),
        ("v2-unknown", "/v2/models/fashion/versions/1/infer", v2(FLAT, (1, 784)), keyed),
    ]


@pytest.fixture(scope="module")
def app(trained_repository: Path) -> ServingApp:
    settings = Settings(
        model_repository=trained_repository,
        grpc_port=0,
        api_keys=[KEY],
        max_request_images=4,
        max_body_bytes=400_000,
        model_poll_seconds=0.2,
    )
    return create_app(settings)


async def both_ways(
    app: ServingApp, path: str, content: bytes, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    lane = app.fast_lane
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        try:
            on_lane = await client.post(path, content=content, headers=headers)
            app.fast_lane = None
            off_lane = await client.post(path, content=content, headers=headers)
        finally:
            app.fast_lane = lane
    return on_lane, off_lane


def test_every_request_is_answered_the_same_on_and_off_the_lane(
    app: ServingApp, digits: np.ndarray
) -> None:
    plane = app.state.dataplane
    metrics = app.state.metrics

    async def run() -> list[tuple[str, httpx.Response, httpx.Response, str]]:
        await plane.start()
        try:
            for _ in range(600):
                if plane.served:
                    break
                await asyncio.sleep(0.1)
            assert plane.served, "the tiny model never loaded"
            answers = []
            for name, path, content, headers in requests(digits):
                on_lane, off_lane = await both_ways(app, path, content, headers)
                answers.append((name, on_lane, off_lane, metrics.render()[0].decode()))
            return answers
        finally:
            await plane.stop()

    seen: dict[tuple[str, str], float] = {}
    for name, on_lane, off_lane, text in asyncio.run(run()):
        assert on_lane.status_code == off_lane.status_code, (name, on_lane.text, off_lane.text)
        assert on_lane.status_code < 500, (name, on_lane.text)
        assert on_lane.json() == off_lane.json(), name
        for header in ACTED_ON:
            if header == "x-request-id" and "x-request-id" not in on_lane.request.headers:
                assert on_lane.headers[header] != off_lane.headers[header], name  # fresh ids
                continue
            assert on_lane.headers.get(header) == off_lane.headers.get(header), (name, header)
        # Both counted, under the same route template.
        route = _template(app, on_lane.request.url.path)
        status = str(on_lane.status_code)
        count = metric(text, "http_requests_total", method="POST", route=route, status=status)
        assert count - seen.get((route, status), 0) == 2, name
        seen[route, status] = count
    assert seen[("/v1/predict", "200")] >= 2 * 5


def _template(app: ServingApp, path: str) -> str:
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match.name == "FULL":
            return str(getattr(route, "path"))  # noqa: B009 (routes are typed as BaseRoute)
    raise AssertionError(f"no route for {path}")


def test_the_inference_routes_with_plain_parameters_take_the_lane(app: ServingApp) -> None:
    lane = app.fast_lane
    assert lane is not None
    on_lane = [
        "/v1/predict",
        "/v1/models/mnist:predict",
        "/v1/models/mnist/versions/3:predict",
        "/v1/models/mnist/labels/stable:predict",
        "/v2/models/mnist/infer",
        "/v2/models/mnist/versions/3/infer",
    ]
    for path in on_lane:
        scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path, "root_path": ""}
        assert lane.lane_for(scope) is not None, path
        assert known_template("POST", path) is not None, path  # for the early refusal
    assert (
        lane.lane_for({"type": "http", "method": "POST", "path": "/v2/models/m/versions/3/infer"})
        is not None
    )
    off_lane = [
        ("POST", "/v1/predict/image"),  # a typed query parameter: FastAPI checks it
        ("GET", "/v1/predict"),  # 405 from the router
        ("POST", "/v1/predict/"),  # the router's slash redirect
        ("GET", "/v1/models/mnist"),
        ("POST", "/v1/admin/reload"),
        ("POST", "/nowhere"),
    ]
    for method, path in off_lane:
        assert lane.lane_for({"type": "http", "method": method, "path": path}) is None, path
    behind_proxy = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/predict",
        "root_path": "/api",
    }
    assert lane.lane_for(behind_proxy) is None


def test_a_route_that_needs_fastapi_cannot_take_the_lane(app: ServingApp) -> None:
    routes = {r.path: r for r in app.router.routes if isinstance(r, APIRoute)}
    upload = routes["/v1/predict/image"]
    assert not takes_plain_parameters(upload)
    lane = FastLane(app.router.routes, ApiKeys([], []), RequestRecord(Metrics()), Running(), None)
    with pytest.raises(ValueError, match="/v1/predict/image"):
        lane.take(upload)
    lane.take(routes["/v2/models/{name}/infer"])
    assert lane.templates == {"/v2/models/{name}/infer"}


def _route_of(endpoint: Callable[..., Any], path: str = "/x/{name}") -> APIRoute:
    router = APIRouter()
    router.add_api_route(path, endpoint, methods=["POST"])
    route = router.routes[0]
    assert isinstance(route, APIRoute)
    return route


async def plain(request: Request, name: str, version: str | None = None) -> Response:
    return Response()


async def typed_path(request: Request, name: int) -> Response:
    return Response()


async def required_query(request: Request, name: str, version: str) -> Response:
    return Response()


async def with_dependency(
    request: Request, name: str, user: Annotated[str, Depends(lambda: "u")]
) -> Response:
    return Response()


async def with_header(request: Request, name: str, x_token: Annotated[str, Header()]) -> Response:
    return Response()


async def returns_data(request: Request, name: str) -> dict[str, str]:
    return {}


async def without_request(name: str) -> Response:
    return Response()


@pytest.mark.parametrize(
    ("endpoint", "plain_enough"),
    [
        (plain, True),
        (typed_path, False),
        (required_query, False),
        (with_dependency, False),
        (with_header, False),
        (returns_data, False),
        (without_request, False),
    ],
)
def test_only_endpoints_fastapi_adds_nothing_to_take_plain_parameters(
    endpoint: Callable[..., Any], plain_enough: bool
) -> None:
    assert takes_plain_parameters(_route_of(endpoint)) is plain_enough


def test_the_requests_above_cover_every_route_on_the_lane(
    app: ServingApp, digits: np.ndarray
) -> None:
    covered = {_template(app, httpx.URL("http://t" + r[1]).path) for r in requests(digits)}
    lane = app.fast_lane
    assert lane is not None
    assert len(lane.templates) == 6
    assert lane.templates <= covered, lane.templates - covered
