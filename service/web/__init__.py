"""The drawing page at `/` (one HTML file: no CDN, no external fonts) and its icon."""

from __future__ import annotations

import functools
import io
from importlib.resources import files

from fastapi import APIRouter
from PIL import Image, ImageDraw
from starlette.responses import HTMLResponse, Response

router = APIRouter(tags=["web"])

# The icon: a blue tile with a hand-drawn "7", as a stroke on the page would draw it.
_ICON_STROKE = ((0.28, 0.3), (0.72, 0.3), (0.44, 0.78))
_ICON_BLUE = (37, 99, 235)


@router.get("/", include_in_schema=False)
async def index() -> HTMLResponse:
    page = files(__package__).joinpath("index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(
        _icon(), media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"}
    )


@functools.cache
def _icon() -> bytes:
    """Drawn once with Pillow at 4x and scaled down, so the stroke is smooth at 16 and 32 px."""
    side = 256
    tile = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(tile)
    draw.rounded_rectangle((0, 0, side - 1, side - 1), radius=side // 5, fill=_ICON_BLUE)
    points = [(x * side, y * side) for x, y in _ICON_STROKE]
    width = side // 9
    draw.line(points, fill="white", width=width, joint="curve")
    for x, y in (points[0], points[-1]):  # round pen ends, as the page's pen draws them
        draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill="white")
    out = io.BytesIO()
    tile.save(out, format="ICO", sizes=[(16, 16), (32, 32), (48, 48), (64, 64)])
    return out.getvalue()
