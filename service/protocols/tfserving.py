"""TensorFlow Serving's REST API, so existing TF Serving clients work unchanged.

Shapes follow TF Serving's `api_rest.md`: `instances` (row format) answers `predictions`, `inputs`
(columnar) answers `outputs`; with one output tensor its name is left out. The outputs are those
of the version's serving signature, as TensorFlow Serving would answer for the same file:
`probabilities`, and `unsure` for versions exported with a calibration. Errors are
`{"error": ...}` with 400 for invalid arguments, as TF Serving's HTTP server maps them.
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service.dataplane import DataPlane
from service.decoding import images_from_nested
from service.errors import InvalidInput, ModelNotFound
from service.params import parse_label, parse_version, shown
from service.protocols.admission import admit
from service.protocols.body import json_response, plane_of, read_json, settings_of
from service.runtime import INPUT_NAME, OUTPUT_NAME, SIGNATURE_NAME, UNSURE_NAME
from service.schemas import ERROR_RESPONSES, TFSERVING_PREDICT_DOC

router = APIRouter(tags=["tensorflow-serving"])

PIXEL_BLOCKS = frozenset({("instances",), ("inputs",)})
# Output -> (shape, graph tensor, dtype) as a SavedModel exported by training/export.py lists it.
OUTPUT_TENSORS: dict[str, tuple[list[int], str, str]] = {
    OUTPUT_NAME: ([-1, 10], "StatefulPartitionedCall:0", "DT_FLOAT"),
    UNSURE_NAME: ([-1], "StatefulPartitionedCall:1", "DT_BOOL"),
}


def images_from_tfs_payload(
    payload: Any, max_images: int, check_booleans: bool = True
) -> tuple[Any, bool]:
    """Return (images, columnar) from either request format."""
    if not isinstance(payload, dict):
        raise InvalidInput("request body must be a JSON object")
    signature = payload.get("signature_name", SIGNATURE_NAME)
    if signature != SIGNATURE_NAME:
        raise InvalidInput(f"serving signature name: {shown(signature)} not found in signature def")
    has_instances, has_inputs = "instances" in payload, "inputs" in payload
    if has_instances == has_inputs:
        raise InvalidInput("JSON object must contain exactly one of 'instances' or 'inputs'")
    if has_instances:
        instances = payload["instances"]
        if isinstance(instances, list) and instances and isinstance(instances[0], dict):
            instances = [_named_input(row, "instances") for row in instances]
        images = images_from_nested(
            instances, field="instances", max_images=max_images, check_booleans=check_booleans
        )
        return images, False
    inputs = payload["inputs"]
    if isinstance(inputs, dict):
        inputs = _named_input(inputs, "inputs")
    images = images_from_nested(
        inputs, field="inputs", max_images=max_images, check_booleans=check_booleans
    )
    return images, True


def _named_input(row: Any, field: str) -> Any:
    if not isinstance(row, dict) or set(row) != {INPUT_NAME}:
        keys = sorted(row) if isinstance(row, dict) else row
        raise InvalidInput(
            f"'{field}' objects must have exactly the key '{INPUT_NAME}', got {keys}"
        )
    return row[INPUT_NAME]


async def _predict(
    request: Request, name: str, version: int | None, label: str | None = None
) -> Response:
    settings = settings_of(request)
    call = admit(request, name, version, label)  # 404 or 503 before the body is read
    payload, check_booleans = await read_json(request, settings, lenient=True, blocks=PIXEL_BLOCKS)
    images, columnar = images_from_tfs_payload(payload, settings.max_request_images, check_booleans)
    result = await call.infer(images)
    if UNSURE_NAME not in result.signature_outputs:
        return json_response({"outputs" if columnar else "predictions": result.probabilities})
    unsure = result.unsure
    if columnar:
        return json_response({"outputs": {OUTPUT_NAME: result.probabilities, UNSURE_NAME: unsure}})
    rows = zip(result.probabilities.tolist(), unsure.tolist(), strict=True)
    return json_response(
        {"predictions": [{OUTPUT_NAME: row, UNSURE_NAME: flag} for row, flag in rows]}
    )


@router.post(
    "/v1/models/{name}:predict",
    summary="Predict (TF Serving REST)",
    responses=ERROR_RESPONSES,
    openapi_extra=TFSERVING_PREDICT_DOC,
)
async def predict(request: Request, name: str) -> Response:
    return await _predict(request, name, None)


@router.post(
    "/v1/models/{name}/versions/{version}:predict",
    summary="Predict with a given version (TF Serving REST)",
    responses=ERROR_RESPONSES,
    openapi_extra=TFSERVING_PREDICT_DOC,
)
async def predict_version(request: Request, name: str, version: str) -> Response:
    return await _predict(request, name, parse_version(version))


@router.post(
    "/v1/models/{name}/labels/{label}:predict",
    summary="Predict with the version a label points at (TF Serving REST)",
    responses=ERROR_RESPONSES,
    openapi_extra=TFSERVING_PREDICT_DOC,
)
async def predict_label(request: Request, name: str, label: str) -> Response:
    return await _predict(request, name, None, parse_label(label))


SIGNATURE_KINDS = {"classify": "classification", "regress": "regression"}
"""TF Serving's other inference APIs, which need a signature of their kind: this model has none."""


def refuse_method(
    plane: DataPlane, name: str, version: int | None, label: str | None, method: str
) -> NoReturn:
    """TF Serving's answer, over REST and gRPC, to `method` ("classify", "regress") asked of a
    model whose only signature predicts."""
    plane.resolve(name, version, label)  # an unknown model or version: not found first
    raise InvalidInput(
        f"Expected {SIGNATURE_KINDS[method]} signature method_name to be "
        f"tensorflow/serving/{method}. Was: tensorflow/serving/predict (this model's only "
        f"signature, '{SIGNATURE_NAME}', predicts digits: call Predict, or POST "
        f".../{plane.name}:predict)"
    )


def _method_routes(method: str) -> None:
    """The three paths of `method`, answered 400 as TF Serving answers them for a model without
    a signature of that kind (the routing alone answered 405 Method Not Allowed)."""

    async def by_name(request: Request, name: str) -> Response:
        refuse_method(plane_of(request), name, None, None, method)

    async def by_version(request: Request, name: str, version: str) -> Response:
        refuse_method(plane_of(request), name, parse_version(version), None, method)

    async def by_label(request: Request, name: str, label: str) -> Response:
        refuse_method(plane_of(request), name, None, parse_label(label), method)

    for path, endpoint in (
        ("/v1/models/{name}", by_name),
        ("/v1/models/{name}/versions/{version}", by_version),
        ("/v1/models/{name}/labels/{label}", by_label),
    ):
        router.add_api_route(
            f"{path}:{method}", endpoint, methods=["POST"], include_in_schema=False
        )


for _method in SIGNATURE_KINDS:
    _method_routes(_method)


def _status(plane: DataPlane, name: str, version: int | None) -> Response:
    if name != plane.name:
        raise ModelNotFound(f"Servable not found for request: Latest({shown(name)})")
    known = sorted(plane.status.values(), key=lambda s: s.version, reverse=True)
    if version is not None:
        known = [s for s in known if s.version == version]
        if not known:
            raise ModelNotFound(
                f"Servable not found for request: Specific({shown(name)}, {version})"
            )
    return json_response(
        {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": s.state.value,
                    "status": {
                        "error_code": "UNKNOWN" if s.error else "OK",
                        "error_message": s.error,
                    },
                }
                for s in known
            ]
        }
    )


@router.get("/v1/models", summary="List models (KServe V1)")
async def list_models(request: Request) -> Response:
    """KServe's V1 protocol lists the served models here; TF Serving has no such route."""
    return json_response({"models": [plane_of(request).name]})


@router.get(
    "/v1/models/{name}", summary="Model status (TF Serving REST)", responses=ERROR_RESPONSES
)
async def status(request: Request, name: str) -> Response:
    return _status(plane_of(request), name, None)


@router.get(
    "/v1/models/{name}/versions/{version}",
    summary="Model version status (TF Serving REST)",
    responses=ERROR_RESPONSES,
)
async def status_version(request: Request, name: str, version: str) -> Response:
    return _status(plane_of(request), name, parse_version(version))


def _tensor_info(
    name: str, dims: list[int], tensor: str, dtype: str = "DT_FLOAT"
) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in dims],
            "unknown_rank": False,
        },
        "name": tensor,
    }


def _metadata(
    plane: DataPlane, name: str, version: int | None, label: str | None = None
) -> Response:
    served = plane.resolve(name, version, label)
    signature = {
        "inputs": {
            INPUT_NAME: _tensor_info(
                INPUT_NAME, [-1, 28, 28, 1], f"{SIGNATURE_NAME}_{INPUT_NAME}:0"
            )
        },
        "outputs": {
            name: _tensor_info(name, *OUTPUT_TENSORS[name])
            for name in served.model.signature_outputs
        },
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    return json_response(
        {
            "model_spec": {"name": name, "signature_name": "", "version": str(served.version)},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE_NAME: signature}}},
        }
    )


@router.get(
    "/v1/models/{name}/metadata",
    summary="Model metadata (TF Serving REST)",
    responses=ERROR_RESPONSES,
)
async def metadata(request: Request, name: str) -> Response:
    return _metadata(plane_of(request), name, None)


@router.get(
    "/v1/models/{name}/versions/{version}/metadata",
    summary="Model version metadata (TF Serving REST)",
    responses=ERROR_RESPONSES,
)
async def metadata_version(request: Request, name: str, version: str) -> Response:
    return _metadata(plane_of(request), name, parse_version(version))
