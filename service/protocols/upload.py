"""`POST /v1/predict/image`: classify uploaded pictures of digits (photos, scans, canvas drawings).

One image as the raw body with its image content type, or several as multipart/form-data. Each is
preprocessed the way MNIST was made (`service.images`), off the event loop, then answered like
`/v1/predict`, optionally with the 28x28 input the model saw.
"""

from __future__ import annotations

import base64
import time
from functools import partial
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive

from service.batcher import PLANNED_SHARE
from service.errors import InvalidInput, MalformedRequest, PayloadTooLarge, UnsupportedMediaType
from service.images import PreparedImage, prepare_upload
from service.params import shown
from service.preparation import Preparation
from service.protocols.admission import admit, client_gone
from service.protocols.body import json_response, read_body, settings_of
from service.protocols.native import LabelQuery, VersionQuery, chosen_version, native_body
from service.schemas import ERROR_RESPONSES
from service.settings import Settings

router = APIRouter(tags=["native"])

IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp", "image/tiff")
UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One or more images (any field name works).",
                        }
                    },
                }
            },
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in IMAGE_TYPES},
        },
    }
}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_uploads(request: Request, settings: Settings, media: str) -> list[tuple[str, bytes]]:
    """`media`: the request's `_media_type`, which the caller has already read."""
    if media == "multipart/form-data":
        # Read first, held to the limit (and decoded, for a Content-Encoding), then parsed:
        # Starlette's parser bounds a file part by nothing, so a chunked body with no
        # Content-Length streamed a gigabyte to a temporary file, and then into memory.
        body = await read_body(request, settings.max_upload_bytes)
        request = Request(request.scope, _replay(body))
        try:
            form = await request.form(
                max_files=settings.max_upload_images,
                max_fields=16,
                max_part_size=settings.max_upload_bytes,
            )
        except Exception as exc:  # Starlette raises its own errors for broken multipart bodies
            status = getattr(exc, "status_code", 400)
            if status == 413:
                raise PayloadTooLarge(str(getattr(exc, "detail", exc))) from None
            raise MalformedRequest(f"cannot read the multipart body: {exc}") from None
        files = [
            (value.filename or key, await value.read())
            for key, value in form.multi_items()
            if isinstance(value, UploadFile)
        ]
        await form.close()
        if not files:
            raise InvalidInput("the multipart body holds no file; attach images as file fields")
        return files
    if media.startswith("image/"):
        return [("image", await read_body(request, settings.max_upload_bytes))]
    raise UnsupportedMediaType(
        f"unsupported Content-Type {shown(media or 'none')}; send an image (image/png, image/jpeg, "
        "...) as the body, or images as multipart/form-data"
    )


def _replay(body: bytes) -> Receive:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _prepare(upload: tuple[str, bytes], max_pixels: int) -> PreparedImage:
    """Runs on a preparation thread: decoding and filtering a photo takes milliseconds of CPU."""
    name, data = upload
    return prepare_upload(data, max_pixels, name)


@router.post(
    "/v1/predict/image",
    summary="Classify uploaded images of digits",
    responses=ERROR_RESPONSES,
    openapi_extra=UPLOAD_DOC,
)
async def predict_image(
    request: Request,
    return_input: Annotated[
        Literal["none", "png", "pixels"],
        Query(description="Also return the 28x28 image the model saw, as a PNG data URL or pixels"),
    ] = "none",
    version: VersionQuery = None,
    label: LabelQuery = None,
) -> Response:
    """PNG, JPEG, BMP, GIF (first frame), WebP or TIFF; any size, colour mode and background."""
    settings = settings_of(request)
    call = admit(request, settings.model_name, *chosen_version(version, label))
    preparation: Preparation = request.app.state.preparation
    media = _media_type(request)
    # One image as the whole body: its count is known before the body is read.
    one_image = media.startswith("image/")
    with preparation.admitted(call.budget, images=1 if one_image else None) as upload:
        uploads = await read_uploads(request, settings, media)
        if len(uploads) > settings.max_upload_images:
            raise InvalidInput(
                f"{len(uploads)} images; at most {settings.max_upload_images} at once"
            )
        preparation.body_arrived(upload, len(uploads), call.budget)
        # The budget counts from here: the time the body took to arrive is the client's network.
        read = time.monotonic()
        prepared = await preparation.run(
            partial(_prepare, max_pixels=settings.max_image_pixels),
            uploads,
            deadline=read + call.budget * PLANNED_SHARE,
            abandoned=lambda: client_gone(request),
        )
    images = np.stack([p.pixels for p in prepared])[..., None].astype(np.float32)
    body = native_body(await call.infer(images, spent=time.monotonic() - read))
    if return_input != "none":
        for prediction, image in zip(body["predictions"], prepared, strict=True):
            if return_input == "png":
                encoded = base64.b64encode(image.png_bytes()).decode()
                prediction["input"] = f"data:image/png;base64,{encoded}"
            else:
                prediction["input"] = image.pixels.tolist()
    return json_response(body)
