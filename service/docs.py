"""`/docs` (Swagger UI) and `/redoc`, served with their scripts and styles from this process.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on a machine without
internet (or behind a proxy that blocks it). The assets come from `fastapi-offline`, a maintained
package that bundles both; only its files are used, the pages are FastAPI's own.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"
OPENAPI_PATH = "/openapi.json"
_ASSETS = Path(fastapi_offline.__file__).parent / "static"
_TITLE = "mnist-serving"
# Nothing from elsewhere, even where a bundle asks for it (ReDoc's footer fetches its vendor's
# logo from a CDN): the pages work the same offline and leak nothing when online.
_SAME_ORIGIN_ONLY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; worker-src 'self' blob:"
}

router = APIRouter(include_in_schema=False)
router.mount(ASSETS_PATH, StaticFiles(directory=_ASSETS), name="docs-assets")


def _root(request: Request) -> str:
    """The prefix a proxy mounts the service under (`--root-path`), so links stay right."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_swagger_ui_html(
        openapi_url=f"{root}{OPENAPI_PATH}",
        title=f"{_TITLE} - API",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}/favicon.ico",
    )
    page.headers.update(_SAME_ORIGIN_ONLY)
    return page


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    page = get_redoc_html(
        openapi_url=f"{root}{OPENAPI_PATH}",
        title=f"{_TITLE} - API",
        redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{root}/favicon.ico",
        with_google_fonts=False,
    )
    page.headers.update(_SAME_ORIGIN_ONLY)
    return page
