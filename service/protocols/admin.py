"""Admin routes: reload the repository now, inspect versions, move labels. Admin key required."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body
from starlette.requests import Request
from starlette.responses import Response

from service.errors import ModelNotFound
from service.params import parse_label, shown
from service.protocols.body import json_response, plane_of
from service.schemas import ERROR_RESPONSES

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
)
async def set_label(
    request: Request,
    name: str,
    label: str,
    version: Annotated[int, Body(embed=True, ge=1, examples=[2])],
) -> Response:
    plane = plane_of(request)
    _check_name(name, plane.name)
    plane.set_label(parse_label(label, in_path=False), version)
    return json_response(plane.describe())


@router.delete("/models/{name}/labels/{label}", summary="Remove a label", responses=ERROR_RESPONSES)
async def remove_label(request: Request, name: str, label: str) -> Response:
    plane = plane_of(request)
    _check_name(name, plane.name)
    plane.remove_label(parse_label(label))
    return json_response(plane.describe())
