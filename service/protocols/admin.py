"""Admin routes: reload the repository now, inspect versions, move labels. Admin key required."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from service.errors import ModelNotFound
from service.params import parse_label, shown
from service.protocols.body import json_response, plane_of, read_json, settings_of
from service.schemas import ERROR_RESPONSES, LabelTarget

router = APIRouter(prefix="/v1/admin", tags=["admin"])  # admin key: see service.auth


def _check_name(name: str, served_name: str) -> None:
    if name != served_name:
        raise ModelNotFound(f"model {shown(name)} not found; this server serves '{served_name}'")


@router.post("/reload", summary="Look at the model repository now", responses=ERROR_RESPONSES)
async def reload(request: Request) -> Response:
    """Load new versions, unload removed ones (once their requests finished), as the poller does."""
    return json_response(await plane_of(request).reload())


@router.get("/models/{name}", summary="Versions, their state and labels", responses=ERROR_RESPONSES)
async def describe(request: Request, name: str) -> Response:
    plane = plane_of(request)
    _check_name(name, plane.name)
    return json_response(plane.describe())


@router.put(
    "/models/{name}/labels/{label}",
    summary="Point a label (stable, canary, ...) at a served version",
    responses=ERROR_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": LabelTarget.model_json_schema()}},
        }
    },
)
async def set_label(request: Request, name: str, label: str) -> Response:
    """The body is read as every other route reads it (a compressed body decoded, the body
    limit, the same 400/415 errors), not by FastAPI's own body parameter."""
    plane = plane_of(request)
    _check_name(name, plane.name)
    payload, _ = await read_json(request, settings_of(request))
    try:
        target = LabelTarget.model_validate(payload)
    except ValidationError as exc:  # worded by the app's handler, as FastAPI's own body was
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None
    plane.set_label(parse_label(label, in_path=False), target.version)
    return json_response(plane.describe())


@router.delete("/models/{name}/labels/{label}", summary="Remove a label", responses=ERROR_RESPONSES)
async def remove_label(request: Request, name: str, label: str) -> Response:
    plane = plane_of(request)
    _check_name(name, plane.name)
    plane.remove_label(parse_label(label))
    return json_response(plane.describe())
