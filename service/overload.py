"""Refusing inference requests under overload before any routing, as plain ASGI.

Under overload most requests are refused, and what a refusal costs is taken from the requests
being answered: the server's one core runs the event loop and the model. The routes already
refuse before reading a body (`service.protocols.admission`); this does the same decision ahead
of FastAPI's routing, dependency and exception layers, which cost about as much again as the
refusal itself. It applies when one version serves (the common case), where every inference
route would land on the same queue; with several versions the routes decide.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.dataplane import DataPlane
from service.errors import ServingError, send_error
from service.params import TIMEOUT_HEADER, parse_timeout_ms

INFERENCE_PATH_ENDS = (":predict", "/infer", "/v1/predict", "/v1/predict/image")
_TIMEOUT_HEADER = TIMEOUT_HEADER.encode()


class OverloadGuard:
    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith(INFERENCE_PATH_ENDS)
            and len(self.plane.served) == 1
        ):
            budget = self._budget(scope)
            if budget is not None:
                try:  # the one version every inference route would resolve to
                    self.plane.admit(self.plane.name, None, None, budget)
                except ServingError as refusal:
                    await send_error(refusal, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _budget(self, scope: Scope) -> float | None:
        """The request's budget; None for a header the route must refuse (400) itself."""
        for name, value in scope["headers"]:
            if name == _TIMEOUT_HEADER:
                milliseconds = parse_timeout_ms(value.decode("latin-1"))
                return None if milliseconds is None else self.plane.budget(milliseconds)
        return self.plane.budget()
