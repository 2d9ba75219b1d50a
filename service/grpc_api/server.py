"""The gRPC server: in the same process and event loop as the REST app, on its own port
(`MNIST_GRPC_PORT`, 8500; 0 turns it off), over the same data plane.

Besides `inference.GRPCInferenceService` it serves the standard health service
(`grpc.health.v1.Health`: service "" is liveness, "inference.GRPCInferenceService" readiness,
NOT_SERVING from the shutdown signal on, so Kubernetes' `grpc:` probes and grpc_health_probe
work) and server reflection (grpcurl needs no .proto files). `CallRecorder` wraps every unary
call with what the REST middleware does per request: API keys (`authorization: Bearer` or
`x-api-key` metadata), the request id (`x-request-id`, echoed in trailing metadata), metrics
and the access log line; every handler parses its own request (`service.grpc_api.parsing`), so
a malformed message is INVALID_ARGUMENT.

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
from typing import Any, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service.auth import _matches as key_matches
from service.auth import presented_key
from service.dataplane import DataPlane
from service.grpc_api.parsing import parse_request, parsing_streams
from service.grpc_api.protos import inference_grpc
from service.grpc_api.tfserving import ModelService, PredictionService
from service.grpc_api.tfserving_protos import tfserving_grpc
from service.grpc_api.v2 import InferenceService
from service.logs import AccessLog
from service.metrics import Metrics
from service.middleware import new_request_id
from service.settings import Settings

log = logging.getLogger("service.grpc")
GRPC_CORE_LOGGER = "grpc._cython.cygrpc"
access_log = AccessLog("service.access")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
TFSERVING_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
READINESS_POLL_SECONDS = 0.5
GRPC_IDLE_CONNECTION_MS = 5 * 60 * 1000
"""A connection with no call this long gets a GOAWAY; a client reconnects on its next call."""
GRPC_KEEPALIVE_MS = 60 * 1000
"""How often the server pings a connection: one whose client stopped reading misses the answer."""
GRPC_STREAMS_PER_CONNECTION = 256
OPEN_SERVICE_CALLS = 64
"""Calls kept for health checks and reflection when the others are at their limit."""
REFLECTED = (
    INFERENCE_SERVICE,
    *TFSERVING_SERVICES,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class CallRecorder:
    """Wraps each unary method handler once, when it is registered, with what the REST
    middleware does per request: API keys, the request id, metrics and the access log line.

    Not a `grpc.aio.ServerInterceptor`: grpc.aio awaits an interceptor for every call, which then
    builds a new method handler for it; wrapped at registration, a call pays only for the work
    itself (single images at concurrency 64: +3% calls/s, A B A B with h2load, close to the
    noise; the work itself, mostly the log line, is the other ~10%).

    Unary methods are registered as client-streaming ones, which the wire cannot tell apart, so
    that the handler runs when the call arrives, not once its message has: the message must
    arrive within `MNIST_CLIENT_READ_TIMEOUT_SECONDS`, as an HTTP request's body must. Registered
    as unary, a call that sent its headers and then nothing was held until the client left: 3,000
    such calls held 44 MiB, and nothing bounded their number or their time.
    """

    def __init__(
        self,
        metrics: Metrics,
        api_keys: list[str],
        admin_keys: list[str],
        read_timeout_seconds: float,
        max_calls: int,
        retry_after_seconds: int,
        refusing: Callable[[], bool],
    ) -> None:
        self.metrics = metrics
        self.refusing = refusing
        self.keys = [k.encode() for k in [*api_keys, *admin_keys]]
        self.read_timeout = read_timeout_seconds
        self.max_calls = max_calls
        self.retry_after = str(retry_after_seconds)
        self._calls = 0
        self._receiving: dict[asyncio.Task[Any] | None, float] = {}
        self._overdue: set[asyncio.Task[Any]] = set()

    def register(
        self, server: grpc.aio.Server, add_to_server: Callable[..., None], servicer: Any
    ) -> None:
        """`add_to_server(servicer, server)`, the generated registration, with every unary
        handler wrapped."""
        registry = _WrappingRegistry(server, self.wrap)
        add_to_server(servicer, registry)
        if not registry.registered:  # generated by a grpcio-tools too old to pre-register
            raise RuntimeError(f"{add_to_server.__qualname__} registered no method handlers")

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary is None:
            return parsing_streams(handler)
        inner = handler.unary_unary
        parse = handler.request_deserializer
        open_service = method.startswith(OPEN_SERVICES)
        guarded = bool(self.keys) and not open_service
        counted = self.metrics.grpc_requests
        by_code: dict[grpc.StatusCode, Any] = {}
        duration = self.metrics.grpc_duration.labels(method)

        async def call(_: object, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = dict(context.invocation_metadata() or ())
            request_id = new_request_id(metadata.get("x-request-id"))
            context.set_trailing_metadata((("x-request-id", request_id),))
            counted_in = False
            try:
                if not open_service:
                    await self._check_room(context, request_id)
                    self._calls += 1
                    counted_in = True
                if guarded:
                    await self._check_key(metadata, context)
                raw = await self._receive(context)
                return await inner(await parse_request(parse, raw, context), context)
            finally:
                if counted_in:
                    self._calls -= 1
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
                    {
                        "request_id": request_id,
                        "method": method,
                        "code": code.name,
                        "latency_ms": round(elapsed * 1000, 3),
                    },
                )

        return grpc.stream_unary_rpc_method_handler(
            call, response_serializer=handler.response_serializer
        )

    async def _check_room(self, context: grpc.aio.ServicerContext, request_id: str) -> None:
        """Refuses a call past `MNIST_GRPC_MAX_CONCURRENT_CALLS` in progress (each holds memory
        until it ends, and one whose message never comes lasts the read timeout), and every call
        once the drain's grace period is over, as HTTP refuses its requests. Left to the
        server's stop, calls arriving then were cancelled by gRPC unanswered (CANCELLED, no
        request id): their clients could not tell that they had not run."""
        if self.refusing():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "server is shutting down; retry on another replica",
                trailing_metadata=(("x-request-id", request_id), ("retry-after", self.retry_after)),
            )
        if self._calls >= self.max_calls:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"too many calls in progress (over {self.max_calls}): retry",
                trailing_metadata=(("x-request-id", request_id), ("retry-after", self.retry_after)),
            )

    async def _receive(self, context: grpc.aio.ServicerContext) -> bytes:
        """The call's request message, if it arrives within the read timeout (`sweep`)."""
        task = asyncio.current_task()
        self._receiving[task] = time.monotonic()
        try:
            raw = await context.read()
        except asyncio.CancelledError:
            if task is None or task not in self._overdue:
                raise  # the client went away, or the server is stopping
            self._overdue.discard(task)
            task.uncancel()
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the request message did not arrive within {self.read_timeout:g} s",
            )
        finally:
            self._receiving.pop(task, None)
        if raw is grpc.aio.EOF:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the call ended without a request message"
            )
        return cast(bytes, raw)

    async def sweep(self) -> None:
        """Cancels, about once a second, the calls whose message is overdue: one task for all of
        them, as a timer per call cost ~0.2 ms of p50 at concurrency 1 (A B A B with h2load)."""
        while True:
            await asyncio.sleep(min(1.0, self.read_timeout / 4))
            due = time.monotonic() - self.read_timeout
            for task, since in list(self._receiving.items()):
                if since < due and task is not None:
                    self._overdue.add(task)
                    task.cancel()

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
        self.registered = False

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
        self.registered = True


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


class UndeliveredAnswers(logging.Filter):
    """grpc.aio logs an error with a traceback when it cannot send an answer because the call
    ended first: the client closed its connection while the answer waited for it to make room
    (HTTP/2 flow control). Any client can do that at will, so it is not the server's error: the
    record becomes one info line."""

    MESSAGE = "ExecuteBatchError raised in core by servicer method"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith(self.MESSAGE):
            method = record.getMessage().removeprefix(self.MESSAGE).strip(" []")
            record.msg, record.args = "answer to %s not sent: the client went away", (method,)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


class GrpcServer:
    def __init__(
        self,
        settings: Settings,
        plane: DataPlane,
        metrics: Metrics,
        refusing: Callable[[], bool],
    ) -> None:
        self.settings = settings
        self.plane = plane
        message_bytes = settings.grpc_max_message_bytes
        read_timeout_ms = round(settings.client_read_timeout_seconds * 1000)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", message_bytes),
                ("grpc.max_send_message_length", message_bytes),
                # Several workers share the port; a lone server must not share it by accident.
                ("grpc.so_reuseport", int(settings.workers > 1)),
                # Connections that hold a descriptor without calls (`service.connections`): a
                # limit, the HTTP/2 handshake within the read timeout (gRPC's default: 120 s),
                # and a GOAWAY after a while with no call (clients reconnect on their next one).
                ("grpc.max_allowed_incoming_connections", settings.max_connections),
                ("grpc.server_handshake_timeout_ms", read_timeout_ms),
                ("grpc.max_connection_idle_ms", GRPC_IDLE_CONNECTION_MS),
                # A client that stops reading holds its answered calls, each counted against
                # `maximum_concurrent_rpcs` until sent: 80 such connections held 4,161 and every
                # other call got RESOURCE_EXHAUSTED. It must acknowledge our settings and pings
                # within the read timeout (gRPC's defaults: 60 s, and no pings for 2 hours).
                ("grpc.http2.settings_timeout", read_timeout_ms),
                ("grpc.keepalive_time_ms", GRPC_KEEPALIVE_MS),
                ("grpc.keepalive_timeout_ms", read_timeout_ms),
                # Calls in progress: per connection as Go's HTTP/2 server bounds them (a client
                # queues the rest), and in all, with room kept for health checks and reflection
                # past the limit `CallRecorder` puts on the other calls.
                ("grpc.max_concurrent_streams", GRPC_STREAMS_PER_CONNECTION),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_calls + OPEN_SERVICE_CALLS,
        )
        self.recorder = recorder = CallRecorder(
            metrics,
            settings.api_keys,
            settings.admin_api_keys,
            settings.client_read_timeout_seconds,
            settings.grpc_max_concurrent_calls,
            settings.retry_after_seconds,
            refusing,
        )
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
            (
                reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                reflection.aio.ReflectionServicer(REFLECTED),
            ),
        ):
            recorder.register(self.server, add_to_server, servicer)
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        self._watcher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        grpc_core_log = logging.getLogger(GRPC_CORE_LOGGER)
        if not any(isinstance(f, UndeliveredAnswers) for f in grpc_core_log.filters):
            grpc_core_log.addFilter(UndeliveredAnswers())
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._watcher = asyncio.create_task(self._track_readiness(), name="grpc-readiness")
        self._sweeper = asyncio.create_task(self.recorder.sweep(), name="grpc-read-timeout")
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
        for task in (self._watcher, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.health.shutting_down = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.shutdown_timeout_seconds)
