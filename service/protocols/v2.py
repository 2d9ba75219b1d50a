"""The Open Inference Protocol (KServe V2) over REST, including Triton's binary tensor and
classification extensions.

`tritonclient.http` sends tensors as raw bytes after a JSON header by default
(`Inference-Header-Content-Length`), so the binary extension is what makes Triton's own client
work unchanged; its `class_count` asks for the classification extension (the best digits as
text). Errors are `{"error": ...}`, 400 for invalid input, as the spec and Triton answer.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service import __version__
from service.dataplane import DataPlane, Inference
from service.decoding import (
    IMAGE_SIDE,
    PIXELS,
    check_pixels,
    may_hold_booleans,
    parse_json,
    shown_number,
    to_number_array,
)
from service.errors import InvalidInput, MalformedRequest, ModelNotFound, UnsupportedMediaType
from service.params import parse_length_header, parse_version, shown, shown_shape
from service.protocols.admission import admit
from service.protocols.body import json_response, plane_of, read_body, settings_of
from service.runtime import INPUT_NAME, OUTPUT_NAME, UNSURE_NAME
from service.schemas import ERROR_RESPONSES, V2_INFER_DOC
from service.settings import Settings

# Health and server metadata stay open for probes (service.auth.OPEN_PATHS); model routes need a
# key when keys are set.
health_router = APIRouter(tags=["kserve-v2"])
router = APIRouter(tags=["kserve-v2"])

BINARY_HEADER = "inference-header-content-length"
DIGIT_OUTPUT = "digit"

# Every output, as (datatype, shape); all of them come back when a request names none.
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    OUTPUT_NAME: ("FP32", [-1, 10]),
    DIGIT_OUTPUT: ("INT64", [-1]),
    UNSURE_NAME: ("BOOL", [-1]),
}
OUTPUT_LIST = ", ".join(f"'{name}'" for name in OUTPUTS)


CLASSES = 10
"""The digits `probabilities` scores: the most Triton's classification extension may ask for."""


def output_tensor(name: str, result: Inference, classes: int = 0) -> tuple[npt.NDArray[Any], str]:
    """One named output as a little-endian array (the binary extension's and gRPC's raw layout)
    and its V2 datatype; with `classes`, the top classes of `probabilities` instead (Triton's
    classification extension: BYTES "<probability>:<digit>", best first, shape [N, classes])."""
    if name == OUTPUT_NAME:
        if classes:
            return top_classes(result.probabilities, classes), "BYTES"
        return result.probabilities.astype("<f4", copy=False), "FP32"
    if name == DIGIT_OUTPUT:
        return result.probabilities.argmax(axis=1).astype("<i8"), "INT64"
    return result.unsure, "BOOL"


def top_classes(probabilities: npt.NDArray[np.float32], count: int) -> npt.NDArray[np.object_]:
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    values = np.take_along_axis(probabilities, best, axis=1)
    cells = np.empty(best.shape, dtype=object)
    # Triton writes the value with C++'s std::to_string, which formats as "%f" does.
    for at, (value, digit) in enumerate(zip(values.flat, best.flat, strict=True)):
        cells.flat[at] = f"{value:f}:{digit}".encode()
    return cells


def raw_contents(array: npt.NDArray[Any], datatype: str) -> bytes:
    """The raw layout of a tensor: its bytes, or for BYTES each element's 4-byte little-endian
    length then the element (what tritonclient's `deserialize_bytes_tensor` reads)."""
    if datatype != "BYTES":
        return array.tobytes()
    return b"".join(len(item).to_bytes(4, "little") + item for item in array.reshape(-1))


def check_output_name(name: object, requested: Collection[str] = ()) -> str:
    """`requested`: the outputs named before it in the same request. An output named twice
    would be answered twice, and a client that reads outputs by name could take either one:
    refused, as Triton refuses it."""
    if not isinstance(name, str) or name not in OUTPUTS:  # a list or object is not hashable
        raise InvalidInput(f"unknown output {shown(name)}; this model has {OUTPUT_LIST}")
    if name in requested:
        raise InvalidInput(f"output '{name}' is requested more than once")
    return name


def check_classification(name: str, count: object) -> int:
    """The `classification` parameter of a requested output: how many top classes to return."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= CLASSES:
        raise InvalidInput(
            f"output '{name}' parameter 'classification' must be an integer from 0 to {CLASSES} "
            f"(how many of the best digits to return; 0: the tensor), got {shown(count)}"
        )
    if count and name != OUTPUT_NAME:
        raise InvalidInput(
            f"output '{name}' has no classes; 'classification' applies to '{OUTPUT_NAME}'"
        )
    return count


# V2 datatypes a pixel may arrive in, as little-endian numpy types (the binary extension's order).
DATATYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
ACCEPTED_SHAPES = "[N, 28, 28, 1], [N, 28, 28] or [N, 784]"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
PIXEL_BLOCKS = frozenset({("inputs", "*", "data")})


def check_datatype(values: npt.NDArray[Any], datatype: str, where: str) -> None:
    """Numbers written out (JSON `data`, gRPC typed contents) held to the declared datatype.

    Raw bytes hold their datatype by construction; written numbers do not. Triton refuses 1.5
    for a UINT8, and an INT8 of 200 would reach a model as -56 had it been sent as bytes. A
    float datatype needs no check here: whatever it cannot hold is no pixel either.
    """
    dtype = DATATYPES[datatype]
    if dtype.kind == "f":
        return
    limits = np.iinfo(dtype)
    wrong = (values < limits.min) | (values > limits.max)
    if values.dtype.kind == "f":
        wrong |= values != np.trunc(values)  # NaN too: it equals nothing
    if wrong.any():
        index = int(np.argmax(wrong))
        raise InvalidInput(
            f"input '{INPUT_NAME}' is {datatype}, but value {index} of its {where} is "
            f"{shown_number(values[index])}, which {datatype} cannot hold (integers "
            f"{limits.min} to {limits.max})"
        )


@health_router.get("/v2", summary="Server metadata (V2)")
async def server_metadata() -> Response:
    return json_response(
        {"name": "mnist-serving", "version": __version__, "extensions": EXTENSIONS}
    )


@health_router.get("/v2/health/live", summary="Server live (V2)")
async def live() -> Response:
    return json_response({"live": True})


@health_router.get("/v2/health/ready", summary="Server ready (V2)")
async def ready(request: Request) -> Response:
    plane = plane_of(request)
    return json_response({"ready": plane.ready}, status_code=200 if plane.ready else 503)


def _check_model(plane: DataPlane, name: str, version: str | None) -> int | None:
    if name != plane.name:
        raise ModelNotFound(f"model {shown(name)} not found; this server serves '{plane.name}'")
    return None if version is None else parse_version(version)


def _model_ready(plane: DataPlane, name: str, version: str | None) -> Response:
    wanted = _check_model(plane, name, version)
    is_ready = plane.ready and (wanted is None or wanted in plane.served)
    return json_response({"name": name, "ready": is_ready}, status_code=200 if is_ready else 503)


def _model_metadata(plane: DataPlane, name: str, version: str | None) -> Response:
    plane.resolve(name, _check_model(plane, name, version))
    return json_response(
        {
            "name": name,
            "versions": [str(v) for v in sorted(plane.served)],
            "platform": "tensorflow_savedmodel",
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": shape}
                for name, (datatype, shape) in OUTPUTS.items()
            ],
        }
    )


def model_config(plane: DataPlane, settings: Settings) -> dict[str, Any]:
    """Triton's model configuration (its `model_configuration` extension), as Triton describes
    a TensorFlow SavedModel that batches. Tools built on tritonclient read the batch limit and
    the per-image shapes here (`max_batch_size`, then `dims` without the batch dimension), not
    in the metadata. One image's digit and flag are scalars: `dims` [1], reshaped to []."""
    outputs = []
    for name, (datatype, shape) in OUTPUTS.items():
        dims = {"dims": shape[1:]} if shape[1:] else {"dims": [1], "reshape": {"shape": []}}
        outputs.append({"name": name, "data_type": f"TYPE_{datatype}", **dims})
    return {
        "name": plane.name,
        "platform": "tensorflow_savedmodel",
        "backend": "tensorflow",
        "version_policy": {"specific": {"versions": sorted(plane.served)}},
        "max_batch_size": settings.max_request_images,
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NONE",
                "dims": [IMAGE_SIDE, IMAGE_SIDE, 1],
            }
        ],
        "output": outputs,
        "dynamic_batching": {
            "preferred_batch_size": [settings.max_batch_size],
            "max_queue_delay_microseconds": round(settings.max_batch_delay_ms * 1000),
        },
    }


def _model_config(request: Request, name: str, version: str | None) -> Response:
    plane = plane_of(request)
    plane.resolve(name, _check_model(plane, name, version))
    return json_response(model_config(plane, settings_of(request)))


def model_statistics(plane: DataPlane, name: str | None, version: int | None) -> list[Any]:
    """Triton's `model_stats`: every served version's, or the resolved one's when a version is
    named (no model name: every model's, as `/v2/models/stats` asks)."""
    if name is not None:
        _check_model(plane, name, None)
        if version is not None:
            return [plane.resolve(name, version).statistics.as_dict(plane.name)]
    served = plane.served
    return [served[v].statistics.as_dict(plane.name) for v in sorted(served)]


@router.get("/v2/models/stats", summary="Statistics of every model (Triton)")
async def all_statistics(request: Request) -> Response:
    return json_response({"model_stats": model_statistics(plane_of(request), None, None)})


@router.get(
    "/v2/models/{name}/stats", summary="Model statistics (Triton)", responses=ERROR_RESPONSES
)
async def statistics(request: Request, name: str) -> Response:
    return json_response({"model_stats": model_statistics(plane_of(request), name, None)})


@router.get(
    "/v2/models/{name}/versions/{version}/stats",
    summary="Model version statistics (Triton)",
    responses=ERROR_RESPONSES,
)
async def version_statistics(request: Request, name: str, version: str) -> Response:
    stats = model_statistics(plane_of(request), name, parse_version(version))
    return json_response({"model_stats": stats})


@router.get(
    "/v2/models/{name}/config", summary="Model configuration (Triton)", responses=ERROR_RESPONSES
)
async def model_configuration(request: Request, name: str) -> Response:
    return _model_config(request, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/config",
    summary="Model version configuration (Triton)",
    responses=ERROR_RESPONSES,
)
async def model_version_configuration(request: Request, name: str, version: str) -> Response:
    return _model_config(request, name, version)


@router.get("/v2/models/{name}/ready", summary="Model ready (V2)")
async def model_ready(request: Request, name: str) -> Response:
    return _model_ready(plane_of(request), name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", summary="Model version ready (V2)")
async def model_version_ready(request: Request, name: str, version: str) -> Response:
    return _model_ready(plane_of(request), name, version)


@router.get("/v2/models/{name}", summary="Model metadata (V2)", responses=ERROR_RESPONSES)
async def model_metadata(request: Request, name: str) -> Response:
    return _model_metadata(plane_of(request), name, None)


@router.get(
    "/v2/models/{name}/versions/{version}",
    summary="Model version metadata (V2)",
    responses=ERROR_RESPONSES,
)
async def model_version_metadata(request: Request, name: str, version: str) -> Response:
    return _model_metadata(plane_of(request), name, version)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classes: int = 0
    """Triton's classification extension: that many top classes instead of the tensor."""


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    images: npt.NDArray[np.float32]
    outputs: list[RequestedOutput]


def decode_infer_request(
    body: bytes, header_length: str | None, settings: Settings
) -> InferRequest:
    binary = b""
    if header_length is not None:
        json_size = parse_length_header(BINARY_HEADER, header_length)
        if not 0 < json_size <= len(body):
            raise MalformedRequest(
                f"{BINARY_HEADER} is {json_size} but the body has {len(body)} bytes"
            )
        body, binary = body[:json_size], body[json_size:]
    payload = parse_json(body, PIXEL_BLOCKS)
    if not isinstance(payload, dict):
        raise InvalidInput("inference request must be a JSON object")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput(f"expected exactly one input tensor named '{INPUT_NAME}' in 'inputs'")
    images = _decode_tensor(inputs[0], binary, settings.max_request_images, may_hold_booleans(body))
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    binary_default = _flag(_parameters(payload), "binary_data_output", False)
    requested = payload.get("outputs")
    if requested is None or requested == []:  # the protocol: none named means every output
        outputs = [RequestedOutput(name, binary_default) for name in OUTPUTS]
    else:
        if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
            raise InvalidInput("'outputs' must be a list of objects with a 'name'")
        outputs = []
        for item in requested:
            name = check_output_name(item.get("name"), [output.name for output in outputs])
            parameters = _parameters(item)
            outputs.append(
                RequestedOutput(
                    name,
                    _flag(parameters, "binary_data", binary_default),
                    check_classification(name, parameters.get("classification", 0)),
                )
            )
    return InferRequest(request_id, images, outputs)


def _parameters(obj: dict[str, Any]) -> dict[str, Any]:
    parameters = obj.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InvalidInput("'parameters' must be an object")
    return parameters


def _flag(parameters: dict[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput(f"parameter '{name}' must be true or false, got {shown(value)}")
    return value


def _decode_tensor(
    tensor: dict[str, Any], binary: bytes, max_images: int, check_booleans: bool
) -> npt.NDArray[np.float32]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name != INPUT_NAME:
        raise InvalidInput(f"unknown input {shown(name)}; the model's input is '{INPUT_NAME}'")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise InvalidInput(
            f"input '{INPUT_NAME}' has datatype {shown(datatype)}; use FP32 or another of "
            f"{', '.join(DATATYPES)}"
        )
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(f"input '{INPUT_NAME}' shape must be a list of non-negative integers")
    count = shape[0]
    if shape[1:] not in ([IMAGE_SIDE, IMAGE_SIDE, 1], [IMAGE_SIDE, IMAGE_SIDE], [PIXELS]):
        raise InvalidInput(
            f"input '{INPUT_NAME}' shape {shown_shape(shape)} is not {ACCEPTED_SHAPES}"
        )
    if count == 0:
        raise InvalidInput(f"input '{INPUT_NAME}' holds no images")
    if count > max_images:
        raise InvalidInput(f"input '{INPUT_NAME}' holds {count} images; at most {max_images}")
    elements = math.prod(shape)
    binary_size = _parameters(tensor).get("binary_data_size")
    if binary_size is not None:
        dtype = DATATYPES[datatype]
        if not isinstance(binary_size, int) or binary_size != elements * dtype.itemsize:
            raise InvalidInput(
                f"binary_data_size {binary_size} does not match shape {shape} of {datatype} "
                f"({elements * dtype.itemsize} bytes)"
            )
        if len(binary) != binary_size:
            raise MalformedRequest(
                f"body carries {len(binary)} bytes of binary tensor data, expected {binary_size}"
            )
        flat: npt.NDArray[Any] = np.frombuffer(binary, dtype=dtype)
    else:
        data = tensor.get("data")
        if not isinstance(data, list | np.ndarray):
            raise InvalidInput(f"input '{INPUT_NAME}' needs 'data' (a list of numbers)")
        flat = to_number_array(data, "data", check_booleans).reshape(-1)
        if flat.size != elements:
            raise InvalidInput(
                f"input '{INPUT_NAME}' has {flat.size} values but shape {shape} needs {elements}"
            )
        check_datatype(flat, datatype, "data")
    return check_pixels(flat.reshape(count, IMAGE_SIDE, IMAGE_SIDE, 1), "data")


def encode_infer_response(request: InferRequest, result: Inference) -> Response:
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for output in request.outputs:
        array, datatype = output_tensor(output.name, result, output.classes)
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": datatype,
            "shape": list(array.shape),
        }
        if output.binary:
            raw = raw_contents(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [item.decode() for item in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1)
        tensors.append(entry)
    body: dict[str, Any] = {
        "model_name": result.model_name,
        "model_version": str(result.version),
        "outputs": tensors,
    }
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


async def _infer(request: Request, name: str, version: str | None) -> Response:
    plane, settings = plane_of(request), settings_of(request)
    call = admit(request, name, _check_model(plane, name, version))
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media not in ("application/json", "application/octet-stream"):
        raise UnsupportedMediaType(
            f"unsupported Content-Type {shown(media)}; send application/json, or "
            "application/octet-stream with the binary tensor extension"
        )
    body = await read_body(request, settings.max_body_bytes)
    if not body:
        raise MalformedRequest("request body is empty; send a V2 inference request")
    decoded = decode_infer_request(body, request.headers.get(BINARY_HEADER), settings)
    result = await call.infer(decoded.images)
    return encode_infer_response(decoded, result)


@router.post(
    "/v2/models/{name}/infer",
    summary="Inference (V2)",
    responses=ERROR_RESPONSES,
    openapi_extra=V2_INFER_DOC,
)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Inference with a version (V2)",
    responses=ERROR_RESPONSES,
    openapi_extra=V2_INFER_DOC,
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)
