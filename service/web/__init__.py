"""The drawing page at `/`: one self-contained HTML file (no CDN, no external fonts)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import HTMLResponse

router = APIRouter(tags=["web"])


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    page = files(__package__).joinpath("index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})
