"""The native API: `POST /v1/predict` with `{"instances": [...]}`, answered digit by digit."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query
from starlette.requests import Request
from starlette.responses import Response

from service.binary import NPY_MEDIA_TYPE, RAW_MEDIA_TYPE, images_from_npy, images_from_raw
from service.dataplane import Inference
from service.decoding import images_from_nested
from service.errors import InvalidInput
from service.params import parse_label, parse_version
from service.protocols.admission import admit
from service.protocols.body import json_response, media_type, read_body, read_json, settings_of
from service.schemas import ERROR_RESPONSES, PREDICT_DOC, PredictResponse

router = APIRouter(tags=["native"])

PIXEL_BLOCKS = frozenset({("instances",)})
BINARY_TYPES = f", {RAW_MEDIA_TYPE} (N x 784 uint8 pixels) or {NPY_MEDIA_TYPE} (a .npy file)"

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
    openapi_extra=PREDICT_DOC,
)
async def predict(
    request: Request, version: VersionQuery = None, label: LabelQuery = None
) -> Response:
    """Each image is 28x28 (or 784 flat) numbers, 0 background to 255 ink: as JSON, or as
    binary (`application/octet-stream`: N x 784 uint8 bytes; `application/x-npy`: a .npy file)."""
    settings = settings_of(request)
    call = admit(request, settings.model_name, *chosen_version(version, label))
    media = media_type(request)
    if media in (RAW_MEDIA_TYPE, NPY_MEDIA_TYPE):
        body = await read_body(request, settings.max_body_bytes)
        decode = images_from_raw if media == RAW_MEDIA_TYPE else images_from_npy
        images = decode(body, settings.max_request_images)
    else:
        payload, check_booleans = await read_json(
            request, settings, blocks=PIXEL_BLOCKS, also=BINARY_TYPES
        )
        images = images_from_native_payload(payload, settings.max_request_images, check_booleans)
    return json_response(native_body(await call.infer(images)))


def images_from_native_payload(
    payload: Any, max_images: int, check_booleans: bool = True
) -> npt.NDArray[np.float32]:
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('body must be a JSON object with an "instances" list of images')
    return images_from_nested(
        payload["instances"],
        field="instances",
        max_images=max_images,
        check_booleans=check_booleans,
    )


def native_body(result: Inference) -> dict[str, Any]:
    probabilities = result.probabilities
    digits = probabilities.argmax(axis=1)
    rows = probabilities.tolist()
    return {
        "model_name": result.model_name,
        "model_version": str(result.version),
        "predictions": [
            {"digit": digit, "probability": row[digit], "unsure": unsure, "probabilities": row}
            for digit, row, unsure in zip(
                digits.tolist(), rows, result.unsure.tolist(), strict=True
            )
        ],
    }
