"""Tracing against a real OTLP/HTTP receiver: a tiny endpoint on 127.0.0.1 that decodes the
`opentelemetry-proto` messages a live server sends."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import LiveServer, free_port

Start = Callable[..., LiveServer]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Receiver:
    """OTLP over HTTP: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                message = ExportTraceServiceRequest.FromString(body)
                for resource in message.resource_spans:
                    service = {a.key: a.value.string_value for a in resource.resource.attributes}
                    for scope in resource.scope_spans:
                        receiver.spans += [decode(span, service) for span in scope.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [s for s in self.spans if s["name"] == name]


def decode(span: Any, service: dict[str, str]) -> dict[str, Any]:
    def value(v: Any) -> Any:
        return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None

    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent": span.parent_span_id.hex(),
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "attributes": {a.key: value(a.value) for a in span.attributes},
        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
        "status": span.status.code,
        "service": service,
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiving = Receiver()
    yield receiving
    receiving.server.shutdown()


def test_a_request_is_traced_from_the_callers_trace_to_the_model_call(
    start_server: Start, trained_repository: Path, receiver: Receiver
) -> None:
    server = start_server(
        trained_repository, MNIST_OTEL_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="100"
    )
    images = np.zeros((3, 28, 28)).tolist()
    headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "x-request-id": "traced-1"}
    answer = httpx.post(
        server.url + "/v1/predict", json={"instances": images}, headers=headers, timeout=30
    )
    assert answer.status_code == 200
    untraced = httpx.post(server.url + "/v1/predict", json={"instances": images[:1]}, timeout=30)
    assert untraced.status_code == 200
    # A file is sent from a task of its own (Starlette's FileResponse): its span still ends in
    # the request's context.
    assert httpx.get(server.url + "/docs/assets/favicon.png", timeout=30).status_code == 200

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        len(receiver.named("POST /v1/predict")) < 2 or not receiver.named("GET /docs/assets")
    ):
        time.sleep(0.1)
    assert "Failed to detach context" not in server.logs()
    assert receiver.paths
    assert set(receiver.paths) == {"/v1/traces"}
    request = next(s for s in receiver.named("POST /v1/predict") if s["trace_id"] == TRACE_ID)
    assert request["parent"] == CALLER_SPAN  # the caller's trace continues
    assert request["attributes"] == {
        "http.request.method": "POST",
        "http.route": "/v1/predict",
        "http.response.status_code": 200,
        "mnist.images": 3,
        "mnist.model": "mnist",
        "mnist.model_version": 1,
    }
    assert request["service"]["service.name"] == "mnist-serving"
    children = {s["name"]: s for s in receiver.spans if s["parent"] == request["span_id"]}
    assert set(children) == {"decode", "queue wait", "model call", "encode"}
    order = [children[n] for n in ("decode", "queue wait", "model call", "encode")]
    for earlier, later in itertools.pairwise(order):
        assert earlier["end"] <= later["start"] + 1_000_000  # in sequence (1 ms of rounding)
    assert all(request["start"] <= s["start"] and s["end"] <= request["end"] for s in order)
    assert children["model call"]["attributes"]["mnist.batch_size"] >= 3

    # The batch's own span: linked to the request, and the request's "model call" to it.
    batches = [
        s
        for s in receiver.named("model call")
        if s["parent"] == "" and (TRACE_ID, request["span_id"]) in s["links"]
    ]
    assert len(batches) == 1
    assert children["model call"]["links"] == [(batches[0]["trace_id"], batches[0]["span_id"])]

    # The untraced request got a trace of its own; the access log names both traces.
    other = next(s for s in receiver.named("POST /v1/predict") if s["trace_id"] != TRACE_ID)
    assert other["parent"] == ""
    logged = [json.loads(line) for line in server.logs().splitlines() if '"route"' in line]
    by_id = {entry["request_id"]: entry for entry in logged}
    assert by_id["traced-1"]["trace_id"] == TRACE_ID
    assert other["trace_id"] in {entry.get("trace_id") for entry in logged}


def test_tracing_is_off_by_default(served_model: LiveServer) -> None:
    assert httpx.get(served_model.url + "/healthz").status_code == 200
    lines = [json.loads(line) for line in served_model.logs().splitlines() if '"route"' in line]
    assert lines
    assert all(entry.get("trace_id") is None for entry in lines)
    assert "tracing to" not in served_model.logs()


def test_otlp_over_grpc(start_server: Start, trained_repository: Path) -> None:
    """The same spans through the gRPC exporter, to a real gRPC TraceService on 127.0.0.1."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[dict[str, Any]] = []

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC's name)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    received.extend(decode(span, {}) for span in scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    try:
        server = start_server(
            trained_repository,
            MNIST_OTEL_ENDPOINT=f"http://127.0.0.1:{port}",
            MNIST_OTEL_PROTOCOL="grpc",
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        headers = {"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
        body = {"instances": np.zeros((1, 28, 28)).tolist()}
        assert httpx.post(server.url + "/v1/predict", json=body, headers=headers).is_success
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            s["name"] == "POST /v1/predict" for s in received
        ):
            time.sleep(0.1)
        request = next(s for s in received if s["name"] == "POST /v1/predict")
        assert request["trace_id"] == TRACE_ID
        names = {s["name"] for s in received if s["parent"] == request["span_id"]}
        assert names == {"decode", "queue wait", "model call", "encode"}
    finally:
        collector.stop(None)
