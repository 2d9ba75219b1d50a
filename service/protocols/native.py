"""The native API: `POST /v1/predict` with `{"instances": [...]}`, answered digit by digit."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from service.dataplane import Inference
from service.decoding import images_from_nested
from service.errors import InvalidInput
from service.params import parse_label, parse_version
from service.protocols.admission import admit
from service.protocols.body import json_response, read_json, settings_of
from service.schemas import ERROR_RESPONSES, PredictRequest, PredictResponse, request_body_doc

router = APIRouter(tags=["native"])

PIXEL_BLOCKS = frozenset({("instances",)})

VersionQuery = Annotated[
    str | None, Query(description="Answer with this version (default: newest)", examples=["1"])
]
LabelQuery = Annotated[
    str | None,
    Query(description="Answer with the version this label points at", examples=["stable"]),
]


def chosen_version(version: str | None, label: str | None) -> tuple[int | None, str | None]:
    """The `version` or `label` query parameter, parsed (giving both is a client mistake)."""
    if version is not None and label is not None:
        raise InvalidInput("give either 'version' or 'label', not both")
    wanted = None if version is None else parse_version(version, in_path=False)
    return wanted, None if label is None else parse_label(label, in_path=False)


@router.post(
    "/v1/predict",
    summary="Classify handwritten digits",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body_doc(PredictRequest),
)
async def predict(
    request: Request, version: VersionQuery = None, label: LabelQuery = None
) -> Response:
    """Each image is 28x28 (or 784 flat) numbers, 0 background to 255 ink."""
    settings = settings_of(request)
    call = admit(request, settings.model_name, *chosen_version(version, label))
    payload, check_booleans = await read_json(request, settings, blocks=PIXEL_BLOCKS)
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('body must be a JSON object with an "instances" list of images')
    images = images_from_nested(
        payload["instances"],
        field="instances",
        max_images=settings.max_request_images,
        check_booleans=check_booleans,
    )
    return json_response(native_body(await call.infer(images)))


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
