"""TensorFlow Serving's gRPC API over the data plane: `PredictionService.Predict` and
`GetModelMetadata`, `ModelService.GetModelStatus`, with version and label selection in
`ModelSpec`, as a client built with `tensorflow-serving-api` calls TensorFlow Serving.
`Classify`, `Regress` and `MultiInference` answer as TensorFlow Serving does for a model whose
only signature predicts: INVALID_ARGUMENT, naming the call to make instead.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from service.dataplane import DataPlane
from service.decoding import IMAGE_SIDE, PIXELS, check_pixels
from service.errors import InvalidInput, ModelNotFound
from service.grpc_api.admission import admit_within_deadline
from service.grpc_api.errors import abort_with
from service.grpc_api.tfserving_protos import tfserving, tfserving_grpc
from service.params import parse_label, shown, shown_shape
from service.protocols.tfserving import OUTPUT_TENSORS, SIGNATURE_KINDS, refuse_method
from service.runtime import INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME
from service.settings import Settings

PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURES = ("", SIGNATURE_NAME)


def _selection(spec: Any) -> tuple[int | None, str | None]:
    """The version or label a `ModelSpec` asks for (neither: the newest)."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        if spec.version.value <= 0:
            raise InvalidInput(f"model_spec.version must be positive, got {spec.version.value}")
        return int(spec.version.value), None
    if choice == "version_label":
        return None, parse_label(spec.version_label, in_path=False)
    return None, None


def _check_signature(spec: Any) -> None:
    if spec.signature_name not in SIGNATURES:
        raise InvalidInput(
            f"Serving signature name: {shown(spec.signature_name)} not found in signature def; "
            f"this model has '{SIGNATURE_NAME}'"
        )


def decode_tensor(tensor: Any, max_images: int) -> npt.NDArray[np.float32]:
    """The `image` TensorProto as a checked (N, 28, 28, 1) float32 batch.

    The declared shape is checked before anything is decoded: TensorFlow fills a tensor whose
    values are fewer than its shape by repeating the last one, so a 44-byte request declaring
    600,000 images became 1.9 GB and 6 s of the core before its image count was looked at."""
    import tensorflow as tf  # loaded already: the server runs the model

    shape = _declared_shape(tensor.tensor_shape, max_images)
    try:
        array = tf.make_ndarray(tensor)
    except Exception as exc:  # malformed content for its dtype and shape
        raise InvalidInput(f"input '{INPUT_NAME}' is not a readable tensor: {exc}") from None
    if array.dtype.kind not in "uif":
        raise InvalidInput(f"input '{INPUT_NAME}' must hold numbers (got {array.dtype})")
    return check_pixels(array.reshape(shape[0], IMAGE_SIDE, IMAGE_SIDE, 1), INPUT_NAME)


def _declared_shape(tensor_shape: Any, max_images: int) -> list[int]:
    if tensor_shape.unknown_rank:
        raise InvalidInput(f"input '{INPUT_NAME}' must declare its shape (unknown_rank is set)")
    shape = [int(d.size) for d in tensor_shape.dim]
    image_shapes = ([IMAGE_SIDE, IMAGE_SIDE, 1], [IMAGE_SIDE, IMAGE_SIDE], [PIXELS])
    if not shape or shape[0] < 0 or shape[1:] not in image_shapes:
        raise InvalidInput(
            f"input '{INPUT_NAME}' has shape {shown_shape(shape)}; expected [N, 28, 28, 1], "
            "[N, 28, 28] or [N, 784]"
        )
    if shape[0] == 0:
        raise InvalidInput(f"input '{INPUT_NAME}' holds no images")
    if shape[0] > max_images:
        raise InvalidInput(f"input '{INPUT_NAME}' holds {shape[0]} images; at most {max_images}")
    return shape


def _tensor_info(name: str, dims: list[int], dtype: str = "DT_FLOAT") -> Any:
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    info = meta_graph_pb2.TensorInfo(name=name, dtype=types_pb2.DataType.Value(dtype))
    for size in dims:
        info.tensor_shape.dim.add(size=size)
    return info


class PredictionService(tfserving_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: DataPlane, settings: Settings) -> None:
        self.plane = plane
        self.settings = settings

    def _check_name(self, name: str) -> None:
        if name != self.plane.name:
            raise ModelNotFound(f"Servable not found for request: Latest({shown(name)})")

    @abort_with
    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        import tensorflow as tf

        plane, spec = self.plane, request.model_spec
        self._check_name(spec.name)
        _check_signature(spec)
        version, label = _selection(spec)
        budget = admit_within_deadline(plane, context, spec.name, version, label)
        unknown = set(request.inputs) - {INPUT_NAME}
        if unknown or INPUT_NAME not in request.inputs:
            raise InvalidInput(
                f"expected one input named '{INPUT_NAME}', got {sorted(request.inputs)}"
            )
        offered = plane.resolve(spec.name, version, label).model.signature_outputs
        for at, name in enumerate(request.output_filter):
            if name not in offered:
                raise InvalidInput(f"output tensor alias not found in signature: {shown(name)}")
            if name in request.output_filter[:at]:  # TF Serving's check and words
                raise InvalidInput(f"duplicate output tensor alias: {name}")
        images = decode_tensor(request.inputs[INPUT_NAME], self.settings.max_request_images)
        result = await plane.infer(images, spec.name, version, label, budget=budget)
        response = tfserving.PredictResponse()
        response.model_spec.name = result.model_name
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = SIGNATURE_NAME
        for name in request.output_filter or result.signature_outputs:
            array = result.probabilities if name == OUTPUT_NAME else result.unsure
            response.outputs[name].CopyFrom(tf.make_tensor_proto(array))
        return response

    def _refuse(self, spec: Any, method: str) -> None:
        self._check_name(spec.name)
        _check_signature(spec)
        refuse_method(self.plane, spec.name, *_selection(spec), method)

    @abort_with
    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self._refuse(request.model_spec, "classify")

    @abort_with
    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        self._refuse(request.model_spec, "regress")

    @abort_with
    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        if not request.tasks:
            raise InvalidInput("MultiInference needs at least one task in 'tasks'")
        for task in request.tasks:
            method = task.method_name.removeprefix("tensorflow/serving/")
            if method not in SIGNATURE_KINDS:  # TF Serving runs classify and regress tasks only
                raise InvalidInput(
                    f"Unsupported signature method_name: {shown(task.method_name)}; "
                    "MultiInference runs tensorflow/serving/classify and /regress tasks"
                )
            self._refuse(task.model_spec, method)

    @abort_with
    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        from tensorflow.core.protobuf import meta_graph_pb2

        spec = request.model_spec
        self._check_name(spec.name)
        if list(request.metadata_field) != ["signature_def"]:
            raise InvalidInput("metadata_field must be ['signature_def'], the only one served")
        served = self.plane.resolve(spec.name, *_selection(spec))
        signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        signature.inputs[INPUT_NAME].CopyFrom(
            _tensor_info(f"{SIGNATURE_NAME}_{INPUT_NAME}:0", [-1, 28, 28, 1])
        )
        for name in served.model.signature_outputs:
            dims, tensor, dtype = OUTPUT_TENSORS[name]
            signature.outputs[name].CopyFrom(_tensor_info(tensor, dims, dtype))
        signatures = tfserving.SignatureDefMap()
        signatures.signature_def[SIGNATURE_NAME].CopyFrom(signature)
        response = tfserving.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served.version
        response.metadata["signature_def"].Pack(signatures)
        return response


class ModelService(tfserving_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @abort_with
    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        spec = request.model_spec
        if spec.name != self.plane.name:
            raise ModelNotFound(f"Servable not found for request: Latest({shown(spec.name)})")
        version, label = _selection(spec)
        if label is not None:
            version = self.plane.resolve(spec.name, None, label).version
        known = sorted(self.plane.status.values(), key=lambda s: s.version, reverse=True)
        if version is not None:
            known = [s for s in known if s.version == version]
            if not known:
                raise ModelNotFound(
                    f"Servable not found for request: Specific({shown(spec.name)}, {version})"
                )
        states = tfserving.ModelVersionStatus.State
        response = tfserving.GetModelStatusResponse()
        for status in known:
            entry = response.model_version_status.add(
                version=status.version, state=states.Value(status.state.value)
            )
            entry.status.error_code = 2 if status.error else 0  # tensorflow.error UNKNOWN / OK
            entry.status.error_message = status.error
        return response
