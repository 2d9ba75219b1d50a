"""OpenTelemetry tracing, off unless `MNIST_OTEL_ENDPOINT` is set (the optional `otel` extra).

Each HTTP request is a server span (continuing the caller's trace from a W3C `traceparent`
header) with child spans for reading and decoding its body, waiting in the queue, the model
call and encoding the answer. A model call serves many requests at once, so it is also one span
of its own, linked to every request it answered (and each request's "model call" span links
back to it). Spans of the queue and the model are recorded when the batch ends, from the
batcher's own timestamps: nothing is added to the batch's path.

With tracing off nothing here is imported or called: the middleware and the batcher hold `None`
and test it once per request or batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from service import __version__
from service.settings import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, SpanContext, Tracer

log = logging.getLogger("service.tracing")

HTTP_TRACES_PATH = "/v1/traces"


class TracingUnavailable(RuntimeError):
    pass


class Tracing:
    """The tracer and what the middleware and the batcher need from it."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, propagate, trace

        self._provider = provider
        self._tracer: Tracer = provider.get_tracer("mnist-serving", __version__)
        self._trace = trace
        self._context = context
        self._propagator = propagate.get_global_textmap()

    # --- the request span (service.middleware) ---------------------------------------------

    def start_request(self, method: str, headers: list[tuple[bytes, bytes]]) -> tuple[Span, Any]:
        """A server span continuing the caller's trace, made current; and the token to detach."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}
        parent = self._propagator.extract(carrier)
        span = self._tracer.start_span(method, context=parent, kind=self._trace.SpanKind.SERVER)
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return span, token

    def end_request(
        self, span: Span, token: Any, method: str, route: str, status: int, state: dict[str, Any]
    ) -> None:
        self._context.detach(token)
        span.update_name(f"{method} {route}")
        span.set_attributes(
            {
                "http.request.method": method,
                "http.route": route,
                "http.response.status_code": status,
            }
        )
        for key, attribute in (
            ("images", "mnist.images"),
            ("model", "mnist.model"),
            ("version", "mnist.model_version"),
        ):
            if state.get(key) is not None:
                span.set_attribute(attribute, state[key])
        if status >= 500:
            span.set_status(self._trace.StatusCode.ERROR)
        span.end()

    def child(self, name: str, start_ns: int, end_ns: int) -> None:
        """A finished child of the current span (decoding, encoding), from its timestamps."""
        if self._trace.get_current_span().is_recording():
            span = self._tracer.start_span(name, start_time=start_ns)
            span.end(end_time=end_ns)

    @staticmethod
    def trace_id(span: Span) -> str:
        return f"{span.get_span_context().trace_id:032x}"

    # --- the batcher's hook (service.batcher.BatchTracer) ----------------------------------

    def capture(self) -> SpanContext | None:
        """The calling request's span, taken when it joins the queue (if it is sampled:
        `OTEL_TRACES_SAMPLER` may keep only some traces, and the rest cost nothing here)."""
        context = self._trace.get_current_span().get_span_context()
        return context if context.is_valid and context.trace_flags.sampled else None

    def batch(
        self,
        requests: Sequence[tuple[Any, float]],
        size: int,
        started: float,
        ended: float,
        error: BaseException | None,
    ) -> None:
        """Record one model call: `requests` are (captured span, enqueued at) pairs; times are
        `time.monotonic()` seconds, as the batcher keeps them."""
        from opentelemetry.trace import Link

        offset = time.time_ns() - time.monotonic_ns()

        def ns(monotonic: float) -> int:
            return int(monotonic * 1e9) + offset

        parents = [(ctx, enqueued) for ctx, enqueued in requests if ctx is not None]
        if not parents:
            return
        call = self._tracer.start_span(
            "model call",
            context=self._context.Context(),  # a root: it belongs to no single request
            links=[Link(ctx) for ctx, _ in parents],
            start_time=ns(started),
            attributes={"mnist.batch_size": size, "mnist.requests": len(requests)},
        )
        if error is not None:
            call.record_exception(error)
            call.set_status(self._trace.StatusCode.ERROR)
        call.end(end_time=ns(ended))
        batch_link = [Link(call.get_span_context())]
        for ctx, enqueued in parents:
            parent = self._trace.set_span_in_context(self._trace.NonRecordingSpan(ctx))
            wait = self._tracer.start_span("queue wait", context=parent, start_time=ns(enqueued))
            wait.end(end_time=ns(started))
            mine = self._tracer.start_span(
                "model call",
                context=parent,
                links=batch_link,
                start_time=ns(started),
                attributes={"mnist.batch_size": size},
            )
            mine.end(end_time=ns(ended))

    def shutdown(self) -> None:
        """Send what is buffered (the app's lifespan calls this last)."""
        self._provider.shutdown()


def tracing_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("opentelemetry.sdk") is not None


def configure_tracing(settings: Settings) -> Tracing | None:
    if not settings.otel_endpoint:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TracingUnavailable(
            "MNIST_OTEL_ENDPOINT is set but OpenTelemetry is not installed: "
            "pip install 'mnist-serving[otel]'"
        ) from exc
    endpoint = settings.otel_endpoint.rstrip("/")
    exporter: Any
    if settings.otel_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        exporter = Grpc(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        if not endpoint.endswith(HTTP_TRACES_PATH):
            endpoint += HTTP_TRACES_PATH
        exporter = Http(endpoint=endpoint)
    resource = Resource.create(
        {"service.name": settings.otel_service_name, "service.version": __version__}
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing to %s (OTLP %s)", endpoint, settings.otel_protocol)
    return Tracing(provider)
