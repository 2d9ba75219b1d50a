"""Property-based fuzzing of the gRPC services: no client input may get UNKNOWN or INTERNAL,
gRPC's 5xx.

Two layers, as an attacker would try them: bytes that are not the method's message at all, on
every method; and messages with any value in every field (datatypes and dtypes by name and
not, shapes that disagree with the contents, lying raw contents, parameters of every kind,
versions and labels), built with the clients' own message classes (`tritonclient`'s V2,
`tensorflow-serving-api`'s). Two in three inference requests are consistent (shape, datatype
and contents agree, pixels in range or not), so the fuzzing reaches decoding, the batcher and
the answer. Seeds are fixed as in tests/service/test_fuzz.py.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from tests.conftest import grpc_serving
from tests.service.test_fuzz import FUZZ

SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
}
METHODS = [
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelInfer",
    "/tensorflow.serving.PredictionService/Predict",
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/Regress",
    "/tensorflow.serving.PredictionService/MultiInference",
    "/tensorflow.serving.ModelService/GetModelStatus",
    "/grpc.health.v1.Health/Check",
    "/inference.GRPCInferenceService/ModelConfig",
    "/inference.GRPCInferenceService/ModelStatistics",
]


@pytest.fixture(scope="module")
def channel(
    trained_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[grpc.Channel]:
    """A channel to a live server (at most 4 images a request, a label to select)."""
    log = tmp_path_factory.mktemp("grpc-fuzz") / "server.log"
    limits = {"MNIST_MAX_REQUEST_IMAGES": "4", "MNIST_MODEL_LABELS": "stable=1"}
    with (
        grpc_serving(trained_repository, log, **limits) as (_, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as opened,
    ):
        yield opened


def status_of(call: Any, request: Any) -> grpc.StatusCode:
    """The call's status; never a server error, and every refusal names its request."""
    error = call.future(request, timeout=30).exception()
    if error is None:
        return grpc.StatusCode.OK
    assert error.code() not in SERVER_ERRORS, (error.code(), error.details())
    assert dict(error.trailing_metadata() or ()).get("x-request-id")
    return error.code()  # type: ignore[no-any-return]


def raw_method(channel: grpc.Channel, method: str) -> Any:
    return channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)


@pytest.mark.parametrize("method", METHODS)
@given(payload=st.binary(min_size=1, max_size=64))
@FUZZ
def test_bytes_that_are_not_the_message_are_invalid_argument(
    channel: grpc.Channel, method: str, payload: bytes
) -> None:
    """Most random bytes do not parse; those that happen to are a message, and may be OK."""
    code = status_of(raw_method(channel, method), payload)
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


def test_the_streaming_methods_refuse_bytes_that_are_not_their_message(
    channel: grpc.Channel,
) -> None:
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch", request_serializer=bytes, response_deserializer=bytes
    )
    reflect = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=bytes,
        response_deserializer=bytes,
    )
    for call, request in ((watch, b"\xff\xff"), (reflect, iter([b"\xff\xff"]))):
        with pytest.raises(grpc.RpcError) as refused:
            list(call(request, timeout=10))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "protobuf could not parse" in refused.value.details()


def mostly(usual: Any, other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`usual` about three times in four: a request must get past the model's name to reach
    the tensors. (A `one_of` of repeated `just`s does not weigh: hypothesis picks branches as it
    likes; an index into a list does.)"""
    return st.sampled_from([0, 1, 2, 3]).flatmap(lambda i: other if i == 3 else st.just(usual))


SIZES = st.sampled_from([0, 1, 27, 28, 783, 784, 785, 1568, 3136]) | st.integers(-3, 5000)
NAMES = mostly("mnist", st.sampled_from(["", "other", "MNIST"]) | st.text(max_size=5))
VERSIONS = mostly(
    "", st.sampled_from(["1", "01", "2", "0", "-1", "\u00b2", "9" * 40]) | st.text(max_size=4)
)


def repeated(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Short lists, or lists of the lengths a tensor of images has."""
    return st.lists(element, max_size=4) | st.builds(
        lambda value, count: [value] * count, element, st.sampled_from([784, 785, 1568])
    )


V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32"]
V2_DATATYPES += ["INT64", "FP16", "FP32", "FP64", "BF16", "BYTES"]
V2_CONTENTS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}


def v2_parameters() -> st.SearchStrategy[dict[str, Any]]:
    value = st.one_of(
        st.builds(lambda v: service_pb2.InferParameter(bool_param=v), st.booleans()),
        st.builds(
            lambda v: service_pb2.InferParameter(int64_param=v),
            st.integers(-(2**63), 2**63 - 1),
        ),
        st.builds(lambda v: service_pb2.InferParameter(string_param=v), st.text(max_size=6)),
    )
    keys = st.sampled_from(["binary_data_size", "binary_data", "classification", "timeout"])
    return st.dictionaries(keys | st.text(max_size=4), value, max_size=2)


v2_tensor = st.fixed_dictionaries(
    {
        "name": mostly("image", st.sampled_from(["images", ""]) | st.text(max_size=4)),
        "datatype": st.sampled_from(V2_DATATYPES) | st.text(max_size=5),
        "shape": st.sampled_from([[1, 784], [1, 28, 28], [2, 784]]) | st.lists(SIZES, max_size=5),
        "parameters": v2_parameters(),
    },
    optional={
        "contents": st.fixed_dictionaries(
            {}, optional={name: repeated(v) for name, v in V2_CONTENTS.items()}
        )
    },
)


V2_TYPED = {  # datatype -> numpy type, typed contents field
    "UINT8": ("<u1", "uint_contents"),
    "UINT16": ("<u2", "uint_contents"),
    "UINT32": ("<u4", "uint_contents"),
    "UINT64": ("<u8", "uint64_contents"),
    "INT8": ("<i1", "int_contents"),
    "INT16": ("<i2", "int_contents"),
    "INT32": ("<i4", "int_contents"),
    "INT64": ("<i8", "int64_contents"),
    "FP16": ("<f2", "fp32_contents"),  # the protocol has no FP16 field: a client's guess
    "FP32": ("<f4", "fp32_contents"),
    "FP64": ("<f8", "fp64_contents"),
}
LAYOUTS = st.sampled_from([[784], [28, 28], [28, 28, 1]])
PIXELS = mostly(0, st.integers(0, 255) | st.sampled_from([-1, 200, 256, 70_000]))


def full(size: int, pixel: int, numpy_type: str) -> np.ndarray:
    """`pixel` as `numpy_type` would hold it (70,000 wraps in 16 bits, overflows a half)."""
    with np.errstate(all="ignore"):
        return np.full(size, pixel).astype(numpy_type)


@st.composite
def well_formed_v2(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[bytes]]:
    """One tensor whose shape, datatype and contents agree (in raw bytes or typed contents,
    with pixels in and out of range), so the fuzzing reaches decoding, the batcher and the
    answer, and finds what breaks there."""
    datatype = draw(st.sampled_from(sorted(V2_TYPED)))
    numpy_type, field = V2_TYPED[datatype]
    shape = [draw(st.integers(1, 5)), *draw(LAYOUTS)]
    pixel = draw(PIXELS)
    pixels = full(math.prod(shape), pixel, numpy_type)
    tensor: dict[str, Any] = {
        "name": "image", "datatype": datatype, "shape": shape, "parameters": {}
    }  # fmt: skip
    if draw(st.booleans()):
        return [tensor], [pixels.tobytes()]
    # Typed fields are wider than their datatypes: 70,000 travels as an INT8 unwrapped.
    fits_the_field = pixel >= 0 or not field.startswith("uint")
    tensor["contents"] = {field: [pixel] * pixels.size if fits_the_field else pixels.tolist()}
    return [tensor], []


fuzzed_v2 = st.tuples(
    mostly(1, st.integers(0, 2)).flatmap(lambda n: st.lists(v2_tensor, min_size=n, max_size=n)),
    st.lists(
        st.binary(max_size=12) | st.sampled_from([bytes(784), bytes(3136), bytes(6272)]),
        max_size=2,
    ),
)


@given(
    model_name=NAMES,
    model_version=VERSIONS,
    tensors=st.sampled_from([0, 1, 2]).flatmap(lambda i: fuzzed_v2 if i == 2 else well_formed_v2()),
    outputs=mostly(
        [],
        st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["probabilities", "digit", ""]) | st.text(max_size=4),
                    "parameters": v2_parameters(),
                }
            ),
            max_size=2,
        ),
    ),
    parameters=mostly({}, v2_parameters()),
)
@FUZZ
def test_v2_infer_requests_with_any_field_values(
    channel: grpc.Channel,
    model_name: str,
    model_version: str,
    tensors: tuple[list[dict[str, Any]], list[bytes]],
    outputs: list[dict[str, Any]],
    parameters: dict[str, Any],
) -> None:
    inputs, raw = tensors
    request = service_pb2.ModelInferRequest(
        model_name=model_name, model_version=model_version, raw_input_contents=raw
    )
    for key, value in parameters.items():
        request.parameters[key].CopyFrom(value)
    for fields in inputs:
        tensor = request.inputs.add(
            name=fields["name"], datatype=fields["datatype"], shape=fields["shape"]
        )
        for key, value in fields["parameters"].items():
            tensor.parameters[key].CopyFrom(value)
        for name, values in fields.get("contents", {}).items():
            getattr(tensor.contents, name).extend(values)
    for fields in outputs:
        output = request.outputs.add(name=fields["name"])
        for key, value in fields["parameters"].items():
            output.parameters[key].CopyFrom(value)
    status_of(raw_method(channel, METHODS[5]), request.SerializeToString())


@pytest.fixture(scope="module")
def predict_pb2(tensorflow_serving_api: Path) -> Any:
    sys.path.insert(0, str(tensorflow_serving_api))
    from tensorflow_serving.apis import predict_pb2  # type: ignore[import-not-found]

    return predict_pb2


TF_VALUES = {
    "float_val": st.floats(width=32),
    "double_val": st.floats(),
    "int_val": st.integers(-(2**31), 2**31 - 1),
    "int64_val": st.integers(-(2**63), 2**63 - 1),
    "bool_val": st.booleans(),
    "string_val": st.binary(max_size=6),
    "half_val": st.integers(0, 2**16 - 1),
    "uint32_val": st.integers(0, 2**32 - 1),
    "uint64_val": st.integers(0, 2**64 - 1),
}
tf_tensor = st.fixed_dictionaries(
    {
        "dtype": mostly(1, st.integers(0, 30) | st.integers(-5, 500)),  # 1: DT_FLOAT
        "dims": st.lists(SIZES, max_size=5) | st.sampled_from([[1, 28, 28], [1, 28, 28, 1]]),
    },
    optional={
        "unknown_rank": st.booleans(),
        "tensor_content": st.binary(max_size=12)
        | st.sampled_from([bytes(784), bytes(3136), bytes(6272)]),
        **{name: repeated(value) for name, value in TF_VALUES.items()},
    },
)


TF_TYPED = {  # DataType -> numpy type, value field
    1: ("<f4", "float_val"),
    2: ("<f8", "double_val"),
    3: ("<i4", "int_val"),
    4: ("<u1", "int_val"),
    9: ("<i8", "int64_val"),
    19: ("<f2", "half_val"),
}


@st.composite
def well_formed_tf(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    """An `image` tensor whose dtype, shape and values agree: in `tensor_content`, in its value
    field, or as one value that TensorFlow repeats to fill the shape."""
    dtype = draw(st.sampled_from(sorted(TF_TYPED)))
    numpy_type, field = TF_TYPED[dtype]
    dims = [draw(st.integers(1, 5)), *draw(LAYOUTS)]
    pixels = full(math.prod(dims), draw(PIXELS), numpy_type)
    tensor: dict[str, Any] = {"dtype": dtype, "dims": dims}
    form = draw(st.sampled_from(["content", "values", "one value"]))
    if form == "content":
        tensor["tensor_content"] = pixels.tobytes()
    else:
        values = pixels.view(np.uint16) if field == "half_val" else pixels
        tensor[field] = values.tolist()[: 1 if form == "one value" else None]
    return {"image": tensor}


@given(
    name=NAMES,
    version=mostly(None, st.sampled_from([0, 1, 2, -1]) | st.integers(-(2**63), 2**63 - 1)),
    label=mostly(None, st.sampled_from(["stable", "canary", ""]) | st.text(max_size=4)),
    signature=mostly("", st.sampled_from(["serving_default", "predict"]) | st.text(max_size=4)),
    inputs=st.sampled_from([0, 1, 2]).flatmap(
        lambda i: (
            well_formed_tf()
            if i < 2
            else st.dictionaries(
                st.sampled_from(["image", "images", ""]) | st.text(max_size=4),
                tf_tensor,
                max_size=2,
            )
        )
    ),
    output_filter=mostly(
        [], st.lists(st.sampled_from(["probabilities", "digit", ""]) | st.text(max_size=4))
    ),
)
@FUZZ
def test_tensorflow_serving_predict_requests_with_any_field_values(
    channel: grpc.Channel,
    predict_pb2: Any,
    name: str,
    version: int | None,
    label: str | None,
    signature: str,
    inputs: dict[str, dict[str, Any]],
    output_filter: list[str],
) -> None:
    request = predict_pb2.PredictRequest(output_filter=output_filter)
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for key, fields in inputs.items():
        tensor = request.inputs[key]
        tensor.dtype = fields["dtype"]
        for size in fields["dims"]:
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_shape.unknown_rank = fields.get("unknown_rank", False)
        if "tensor_content" in fields:
            tensor.tensor_content = fields["tensor_content"]
        for field in TF_VALUES:
            getattr(tensor, field).extend(fields.get(field, []))
    status_of(raw_method(channel, METHODS[6]), request.SerializeToString())
