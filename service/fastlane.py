"""The inference routes without the generic framework around them.

On FastAPI's path a request passes through Starlette's and FastAPI's own middleware (error pages,
telemetry, body limits, exit stacks), the router and FastAPI's per-request parameter solving.
The inference routes need none of it: they take the request and plain string parameters, read
their own body, raise `ServingError`s and return a finished `Response`. Sending them straight to
their endpoint raised single-image requests/s at concurrency 64 by ~35% (A B A B, README).

They still pass through the same per-request bookkeeping as every other request
(`RequestContextMiddleware`: request id, metrics, access log, tracing, the drain's rules) and the
same API key check; their `ServingError`s are answered by the app's own handler, and anything
else by the bookkeeping's 500, as on the full path. The router's own walk decides, once per
method and path, which route a request goes to, so the lane never answers a request the full
path would have routed elsewhere.
"""

from __future__ import annotations

import typing
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import ApiKeyMiddleware, ApiKeys
from service.errors import ServingError, handle_serving_error
from service.middleware import (
    RequestContextMiddleware,
    RequestRecord,
    ShutdownState,
    remember_template,
)
from service.tracing import Tracing

_ROUTES_CACHED = 1024
"""Paths are the client's: the memo of which path goes where is bounded."""


class _Endpoint:
    """One route's endpoint as the innermost ASGI app: its path parameters as the router found
    them, its optional string query parameters as FastAPI reads them (the last of repeated
    ones), and its `ServingError`s answered as the app's exception handler answers them."""

    def __init__(self, route: APIRoute) -> None:
        dependant = route.dependant
        self.route = route
        self.endpoint = route.endpoint
        self.request_name = dependant.request_param_name or "request"
        self.query_names = [field.name for field in dependant.query_params]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # the route template of the metrics and the access log
        request = Request(scope, receive, send)
        arguments: dict[str, Any] = {self.request_name: request, **scope["path_params"]}
        if self.query_names:
            query = request.query_params
            for name in self.query_names:
                arguments[name] = query.get(name)
        try:
            response: Response = await self.endpoint(**arguments)
        except ServingError as exc:
            response = await handle_serving_error(request, exc)
        await response(scope, receive, send)


def takes_plain_parameters(route: APIRoute) -> bool:
    """Whether FastAPI would add nothing to calling the endpoint directly: no dependencies, no
    body, header or cookie parameters, path parameters that are strings, query parameters that
    are optional strings, and a `Response` returned as it is."""
    dependant = route.dependant
    if (
        dependant.dependencies
        or dependant.body_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.request_param_name is None
        or dependant.response_param_name is not None
        or dependant.background_tasks_param_name is not None
        or dependant.http_connection_param_name is not None
        or dependant.websocket_param_name is not None
        or dependant.security_scopes_param_name is not None
    ):
        return False
    returns = typing.get_type_hints(route.endpoint).get("return")
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        return False
    plain_path = all(
        f.field_info.annotation is str and f.alias == f.name for f in dependant.path_params
    )
    plain_query = all(
        f.field_info.annotation == str | None and f.default is None and f.alias == f.name
        for f in dependant.query_params
    )
    return plain_path and plain_query


class FastLane:
    def __init__(
        self,
        routes: list[BaseRoute],
        keys: ApiKeys,
        record: RequestRecord,
        shutdown: ShutdownState,
        tracing: Tracing | None,
    ) -> None:
        self._all_routes = routes
        self._keys = keys
        self._record = record
        self._shutdown = shutdown
        self._tracing = tracing
        self._lanes: dict[int, tuple[ASGIApp, str]] = {}
        """By the route's id: its lane and its path template."""
        self._memo: dict[tuple[str, str], tuple[ASGIApp, str, dict[str, Any]] | None] = {}

    def take(self, route: APIRoute) -> None:
        """Serve `route` on the lane; it must take plain parameters."""
        if not takes_plain_parameters(route):
            raise ValueError(f"{route.path} needs FastAPI's parameter handling")
        inner = ApiKeyMiddleware(_Endpoint(route), keys=self._keys)
        lane = RequestContextMiddleware(
            inner, record=self._record, shutdown=self._shutdown, tracing=self._tracing
        )
        self._lanes[id(route)] = lane, route.path

    @property
    def templates(self) -> set[str]:
        """The path templates of the routes on the lane."""
        return {template for _, template in self._lanes.values()}

    def lane_for(self, scope: Scope) -> ASGIApp | None:
        """The lane's app for this request, with its path parameters set in `scope`; None
        leaves it to the full path. A request under a root path (a proxy's prefix) takes the
        full path, whose routing strips it."""
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        key = scope["method"], scope["path"]
        try:
            found = self._memo[key]
        except KeyError:
            found = self._route(scope)
            if len(self._memo) >= _ROUTES_CACHED:
                self._memo.clear()
            self._memo[key] = found
        if found is None:
            return None
        lane, template, path_params = found
        # Refusals on the lane happen after routing: the HTTP protocol's early refusal
        # (service.overload) learns the path's template here instead (again after its own
        # bounded memo was cleared).
        remember_template(key[0], key[1], template)
        scope["path_params"] = dict(path_params)
        return lane

    def _route(self, scope: Scope) -> tuple[ASGIApp, str, dict[str, Any]] | None:
        """The route the router would pick (the first full match), if it is on the lane."""
        for route in self._all_routes:
            match, child = route.matches(scope)
            if match == Match.FULL:
                if id(route) not in self._lanes:
                    return None
                lane, template = self._lanes[id(route)]
                return lane, template, child.get("path_params", {})
        return None
