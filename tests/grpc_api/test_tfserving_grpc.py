"""TensorFlow Serving's gRPC API with the `tensorflow-serving-api` client package, unchanged.

The package declares a dependency on the full `tensorflow` distribution; it is installed here
without dependencies into a directory of its own (its messages need only TensorFlow's protos,
which tensorflow-cpu ships), so the environment keeps one TensorFlow.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import LiveServer, grpc_serving, memory_mib


@pytest.fixture(scope="module")
def tfs(tensorflow_serving_api: Path) -> Any:
    sys.path.insert(0, str(tensorflow_serving_api))
    from tensorflow_serving.apis import (  # type: ignore[import-not-found]
        classification_pb2,
        get_model_metadata_pb2,
        get_model_status_pb2,
        inference_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
        regression_pb2,
    )

    class Api:
        classification = classification_pb2
        regression = regression_pb2
        inference = inference_pb2
        predict = predict_pb2
        metadata = get_model_metadata_pb2
        status = get_model_status_pb2
        prediction = prediction_service_pb2_grpc
        models = model_service_pb2_grpc

    return Api


@pytest.fixture(scope="module")
def server(
    trained_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, str]]:
    log = tmp_path_factory.mktemp("tfs-grpc") / "server.log"
    with grpc_serving(
        trained_repository, log, MNIST_MODEL_LABELS="stable=1", MNIST_MAX_REQUEST_IMAGES="8"
    ) as (live, port):
        yield live, f"127.0.0.1:{port}"


def predict_request(api: Any, images: np.ndarray, **spec: Any) -> Any:
    request = api.predict.PredictRequest()
    request.model_spec.name = spec.pop("name", "mnist")
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    return request


def test_predict_as_tensorflow_serving_clients_call_it(
    tfs: Any,
    server: tuple[LiveServer, str],
    digits: np.ndarray,
    expected_digits: list[int],
) -> None:
    live, target = server
    stub = tfs.prediction.PredictionServiceStub(grpc.insecure_channel(target))
    images = digits[:8, ..., None].astype(np.float32)
    answer = stub.Predict(predict_request(tfs, images, signature_name="serving_default"), 10)
    probabilities = tf.make_ndarray(answer.outputs["probabilities"])
    assert probabilities.argmax(axis=1).tolist() == expected_digits[:8]
    assert answer.model_spec.version.value == 1
    with live.client() as http:
        rest = http.post("/v1/models/mnist:predict", json={"instances": images.tolist()}).json()
    # The version's signature has the `unsure` output too: every output comes back, as TF
    # Serving answers (REST rows become objects; gRPC has one tensor per output).
    assert np.allclose(probabilities, [r["probabilities"] for r in rest["predictions"]], atol=1e-6)
    unsure = tf.make_ndarray(answer.outputs["unsure"])
    assert unsure.dtype == np.bool_
    assert unsure.tolist() == [r["unsure"] for r in rest["predictions"]]
    filtered = predict_request(tfs, images[:2])
    filtered.output_filter.append("probabilities")
    assert set(stub.Predict(filtered).outputs) == {"probabilities"}
    filtered.output_filter.append("probabilities")  # refused, as TF Serving refuses it
    with pytest.raises(grpc.RpcError) as twice:
        stub.Predict(filtered)
    assert twice.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate output tensor alias: probabilities" in twice.value.details()
    by_version = stub.Predict(predict_request(tfs, images[:2], version=1))
    by_label = stub.Predict(predict_request(tfs, images[:2], version_label="stable"))
    uint8 = stub.Predict(predict_request(tfs, digits[:2].astype(np.uint8)))
    for answer in (by_version, by_label, uint8):
        top = tf.make_ndarray(answer.outputs["probabilities"]).argmax(axis=1)
        assert top.tolist() == expected_digits[:2]


@pytest.mark.parametrize(
    ("spec", "images", "code"),
    [
        ({"name": "nope"}, (1, 28, 28, 1), grpc.StatusCode.NOT_FOUND),
        ({"version": 9}, (1, 28, 28, 1), grpc.StatusCode.NOT_FOUND),
        ({"version_label": "canary"}, (1, 28, 28, 1), grpc.StatusCode.NOT_FOUND),
        ({"signature_name": "other"}, (1, 28, 28, 1), grpc.StatusCode.INVALID_ARGUMENT),
        ({}, (1, 27, 27), grpc.StatusCode.INVALID_ARGUMENT),
        ({}, (9, 784), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_mistakes_get_tensorflow_servings_codes(
    tfs: Any,
    server: tuple[LiveServer, str],
    spec: dict[str, Any],
    images: tuple[int, ...],
    code: grpc.StatusCode,
) -> None:
    _, target = server
    stub = tfs.prediction.PredictionServiceStub(grpc.insecure_channel(target))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(predict_request(tfs, np.zeros(images, np.float32), **spec))
    assert refused.value.code() == code


def test_classify_regress_and_multi_inference_say_this_model_only_predicts(
    tfs: Any, server: tuple[LiveServer, str]
) -> None:
    """As TF Serving answers for a model without such a signature, after the model, version and
    label are found (they were UNIMPLEMENTED, which reads as a server that lacks the call)."""
    _, target = server
    stub = tfs.prediction.PredictionServiceStub(grpc.insecure_channel(target))
    for call, request, kind in (
        (stub.Classify, tfs.classification.ClassificationRequest(), "classification"),
        (stub.Regress, tfs.regression.RegressionRequest(), "regression"),
    ):
        request.model_spec.name = "mnist"
        with pytest.raises(grpc.RpcError) as refused:
            call(request, 10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"Expected {kind} signature method_name" in refused.value.details()
        assert "call Predict" in refused.value.details()
        for spec, code in (
            ({"name": "nope"}, grpc.StatusCode.NOT_FOUND),
            ({"version": 9}, grpc.StatusCode.NOT_FOUND),
            ({"version_label": "canary"}, grpc.StatusCode.NOT_FOUND),
            ({"version_label": "stable"}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"signature_name": "other"}, grpc.StatusCode.INVALID_ARGUMENT),
        ):
            request.model_spec.Clear()
            request.model_spec.name = "mnist"
            for key, value in spec.items():
                field = request.model_spec.version if key == "version" else request.model_spec
                setattr(field, "value" if key == "version" else key, value)
            with pytest.raises(grpc.RpcError) as refused:
                call(request, 10)
            assert refused.value.code() == code, spec
    multi = tfs.inference.MultiInferenceRequest()
    with pytest.raises(grpc.RpcError) as refused:
        stub.MultiInference(multi, 10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least one task" in refused.value.details()
    for method, fragment in (
        ("tensorflow/serving/regress", "Expected regression signature"),
        ("tensorflow/serving/predict", "Unsupported signature method_name"),
    ):
        multi.tasks.add(method_name=method).model_spec.name = "mnist"
        with pytest.raises(grpc.RpcError) as refused:
            stub.MultiInference(multi, 10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert fragment in refused.value.details()
        del multi.tasks[:]


@pytest.mark.parametrize(
    ("dims", "unknown_rank", "message"),
    [
        ([600_000, 28, 28], False, "holds 600000 images; at most 8"),
        ([-1, 784], False, "has shape [-1, 784]"),
        ([0, 784], False, "holds no images"),
        ([], False, "has shape []"),
        ([1, 784], True, "must declare its shape"),
        # Echoed whole, 100,000 dimensions made a status message the client refused to read.
        ([1] * 100_000 + [784], False, "... 100001 dimensions]"),
    ],
)
def test_the_declared_shape_is_checked_before_the_tensor_is_built(
    tfs: Any, server: tuple[LiveServer, str], dims: list[int], unknown_rank: bool, message: str
) -> None:
    """TensorFlow fills a tensor whose values are fewer than its shape by repeating the last
    one: one value declared as 600,000 images made 1.9 GB from a 44-byte request."""
    live, target = server
    request = tfs.predict.PredictRequest()
    request.model_spec.name = "mnist"
    tensor = request.inputs["image"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.float_val.append(1.0)
    tensor.tensor_shape.unknown_rank = unknown_rank
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
    peak = memory_mib(live.process.pid, "VmHWM")
    stub = tfs.prediction.PredictionServiceStub(grpc.insecure_channel(target))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Predict(request, 30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in refused.value.details()
    assert memory_mib(live.process.pid, "VmHWM") < peak + 100


def test_metadata_and_status(tfs: Any, server: tuple[LiveServer, str]) -> None:
    _, target = server
    channel = grpc.insecure_channel(target)
    request = tfs.metadata.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mnist"
    metadata = tfs.prediction.PredictionServiceStub(channel).GetModelMetadata(request)
    signatures = tfs.metadata.SignatureDefMap()
    assert metadata.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert [d.size for d in signature.inputs["image"].tensor_shape.dim] == [-1, 28, 28, 1]
    assert signature.outputs["probabilities"].dtype == tf.float32.as_datatype_enum
    assert signature.outputs["unsure"].dtype == tf.bool.as_datatype_enum
    assert metadata.model_spec.version.value == 1

    status_request = tfs.status.GetModelStatusRequest()
    status_request.model_spec.name = "mnist"
    status = tfs.models.ModelServiceStub(channel).GetModelStatus(status_request)
    (version,) = status.model_version_status
    assert version.version == 1
    assert tfs.status.ModelVersionStatus.State.Name(version.state) == "AVAILABLE"
    assert version.status.error_code == 0
    status_request.model_spec.version.value = 5
    with pytest.raises(grpc.RpcError) as missing:
        tfs.models.ModelServiceStub(channel).GetModelStatus(status_request)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_every_service_is_logged_counted_and_echoes_the_request_id(
    tfs: Any, server: tuple[LiveServer, str], digits: np.ndarray
) -> None:
    """Each service's calls are wrapped when registered, not by an interceptor: the TF Serving
    services and health must be wrapped as the V2 service is."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    live, target = server
    channel = grpc.insecure_channel(target)
    calls = {
        ("/tensorflow.serving.PredictionService/Predict", "tfs-predict-1"): (
            tfs.prediction.PredictionServiceStub(channel).Predict.with_call(
                predict_request(tfs, digits[:1, ..., None].astype(np.float32)),
                metadata=(("x-request-id", "tfs-predict-1"),),
            )
        ),
        ("/grpc.health.v1.Health/Check", "health-check-1"): (
            health_pb2_grpc.HealthStub(channel).Check.with_call(
                health_pb2.HealthCheckRequest(service=""),
                metadata=(("x-request-id", "health-check-1"),),
            )
        ),
    }
    logs = live.logs()
    with live.client() as http:
        metrics = http.get("/metrics").text
    for (method, request_id), (_, call) in calls.items():
        assert dict(call.trailing_metadata())["x-request-id"] == request_id
        assert f'"request_id":"{request_id}"' in logs
        assert any(
            line.startswith("grpc_requests_total{") and f'method="{method}"' in line
            for line in metrics.splitlines()
            if 'code="OK"' in line
        ), method
