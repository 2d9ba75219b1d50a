"""`inference.GRPCInferenceService` (the Open Inference Protocol over gRPC), thin over the data
plane like the REST routes: decode the tensor, infer, encode.

Outputs are always returned as `raw_output_contents` (little-endian bytes), as Triton does:
`tritonclient.grpc` reads outputs only from there. Inputs may come either way.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format

from service import __version__
from service.dataplane import DataPlane
from service.decoding import IMAGE_SIDE, PIXELS, check_pixels
from service.errors import InvalidInput, ModelNotFound
from service.grpc_api.admission import admit_within_deadline
from service.grpc_api.errors import abort_with
from service.grpc_api.protos import inference, inference_grpc
from service.params import parse_version, shown, shown_shape
from service.protocols.v2 import (
    ACCEPTED_SHAPES,
    DATATYPES,
    EXTENSIONS,
    OUTPUTS,
    check_classification,
    check_datatype,
    check_output_name,
    model_config,
    model_statistics,
    output_tensor,
    raw_contents,
)
from service.runtime import INPUT_NAME
from service.settings import Settings

# Each datatype's typed contents field, with the type that field carries on the wire.
CONTENTS_FIELD: dict[str, tuple[str, type[np.generic]]] = {
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}


def version_of(text: str) -> int | None:
    """The request's `model_version`: empty means the newest."""
    return None if text == "" else parse_version(text, in_path=False)


def decode_images(request: Any, max_images: int) -> npt.NDArray[np.float32]:
    """The one input tensor, from raw bytes or typed contents, checked like the REST routes."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"expected exactly one input tensor named '{INPUT_NAME}'")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise InvalidInput(
            f"unknown input {shown(tensor.name)}; the model's input is '{INPUT_NAME}'"
        )
    if tensor.datatype not in DATATYPES:
        raise InvalidInput(
            f"input '{INPUT_NAME}' has datatype {shown(tensor.datatype)}; use FP32 or another of "
            f"{', '.join(DATATYPES)}"
        )
    shape = list(tensor.shape)
    if not shape or any(d < 0 for d in shape):
        raise InvalidInput(f"input '{INPUT_NAME}' shape must be a list of non-negative integers")
    if shape[1:] not in ([IMAGE_SIDE, IMAGE_SIDE, 1], [IMAGE_SIDE, IMAGE_SIDE], [PIXELS]):
        raise InvalidInput(
            f"input '{INPUT_NAME}' shape {shown_shape(shape)} is not {ACCEPTED_SHAPES}"
        )
    count = shape[0]
    if count == 0:
        raise InvalidInput(f"input '{INPUT_NAME}' holds no images")
    if count > max_images:
        raise InvalidInput(f"input '{INPUT_NAME}' holds {count} images; at most {max_images}")
    elements = math.prod(shape)
    dtype = DATATYPES[tensor.datatype]
    flat: npt.NDArray[Any]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput("raw_input_contents must hold one entry per input (one here)")
        raw = request.raw_input_contents[0]
        if len(raw) != elements * dtype.itemsize:
            raise InvalidInput(
                f"input '{INPUT_NAME}' has {len(raw)} raw bytes; shape {shape} of "
                f"{tensor.datatype} needs {elements * dtype.itemsize}"
            )
        flat = np.frombuffer(raw, dtype=dtype)
    else:
        typed = CONTENTS_FIELD.get(tensor.datatype)
        if typed is None:  # the protocol has no typed field for it
            raise InvalidInput(
                f"input '{INPUT_NAME}' of {tensor.datatype} must be sent in raw_input_contents: "
                "the V2 protocol has no typed contents field for it"
            )
        field, wire_type = typed
        values = getattr(tensor.contents, field)
        if len(values) != elements:
            raise InvalidInput(
                f"input '{INPUT_NAME}' has {len(values)} values in contents.{field}; "
                f"shape {shape} needs {elements}"
            )
        flat = np.asarray(values, dtype=wire_type)
        check_datatype(flat, tensor.datatype, f"contents.{field}")
    return check_pixels(flat.reshape(count, IMAGE_SIDE, IMAGE_SIDE, 1), "contents")


def requested_outputs(request: Any) -> list[tuple[str, int]]:
    """(name, classes) of each requested output; every output when none is named."""
    outputs: list[tuple[str, int]] = []
    for output in request.outputs:
        name = check_output_name(output.name, [named for named, _ in outputs])
        classes = 0
        if "classification" in output.parameters:
            parameter = output.parameters["classification"]
            kind = parameter.WhichOneof("parameter_choice")
            classes = check_classification(name, getattr(parameter, kind) if kind else None)
        outputs.append((name, classes))
    return outputs or [(name, 0) for name in OUTPUTS]


class InferenceService(inference_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return inference.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return inference.ServerReadyResponse(ready=self.plane.ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        return inference.ServerMetadataResponse(
            name="mnist-serving", version=__version__, extensions=EXTENSIONS
        )

    @abort_with
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self._check_name(request.name)
        wanted = version_of(request.version)
        ready = self.plane.ready and (wanted is None or wanted in self.plane.served)
        return inference.ModelReadyResponse(ready=ready)

    @abort_with
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self._check_name(request.name)
        self.plane.resolve(request.name, version_of(request.version))
        tensor = inference.ModelMetadataResponse.TensorMetadata
        return inference.ModelMetadataResponse(
            name=request.name,
            versions=[str(v) for v in sorted(self.plane.served)],
            platform="tensorflow_savedmodel",
            inputs=[tensor(name=INPUT_NAME, datatype="FP32", shape=[-1, 28, 28, 1])],
            outputs=[
                tensor(name=name, datatype=datatype, shape=shape)
                for name, (datatype, shape) in OUTPUTS.items()
            ],
        )

    @abort_with
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self._check_name(request.name)
        self.plane.resolve(request.name, version_of(request.version))
        config = json_format.ParseDict(
            model_config(self.plane, self.settings), inference.ModelConfig()
        )
        return inference.ModelConfigResponse(config=config)

    @abort_with
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        """An empty name asks for every model's, as Triton reads it."""
        stats = model_statistics(self.plane, request.name or None, version_of(request.version))
        response = inference.ModelStatisticsResponse()
        for entry in stats:
            json_format.ParseDict(entry, response.model_stats.add())
        return response

    @abort_with
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        plane = self.plane
        self._check_name(request.model_name)
        version = version_of(request.model_version)
        budget = admit_within_deadline(plane, context, request.model_name, version, None)
        images = decode_images(request, self.settings.max_request_images)
        outputs = requested_outputs(request)
        result = await plane.infer(images, request.model_name, version, budget=budget)
        response = inference.ModelInferResponse(
            model_name=result.model_name, model_version=str(result.version), id=request.id
        )
        for name, classes in outputs:
            array, datatype = output_tensor(name, result, classes)
            response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
            response.raw_output_contents.append(raw_contents(array, datatype))
        return response

    def _check_name(self, name: str) -> None:
        if name != self.plane.name:
            raise ModelNotFound(
                f"model {shown(name)} not found; this server serves '{self.plane.name}'"
            )
