"""The gRPC server: in the same process and event loop as the REST app, on its own port
(`MNIST_GRPC_PORT`, 8500; 0 turns it off), over the same data plane.

Besides `inference.GRPCInferenceService` it serves the standard health service
(`grpc.health.v1.Health`: service "" is liveness, "inference.GRPCInferenceService" readiness,
NOT_SERVING from the shutdown signal on, so Kubernetes' `grpc:` probes and grpc_health_probe
work) and server reflection (grpcurl needs no .proto files). `CallRecorder` wraps every unary
call with what the REST middleware does per request: API keys (`authorization: Bearer` or
`x-api-key` metadata), the request id (`x-request-id`, echoed in trailing metadata), metrics
and the access log line.

With `--workers N` every worker binds the same port: gRPC sets SO_REUSEPORT on Linux, and the
kernel spreads connections over the workers.

Importing this module takes seconds (TensorFlow Serving's messages are TensorFlow's, and the
.proto files are compiled): the app imports it in a worker thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from service.auth import _matches as key_matches
from service.auth import presented_key
from service.dataplane import DataPlane
from service.grpc_api.protos import inference_grpc
from service.grpc_api.tfserving import ModelService, PredictionService
from service.grpc_api.tfserving_protos import tfserving_grpc
from service.grpc_api.v2 import InferenceService
from service.metrics import Metrics
from service.middleware import new_request_id
from service.settings import Settings

log = logging.getLogger("service.grpc")
access_log = logging.getLogger("service.access")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
TFSERVING_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
READINESS_POLL_SECONDS = 0.5


class CallRecorder:
    """Wraps each unary method handler once, when it is registered, with what the REST
    middleware does per request: API keys, the request id, metrics and the access log line.

    Not a `grpc.aio.ServerInterceptor`: grpc.aio awaits an interceptor for every call, which then
    builds a new method handler for it; wrapped at registration, a call pays only for the work
    itself (single images at concurrency 64: +3% calls/s, A B A B with h2load, close to the
    noise; the work itself, mostly the log line, is the other ~10%).
    """

    def __init__(self, metrics: Metrics, api_keys: list[str], admin_keys: list[str]) -> None:
        self.metrics = metrics
        self.keys = [k.encode() for k in [*api_keys, *admin_keys]]

    def register(
        self, server: grpc.aio.Server, add_to_server: Callable[..., None], servicer: Any
    ) -> None:
        """`add_to_server(servicer, server)`, the generated registration, with every unary
        handler wrapped."""
        add_to_server(servicer, _WrappingRegistry(server, self.wrap))

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        guarded = bool(self.keys) and not method.startswith(OPEN_SERVICES)
        counted = self.metrics.grpc_requests
        by_code: dict[grpc.StatusCode, Any] = {}
        duration = self.metrics.grpc_duration.labels(method)

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = dict(context.invocation_metadata() or ())
            request_id = new_request_id(metadata.get("x-request-id"))
            context.set_trailing_metadata((("x-request-id", request_id),))
            try:
                if guarded:
                    await self._check_key(metadata, context)
                return await inner(request, context)
            finally:
                code = context.code() or grpc.StatusCode.OK
                if not isinstance(code, grpc.StatusCode):
                    code = grpc.StatusCode.UNKNOWN
                elapsed = time.perf_counter() - started
                counter = by_code.get(code)
                if counter is None:
                    counter = by_code[code] = counted.labels(method, code.name)
                counter.inc()
                duration.observe(elapsed)
                access_log.info(
                    "grpc",
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "code": code.name,
                        "latency_ms": round(elapsed * 1000, 3),
                    },
                )

        return grpc.unary_unary_rpc_method_handler(
            call,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _check_key(self, metadata: dict[str, Any], context: grpc.aio.ServicerContext) -> None:
        headers = [(k.encode(), str(v).encode()) for k, v in metadata.items()]
        key = presented_key(headers)
        if key is None or not key_matches(key, self.keys):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "an API key is required: send 'authorization: Bearer <key>' or 'x-api-key: <key>'"
                if key is None
                else "the API key is not valid",
            )


class _WrappingRegistry:
    """What the generated `add_*_to_server` functions see as the server: they register each
    service twice (generic and pre-registered handlers); both get the wrapped handlers."""

    def __init__(
        self,
        server: grpc.aio.Server,
        wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler],
    ) -> None:
        self.server = server
        self.wrap = wrap

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Covered by `add_registered_method_handlers`, which gets the same methods by name."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {name: self.wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )
        self.server.add_registered_method_handlers(service, wrapped)


class ReadinessHealth(health_aio.HealthServicer):  # type: ignore[misc]
    """The standard health service, answering Check for the inference service from the data
    plane's readiness as it is now (Watch streams follow the poller below): a probe never
    sees a readiness older than /readyz's."""

    def __init__(self, plane: DataPlane) -> None:
        super().__init__()
        self.plane = plane
        self.shutting_down = False

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if request.service == INFERENCE_SERVICE and not self.shutting_down:
            status = health_pb2.HealthCheckResponse
            ready = self.plane.ready
            return status(status=status.SERVING if ready else status.NOT_SERVING)
        return await super().Check(request, context)


class GrpcServer:
    def __init__(self, settings: Settings, plane: DataPlane, metrics: Metrics) -> None:
        self.settings = settings
        self.plane = plane
        message_bytes = settings.grpc_max_message_bytes
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", message_bytes),
                ("grpc.max_send_message_length", message_bytes),
                # Several workers share the port; a lone server must not share it by accident.
                ("grpc.so_reuseport", int(settings.workers > 1)),
            ],
        )
        recorder = CallRecorder(metrics, settings.api_keys, settings.admin_api_keys)
        self.health = ReadinessHealth(plane)
        for add_to_server, servicer in (
            (
                inference_grpc.add_GRPCInferenceServiceServicer_to_server,
                InferenceService(plane, settings),
            ),
            (
                tfserving_grpc.add_PredictionServiceServicer_to_server,
                PredictionService(plane, settings),
            ),
            (tfserving_grpc.add_ModelServiceServicer_to_server, ModelService(plane)),
            (health_pb2_grpc.add_HealthServicer_to_server, self.health),
        ):
            recorder.register(self.server, add_to_server, servicer)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, *TFSERVING_SERVICES,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )  # fmt: skip
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._watcher = asyncio.create_task(self._track_readiness(), name="grpc-readiness")
        log.info("gRPC on %s:%d", self.settings.host, self.port)

    async def _track_readiness(self) -> None:
        serving = None
        while True:
            ready = self.plane.ready
            if ready != serving:
                status = health_pb2.HealthCheckResponse
                await self.health.set(
                    INFERENCE_SERVICE, status.SERVING if ready else status.NOT_SERVING
                )
                serving = ready
            await asyncio.sleep(READINESS_POLL_SECONDS)

    async def stop(self) -> None:
        """Refuse new calls, let accepted ones finish (within the shutdown budget)."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self.health.shutting_down = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_timeout_seconds)
