"""`create_app(settings)`: the one place the service is wired together."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service import __version__
from service.auth import ApiKeyMiddleware, ApiKeys
from service.connections import ConnectionBook, fit_to_open_files
from service.dataplane import DataPlane
from service.docs import router as docs_router
from service.errors import ServingError, error_response, handle_serving_error
from service.fastlane import FastLane, takes_plain_parameters
from service.health import router as health_router
from service.http_protocol import LIMITS_KEY, ConnectionLimits
from service.logs import write_through
from service.metrics import UPLOADS_BEHIND, Metrics, ScrapeBudget, multiprocess_directory
from service.middleware import RequestContextMiddleware, RequestRecord
from service.overload import INFERENCE_PATH_ENDS, STATE_KEY, Admission, EarlyRefusal, OverloadGuard
from service.preparation import Preparation, cores
from service.protocols.admin import router as admin_router
from service.protocols.native import router as native_router
from service.protocols.tfserving import router as tfserving_router
from service.protocols.upload import router as upload_router
from service.protocols.v2 import health_router as v2_health_router
from service.protocols.v2 import router as v2_router
from service.runtime import import_tensorflow
from service.settings import Settings
from service.shutdown import GracefulShutdown
from service.tracing import configure_tracing
from service.web import router as web_router
from service.workers import WorkerRegistry

log = logging.getLogger("service.app")

DESCRIPTION = """
Handwritten digit recognition (MNIST) with server-side dynamic batching.

Three APIs over the same model and batcher: the native `/v1/predict`, TensorFlow Serving's REST
API (`/v1/models/{name}:predict`) and the Open Inference Protocol / KServe V2 (`/v2/...`).
Pixels follow MNIST: 28x28, 0 is background, 255 is ink.
"""


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), "http_error", dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return error_response(422, f"{where}: {first.get('msg', 'invalid request')}", "invalid_input")


class GrpcLifecycle:
    """The gRPC server, started in the background so that /healthz answers at once: its
    module takes seconds to import (service.grpc_api.server). A server that cannot start (its
    port taken) stops the process, as a taken HTTP port does."""

    def __init__(
        self,
        settings: Settings,
        plane: DataPlane,
        metrics: Metrics,
        refusing: Callable[[], bool],
    ) -> None:
        self._server: Any = None
        plane.starting.add("grpc")  # /readyz waits for the gRPC port too
        server_args = (settings, plane, metrics, refusing)
        self._task = asyncio.create_task(self._start(plane, server_args), name="grpc-start")
        self._task.add_done_callback(self._failed)

    async def _start(self, plane: DataPlane, server_args: tuple[Any, ...]) -> None:
        await asyncio.to_thread(import_tensorflow)  # in turn with the model loader's thread
        module = await asyncio.to_thread(importlib.import_module, "service.grpc_api.server")
        self._server = module.GrpcServer(*server_args)
        await self._server.start()
        plane.starting.discard("grpc")

    @staticmethod
    def _failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("gRPC could not start: %s; stopping", task.exception())
            os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task
        if self._server is not None:
            await self._server.stop()


class ServingApp(FastAPI):
    """FastAPI, with the hot routes it does not need to route taken first (service.fastlane)."""

    fast_lane: FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = None if self.fast_lane is None else self.fast_lane.lane_for(scope)
        if lane is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await lane(scope, receive, send)


def create_app(settings: Settings | None = None) -> ServingApp:
    settings = settings or Settings()
    protocols = 2 if settings.grpc_port else 1
    fitted = fit_to_open_files(settings.max_connections, protocols)
    settings = settings.model_copy(update={"max_connections": fitted})
    metrics = Metrics()
    workers = WorkerRegistry(multiprocess_directory(), settings.workers)
    tracing = configure_tracing(settings)
    plane = DataPlane(settings, metrics, workers, tracing)
    shutdown = GracefulShutdown(settings.drain_grace_seconds, on_drain=plane.start_draining)
    keys = ApiKeys(settings.api_keys, settings.admin_api_keys)
    record = RequestRecord(metrics, settings.access_log)
    admission = Admission(plane)
    early_refusal = EarlyRefusal(admission, keys, shutdown, record, tracing is not None)
    connections = ConnectionBook(
        settings.max_connections,
        on_count=metrics.http_connections.inc,
        on_shed=lambda reason: metrics.http_connections_shed.labels(reason).inc(),
    )
    limits = ConnectionLimits(
        settings.client_read_timeout_seconds,
        record,
        connections,
        settings.retry_after_seconds,
        send_timeout_seconds=settings.client_send_timeout_seconds,
        on_send_stalled=metrics.http_send_stalls.inc,
    )
    preparation = Preparation(
        cores(),
        on_refused=lambda: metrics.rejected.labels(UPLOADS_BEHIND).inc(),
        on_dropped=lambda reason: metrics.dropped.labels(reason).inc(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # The model loads in the background: the app starts answering /healthz at once.
        await plane.start()
        grpc = None
        if settings.grpc_port:
            grpc = GrpcLifecycle(settings, plane, metrics, lambda: shutdown.refusing)
        shutdown.install()
        try:
            yield {STATE_KEY: early_refusal, LIMITS_KEY: limits}  # for service.http_protocol
        finally:
            write_through()  # uvicorn may end the process before the next periodic flush
            if grpc is not None:  # its accepted calls finish while the plane still runs
                await grpc.stop()
            await plane.stop()
            preparation.close()
            if tracing is not None:
                tracing.shutdown()

    app = ServingApp(
        title="mnist-serving",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.docs serves /docs and /redoc without a CDN
        redoc_url=None,
        exception_handlers={
            ServingError: handle_serving_error,
            HTTPException: _http_error,
            RequestValidationError: _validation_error,
        },
    )
    app.state.settings = settings
    app.state.dataplane = plane
    app.state.metrics = metrics
    app.state.preparation = preparation
    routers = (health_router, v2_health_router, native_router, upload_router, tfserving_router)
    for router in (*routers, v2_router, admin_router, web_router, docs_router):
        # The routers carry no dependencies, so their routes join the app's own list as they
        # are: FastAPI's `include_router` dispatch through nested routers cost ~5% of
        # single-image throughput, re-walking each router's routes per request.
        app.router.routes.extend(router.routes)

    def render_metrics() -> tuple[bytes, str]:
        workers.reap()
        return metrics.render()

    scrapes = ScrapeBudget(render_metrics)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = scrapes.body()
        return Response(body, media_type=content_type)

    # Added first, so they run inside the request context: refusals get an id, metrics and a
    # log. Keys are checked before overload: without a key, a client learns nothing more.
    app.add_middleware(OverloadGuard, admission=admission)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    app.add_middleware(RequestContextMiddleware, record=record, shutdown=shutdown, tracing=tracing)
    app.fast_lane = FastLane(app.router.routes, keys, record, shutdown, tracing)
    for route in app.router.routes:
        if (
            isinstance(route, APIRoute)
            and route.methods == {"POST"}
            and route.path.endswith(INFERENCE_PATH_ENDS)
            and takes_plain_parameters(route)  # all but the image upload
        ):
            app.fast_lane.take(route)
    return app
