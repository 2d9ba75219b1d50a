"""Probes: `/healthz` says the process answers (never the model), `/readyz` says send traffic."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from service.protocols.body import json_response, plane_of

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is up")
async def healthz() -> Response:
    return json_response({"status": "alive"})


@router.get(
    "/readyz",
    summary="Readiness: a model is loaded and warmed",
    responses={503: {"description": "No model ready (loading, none found, or shutting down)"}},
)
async def readyz(request: Request) -> Response:
    plane = plane_of(request)
    if plane.ready:
        return json_response(
            {"status": "ready", "model": plane.name, "version": str(plane.default_version)}
        )
    reason = "draining" if plane.draining else "no model version loaded"
    return json_response(
        {"status": "not_ready", "reason": reason, "model": plane.name}, status_code=503
    )
