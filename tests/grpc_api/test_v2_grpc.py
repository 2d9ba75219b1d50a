"""gRPC against live servers, with the clients users have: `tritonclient.grpc` unchanged, raw
messages from tritonclient's own generated module (so the wire format is the specification's,
not ours), the standard health service and reflection."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import LiveServer, free_port, grpc_serving, launch_server, stop_server
from tests.fault_model import ON_TENSORFLOW
from tests.grpc_api.fields import message_fields
from tests.service.test_server import metric, scrape

Start = Callable[..., LiveServer]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def grpc_server(
    trained_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, str]]:
    log = tmp_path_factory.mktemp("grpc") / "server.log"
    with grpc_serving(
        trained_repository,
        log,
        MNIST_MAX_REQUEST_IMAGES="8",
        MNIST_CLIENT_READ_TIMEOUT_SECONDS="1",
        MNIST_GRPC_MAX_CONCURRENT_CALLS="64",
    ) as (server, port):
        yield server, f"127.0.0.1:{port}"


def stub(target: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(target))


def raw_request(images: np.ndarray, datatype: str = "FP32", **fields: object) -> object:
    request = service_pb2.ModelInferRequest(model_name="mnist", **fields)
    request.inputs.add(name="image", datatype=datatype, shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    return request


def test_tritonclient_grpc_gets_the_same_digits_as_rest(
    grpc_server: tuple[LiveServer, str], digits: np.ndarray, expected_digits: list[int]
) -> None:
    server, target = grpc_server
    client = triton.InferenceServerClient(target)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mnist")
    assert client.is_model_ready("mnist", "1")
    assert not client.is_model_ready("mnist", "2")
    metadata = client.get_model_metadata("mnist", as_json=True)
    assert metadata["inputs"][0]["name"] == "image"
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "digit", "unsure"]
    images = digits[:8, ..., None].astype(np.float32)
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    result = client.infer("mnist", [tensor], request_id="grpc-1")
    assert result.get_response().id == "grpc-1"
    assert result.get_response().model_version == "1"
    assert result.as_numpy("digit").tolist() == expected_digits[:8]
    with server.client() as http:
        rest = http.post("/v1/predict", json={"instances": digits[:8].tolist()}).json()
    assert np.allclose(
        result.as_numpy("probabilities"),
        [p["probabilities"] for p in rest["predictions"]],
        atol=1e-6,
    )
    assert result.as_numpy("unsure").tolist() == [p["unsure"] for p in rest["predictions"]]
    # One named output: only that one comes back; a version by name.
    only = client.infer(
        "mnist", [tensor], model_version="1", outputs=[triton.InferRequestedOutput("digit")]
    )
    assert only.as_numpy("digit").tolist() == expected_digits[:8]
    assert only.as_numpy("probabilities") is None
    # Triton's classification extension: the two best digits, as "<probability>:<digit>".
    top = triton.InferRequestedOutput("probabilities", class_count=2)
    classes = client.infer("mnist", [tensor], outputs=[top]).as_numpy("probabilities")
    assert classes.shape == (8, 2)
    assert [int(row[0].split(b":")[1]) for row in classes] == expected_digits[:8]
    assert "classification" in client.get_server_metadata().extensions
    client.close()


def test_tritonclient_grpc_reads_the_model_configuration(
    grpc_server: tuple[LiveServer, str],
) -> None:
    """The same configuration as over REST, in Triton's own ModelConfig message."""
    from tritonclient.grpc import model_config_pb2

    _, target = grpc_server
    client = triton.InferenceServerClient(target)
    assert "model_configuration" in client.get_server_metadata().extensions
    config = client.get_model_config("mnist").config
    assert client.get_model_config("mnist", "1").config == config
    assert (config.name, config.platform, config.max_batch_size) == (
        "mnist",
        "tensorflow_savedmodel",
        8,  # MNIST_MAX_REQUEST_IMAGES
    )
    assert list(config.version_policy.specific.versions) == [1]
    (image,) = config.input
    assert (image.name, image.data_type, list(image.dims)) == (
        "image",
        model_config_pb2.TYPE_FP32,
        [28, 28, 1],
    )
    assert [(o.name, list(o.dims), o.HasField("reshape")) for o in config.output] == [
        ("probabilities", [10], False),
        ("digit", [1], True),
        ("unsure", [1], True),
    ]
    assert list(config.dynamic_batching.preferred_batch_size) == [32]
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_config("mnist", "2")
    assert "version 2" in str(refused.value)
    client.close()


def test_tritonclient_grpc_reads_the_statistics(
    grpc_server: tuple[LiveServer, str], digits: np.ndarray
) -> None:
    """The same statistics as over REST, in Triton's messages (read as a difference: the
    server is shared)."""
    server, target = grpc_server
    client = triton.InferenceServerClient(target)
    assert "statistics" in client.get_server_metadata().extensions

    def stats() -> Any:
        (entry,) = client.get_inference_statistics("mnist").model_stats
        assert list(client.get_inference_statistics("").model_stats) == [entry]
        return entry

    before = stats()
    images = digits[:2, ..., None].astype(np.float32)
    tensor = triton.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    for _ in range(3):
        client.infer("mnist", [tensor])
    after = stats()
    assert (after.name, after.version) == ("mnist", "1")
    assert after.inference_count - before.inference_count == 6
    done, was = after.inference_stats, before.inference_stats
    assert done.success.count - was.success.count == 3
    assert done.queue.count - was.queue.count == 3
    assert done.compute_infer.ns > was.compute_infer.ns
    with server.client() as http:
        rest = http.get("/v2/models/mnist/stats").json()["model_stats"][0]
    assert rest["inference_count"] == after.inference_count
    with pytest.raises(InferenceServerException) as refused:
        client.get_inference_statistics("mnist", "2")
    assert "version 2" in str(refused.value)
    client.close()


def test_typed_contents_and_every_pixel_datatype(
    grpc_server: tuple[LiveServer, str], digits: np.ndarray, expected_digits: list[int]
) -> None:
    _, target = grpc_server
    request = service_pb2.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=[2, 784])
    tensor.contents.fp32_contents.extend(digits[:2].reshape(-1).astype(float).tolist())
    answer = stub(target).ModelInfer(request)
    digit_bytes = answer.raw_output_contents[[o.name for o in answer.outputs].index("digit")]
    assert np.frombuffer(digit_bytes, "<i8").tolist() == expected_digits[:2]
    for datatype, dtype in (("UINT8", "<u1"), ("INT32", "<i4"), ("FP64", "<f8")):
        reply = stub(target).ModelInfer(raw_request(digits[:2].astype(dtype), datatype))
        assert np.frombuffer(reply.raw_output_contents[1], "<i8").tolist() == expected_digits[:2]


@pytest.mark.parametrize(
    ("datatype", "field", "value", "message"),
    [
        # Beyond what the datatype holds: numpy's OverflowError answered UNKNOWN.
        (
            "INT8",
            "int_contents",
            200,
            "input 'image' is INT8, but value 783 of its contents.int_contents is 200",
        ),
        (
            "UINT8",
            "uint_contents",
            300,
            "is UINT8, but value 783 of its contents.uint_contents is 300",
        ),
        (
            "UINT16",
            "uint_contents",
            70_000,
            "is UINT16, but value 783 of its contents.uint_contents is 70000",
        ),
        (
            "INT16",
            "int_contents",
            -40_000,
            "is INT16, but value 783 of its contents.int_contents is -40000",
        ),
        # Within the datatype, outside the pixels: named as sent, not as float32 rounds it.
        ("FP64", "fp64_contents", 1e308, "has value 1e+308 at row 27, column 27"),
        ("FP64", "fp64_contents", 255.000001, "has value 255.000001 at row 27, column 27"),
    ],
)
def test_typed_contents_the_datatype_cannot_hold_are_invalid_argument(
    grpc_server: tuple[LiveServer, str], datatype: str, field: str, value: float, message: str
) -> None:
    _, target = grpc_server
    request = service_pb2.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name="image", datatype=datatype, shape=[1, 784])
    getattr(tensor.contents, field).extend([0] * 783 + [value])
    with pytest.raises(grpc.RpcError) as refused:
        stub(target).ModelInfer(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"model_name": "nope"}, grpc.StatusCode.NOT_FOUND, "not found"),
        ({"model_version": "7"}, grpc.StatusCode.NOT_FOUND, "version 7 is not served"),
        ({"model_version": "²"}, grpc.StatusCode.INVALID_ARGUMENT, "not a version number"),
        ({"shape": [1, 27, 27]}, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        # Echoed whole, it made a 300 KB status message that the client refused to read.
        (
            {"shape": [1] * 100_000 + [784]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "... 100001 dimensions]",
        ),
        ({"datatype": "BYTES"}, grpc.StatusCode.INVALID_ARGUMENT, "datatype"),
        ({"raw": b"\x00" * 7}, grpc.StatusCode.INVALID_ARGUMENT, "raw bytes"),
        ({"name": "pixels"}, grpc.StatusCode.INVALID_ARGUMENT, "unknown input"),
        ({"shape": [9, 784]}, grpc.StatusCode.INVALID_ARGUMENT, "at most 8"),
        ({"pixel": 300.0}, grpc.StatusCode.INVALID_ARGUMENT, "0"),
        ({"pixel": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, ""),
        ({"outputs": ["logits"]}, grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
        (
            {"outputs": ["digit", "probabilities", "digit"]},
            grpc.StatusCode.INVALID_ARGUMENT,
            "output 'digit' is requested more than once",
        ),
    ],
)
def test_client_mistakes_get_the_right_status(
    grpc_server: tuple[LiveServer, str], change: dict[str, object], code: object, message: str
) -> None:
    _, target = grpc_server
    images = np.zeros((1, 784), np.float32)
    if "pixel" in change:
        images[0, 0] = change["pixel"]  # type: ignore[assignment]
    shape = change.get("shape", [1, 784])
    count = int(np.prod(shape))  # type: ignore[arg-type]
    request = service_pb2.ModelInferRequest(
        model_name=str(change.get("model_name", "mnist")),
        model_version=str(change.get("model_version", "")),
    )
    request.inputs.add(
        name=str(change.get("name", "image")),
        datatype=str(change.get("datatype", "FP32")),
        shape=shape,  # type: ignore[arg-type]
    )
    raw = change.get("raw", np.resize(images, count).astype("<f4").tobytes())
    request.raw_input_contents.append(raw)  # type: ignore[arg-type]
    for output in change.get("outputs", []):  # type: ignore[attr-defined]
        request.outputs.add(name=output)
    with pytest.raises(grpc.RpcError) as refused:
        stub(target).ModelInfer(request)
    assert refused.value.code() == code
    assert message in refused.value.details()
    ids = dict(refused.value.trailing_metadata() or ())
    assert ids.get("x-request-id")


@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ServerLive",
        "/tensorflow.serving.PredictionService/Predict",
    ],
)
def test_a_call_whose_message_never_comes_is_ended_by_the_server(
    grpc_server: tuple[LiveServer, str], method: str
) -> None:
    """A client that opens calls and sends nothing (no deadline of its own) must not hold them,
    and their memory, for as long as it likes; one that ends a call without a message has made
    a mistake. The server's read timeout here is 1 s."""
    server, target = grpc_server
    with grpc.insecure_channel(target) as channel:
        call = channel.stream_unary(method)
        silence = threading.Event()

        def nothing() -> Iterator[bytes]:
            silence.wait(30)
            yield from ()

        stalled = [call.future(nothing()) for _ in range(20)]
        with pytest.raises(grpc.RpcError) as ended:
            call(iter(()), timeout=10)
        assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "without a request message" in (ended.value.details() or "")
        started = time.monotonic()
        for future in stalled:
            assert future.exception(timeout=10).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 5  # the read timeout and a sweep, not the test's 30 s
        assert "did not arrive within 1 s" in (stalled[0].exception().details() or "")
        silence.set()
        # The server serves on, on the same connection.
        assert stub(target).ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live
    counted = scrape(server)
    assert metric(counted, "grpc_requests_total", method=method, code="DEADLINE_EXCEEDED") >= 20


def test_calls_past_the_concurrent_limit_are_refused_at_once(
    grpc_server: tuple[LiveServer, str],
) -> None:
    """Each call in progress holds memory (5,000 calls whose message never came: +115 MiB), and
    streams opened faster than the read timeout ends them had no bound. The limit here is 64;
    past it a call is told to retry, as when the queue is full."""
    _, target = grpc_server
    silence = threading.Event()

    def nothing() -> Iterator[bytes]:
        silence.wait(30)
        yield from ()

    own_connection = [("grpc.use_local_subchannel_pool", 1)]  # not shared with other tests
    channels = [grpc.insecure_channel(target, options=own_connection) for _ in range(2)]
    try:
        calls = [
            channels[n % 2].stream_unary("/inference.GRPCInferenceService/ModelInfer")
            for n in range(100)
        ]
        futures = [call.future(nothing()) for call in calls]
        errors = [future.exception(timeout=20) for future in futures]
    finally:
        silence.set()
        for channel in channels:
            channel.close()
    codes = [error.code() for error in errors]
    refused = codes.count(grpc.StatusCode.UNAVAILABLE)
    assert refused >= 36, codes
    first = errors[codes.index(grpc.StatusCode.UNAVAILABLE)]
    assert "too many calls in progress" in (first.details() or "")
    assert ("retry-after", "1") in (first.trailing_metadata() or ())
    assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) == 100 - refused  # the read timeout
    assert stub(target).ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live


def test_a_connection_that_never_starts_http2_is_closed(
    grpc_server: tuple[LiveServer, str],
) -> None:
    """gRPC's own handshake timeout is 120 s: 200 sockets that sent nothing were all open after
    45 s. Here it is the read timeout (1 s)."""
    _, target = grpc_server
    host, port = target.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as silent:
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            while silent.recv(1000):  # the server's own settings frame, then nothing
                pass
        assert time.monotonic() - started < 5


def test_triton_only_calls_are_unimplemented(grpc_server: tuple[LiveServer, str]) -> None:
    _, target = grpc_server
    client = triton.InferenceServerClient(target)
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
        client.get_model_repository_index()
    client.close()


def test_a_deadline_the_queue_cannot_meet_is_refused_at_once(
    start_server: Start, faulty_repository: Path
) -> None:
    """The client's deadline is the request's budget: with a model call of ~1.5 s under way, a
    call allowed 300 ms is answered DEADLINE_EXCEEDED by the server at once, not at 300 ms;
    tritonclient's `client_timeout` is such a deadline. (A deadline too short to send the call
    is not tested: a fast answer can beat gRPC's timer, so that test would be a race.)"""
    import threading

    from tests.fault_model import HANG_PIXEL

    port = free_port()
    start_server(
        faulty_repository,
        MNIST_GRPC_PORT=str(port),
        MNIST_REQUEST_TIMEOUT_MS="5000",
        **ON_TENSORFLOW,
    )
    target = f"127.0.0.1:{port}"
    hang = np.zeros((1, 784), np.float32)
    hang[0, 0], hang[0, 1] = HANG_PIXEL, 150  # the model spins 1.5 s
    busy = threading.Thread(target=lambda: stub(target).ModelInfer(raw_request(hang), 10))
    busy.start()
    time.sleep(0.3)  # the hanging call is running
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as refused:
        stub(target).ModelInfer(raw_request(np.zeros((1, 784), np.float32)), 0.3)
    elapsed = time.monotonic() - started
    tensor = triton.InferInput("image", [1, 784], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 784), np.float32))
    with pytest.raises(InferenceServerException, match="DEADLINE_EXCEEDED"):
        triton.InferenceServerClient(target).infer("mnist", [tensor], client_timeout=0.3)
    busy.join(30)
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in refused.value.details()  # the server's words, not the client's timer
    assert elapsed < 0.25


def test_health_reflection_metrics_and_request_ids(grpc_server: tuple[LiveServer, str]) -> None:
    server, target = grpc_server
    channel = grpc.insecure_channel(target)
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == serving
    named = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
    assert health.Check(named).status == serving

    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflect.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    services = {s.name for a in answers for s in a.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services

    call = stub(target).ServerLive.with_call(
        service_pb2.ServerLiveRequest(), metadata=(("x-request-id", "mine-7"),)
    )
    assert dict(call[1].trailing_metadata())["x-request-id"] == "mine-7"
    assert '"request_id":"mine-7"' in server.logs()
    text = scrape(server)
    method = "/inference.GRPCInferenceService/ServerLive"
    assert metric(text, "grpc_requests_total", method=method, code="OK") >= 1
    assert (
        metric(
            text,
            "grpc_requests_total",
            method="/inference.GRPCInferenceService/ModelInfer",
            code="NOT_FOUND",
        )
        >= 0
    )
    channel.close()


def test_api_keys_guard_grpc_but_not_health(start_server: Start, trained_repository: Path) -> None:
    port = free_port()
    start_server(trained_repository, MNIST_GRPC_PORT=str(port), MNIST_API_KEYS="grpc-key")
    target = f"127.0.0.1:{port}"
    images = np.zeros((1, 784), np.float32)
    with pytest.raises(grpc.RpcError) as denied:
        stub(target).ModelInfer(raw_request(images))
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as wrong:
        stub(target).ModelInfer(raw_request(images), metadata=(("x-api-key", "nope"),))
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for metadata in ((("authorization", "Bearer grpc-key"),), (("x-api-key", "grpc-key"),)):
        assert stub(target).ModelInfer(raw_request(images), metadata=metadata).model_version == "1"
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == 1


def test_health_follows_readiness_and_shutdown(
    start_server: Start, trained_repository: Path, tmp_path: Path
) -> None:
    from tests.conftest import copy_version

    repository = tmp_path / "repository"
    repository.mkdir()
    port = free_port()
    server = start_server(
        repository, wait_ready=False, MNIST_GRPC_PORT=str(port), MNIST_DRAIN_GRACE_SECONDS="3"
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)  # gRPC starts beside /healthz
    health = health_pb2_grpc.HealthStub(channel)
    named = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
    status = health_pb2.HealthCheckResponse

    def wait_for(state: int) -> None:
        deadline = time.monotonic() + 30
        while health.Check(named).status != state:
            assert time.monotonic() < deadline
            time.sleep(0.1)

    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == status.SERVING
    wait_for(status.NOT_SERVING)  # alive, no model
    copy_version(trained_repository, repository)
    wait_for(status.SERVING)
    infer = stub(f"127.0.0.1:{port}").ModelInfer
    request = raw_request(np.zeros((1, 784), np.uint8), "UINT8")
    server.process.send_signal(signal.SIGTERM)
    wait_for(status.NOT_SERVING)  # unready at once, still answering during the grace period
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert infer(request).model_name == "mnist"
    # After the grace period a call is refused as HTTP refuses a request, until the server
    # stops: left to gRPC's stop, calls arriving then were cancelled unanswered (CANCELLED).
    while True:
        try:
            infer(request, timeout=5)
        except grpc.RpcError as error:
            refused = error
            break
        time.sleep(0.02)
    assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused.details()
    assert "shutting down" in refused.details()
    trailing = dict(refused.trailing_metadata() or ())
    assert trailing["retry-after"] == "1"
    assert trailing["x-request-id"]
    server.process.wait(30)


FIELDS_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from service.grpc_api.protos import inference
from tests.grpc_api.fields import message_fields
kinds = {n: getattr(getattr(inference, n), "DESCRIPTOR", None) for n in dir(inference)}
messages = [n for n, kind in kinds.items() if n[0].isupper() and hasattr(kind, "fields")]
print(json.dumps({n: message_fields(getattr(inference, n)) for n in messages}))
"""


def test_message_numbers_are_the_specifications() -> None:
    """Our .proto against tritonclient's generated messages, field by field (in a child
    process: both declare the `inference` package, and one process holds only one)."""
    from tritonclient.grpc import model_config_pb2

    probe = subprocess.run(
        [sys.executable, "-c", FIELDS_PROBE, str(ROOT)], capture_output=True, text=True
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    ours = json.loads(probe.stdout)
    assert len(ours) >= 14
    for name, fields in ours.items():
        theirs = message_fields(getattr(service_pb2, name, None) or getattr(model_config_pb2, name))
        assert {k: v for k, v in theirs.items() if k in fields} == fields, name
        assert set(fields) <= set(theirs), name


def test_a_taken_grpc_port_stops_the_server(trained_repository: Path, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = launch_server(
            trained_repository,
            tmp_path / "server.log",
            wait_ready=False,
            MNIST_GRPC_PORT=str(port),
            MNIST_DRAIN_GRACE_SECONDS="0",
        )
        try:
            server.process.wait(30)
        finally:
            stop_server(server)
    assert "gRPC could not start" in server.logs()


def http2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
    return head + payload


def hpack_literal(name: str, value: str) -> bytes:
    """A header field without indexing or Huffman coding (RFC 7541 section 6.2.2)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def calls_with_windows_shut(target: str, message: bytes) -> bytes:
    """HTTP/2 from a client that lets the server send no answer (stream window 0) and makes
    five ModelInfer calls. Written by hand: no gRPC client keeps its windows shut."""
    headers = b"".join(
        hpack_literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", target),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )
    window_shut = http2_frame(4, 0, 0, (4).to_bytes(2, "big") + (0).to_bytes(4, "big"))
    calls = b"".join(
        http2_frame(1, 0x4, stream, headers)  # END_HEADERS
        + http2_frame(0, 0x1, stream, b"\x00" + len(message).to_bytes(4, "big") + message)
        for stream in (1, 3, 5, 7, 9)
    )
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + window_shut + calls


def test_an_answer_its_client_left_before_taking_is_not_logged_as_an_error(
    grpc_server: tuple[LiveServer, str], digits: np.ndarray
) -> None:
    """grpc.aio logged an error with a traceback for an answer it could not send because its
    client closed the connection first, which any client can cause at will."""
    server, target = grpc_server
    host, port = target.rsplit(":", 1)
    message = raw_request(digits[:1].astype(np.float32)).SerializeToString()  # type: ignore[attr-defined]
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(calls_with_windows_shut(target, message))
        time.sleep(1)  # answered, each answer waiting for the window
    deadline = time.monotonic() + 10
    while "not sent: the client went away" not in server.logs():
        assert time.monotonic() < deadline, server.logs()[-2000:]
        time.sleep(0.2)
    assert "ExecuteBatchError" not in server.logs()


def test_a_client_that_stops_reading_is_closed_within_the_read_timeout(
    grpc_server: tuple[LiveServer, str], digits: np.ndarray
) -> None:
    """Its answered calls count against grpc's call limit until sent: 80 such connections held
    4,161 and every other call got RESOURCE_EXHAUSTED until gRPC's 60 s settings timeout. It
    must now acknowledge the server's settings within the read timeout (1 s here)."""
    _, target = grpc_server
    host, port = target.rsplit(":", 1)
    message = raw_request(digits[:1].astype(np.float32)).SerializeToString()  # type: ignore[attr-defined]
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(calls_with_windows_shut(target, message))
        started = time.monotonic()
        time.sleep(3)  # reads nothing meanwhile
        with contextlib.suppress(ConnectionResetError):
            while client.recv(65536):  # the settings, then nothing until the server closes
                pass
        assert time.monotonic() - started < 10
