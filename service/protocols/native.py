"""The native API: `POST /v1/predict` with `{"instances": [...]}`, answered digit by digit."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from service.dataplane import Inference
from service.decoding import images_from_nested
from service.errors import InvalidInput
from service.protocols.body import json_response, plane_of, read_json, settings_of
from service.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse, request_body_doc

router = APIRouter(tags=["native"])


@router.post(
    "/v1/predict",
    summary="Classify handwritten digits",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body_doc(PredictRequest),
)
async def predict(
    request: Request,
    version: Annotated[
        int | None, Query(ge=1, description="Answer with this version (default: newest)")
    ] = None,
    label: Annotated[
        str | None, Query(description="Answer with the version this label points at")
    ] = None,
) -> Response:
    """Each image is 28x28 (or 784 flat) numbers, 0 background to 255 ink."""
    if version is not None and label is not None:
        raise InvalidInput("give either 'version' or 'label', not both")
    plane, settings = plane_of(request), settings_of(request)
    payload, check_booleans = await read_json(request, settings)
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('body must be a JSON object with an "instances" list of images')
    images = images_from_nested(
        payload["instances"],
        field="instances",
        max_images=settings.max_request_images,
        check_booleans=check_booleans,
    )
    request.state.images = len(images)
    return json_response(native_body(await plane.infer(images, plane.name, version, label)))


def native_body(result: Inference) -> dict[str, Any]:
    probabilities = result.probabilities
    digits = probabilities.argmax(axis=1)
    rows = probabilities.tolist()
    return {
        "model_name": result.model_name,
        "model_version": str(result.version),
        "predictions": [
            {"digit": int(digit), "probability": row[digit], "probabilities": row}
            for digit, row in zip(digits.tolist(), rows, strict=True)
        ],
    }
