"""What every inference route does around the model, whatever its protocol: give the request its
time budget, admit it (or refuse it) before its body is read, and drop it if its client leaves.

A route reads: `call = admit(request, name, version, label)`, then read and decode the body, then
`await call.infer(images)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from starlette.requests import Request

from service.dataplane import DataPlane, Inference
from service.errors import MalformedRequest
from service.params import TIMEOUT_HEADER, parse_timeout_ms, shown
from service.protocols.body import plane_of


def request_budget(request: Request, plane: DataPlane) -> float:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return plane.budget()
    milliseconds = parse_timeout_ms(raw)
    if milliseconds is None:
        raise MalformedRequest(
            f"{TIMEOUT_HEADER} must be a positive whole number of milliseconds, got {shown(raw)}"
        )
    return plane.budget(milliseconds)


async def client_gone(request: Request) -> None:
    """Completes when the client disconnects. Called once the body has been read, so the only
    message left on the ASGI channel is `http.disconnect`."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass(frozen=True)
class AdmittedCall:
    request: Request
    plane: DataPlane
    name: str
    version: int | None
    label: str | None
    budget: float
    admitted_ns: int = 0
    """When it was admitted (tracing on only: the start of its "decode" span)."""

    async def infer(self, images: npt.NDArray[np.float32], spent: float = 0.0) -> Inference:
        """`spent`: the part of the budget already used on this side of the model (an upload's
        wait for a preparation thread and its preparation)."""
        state = self.request.state
        state.images = len(images)
        tracing = self.plane.tracing
        if tracing is not None:  # reading and decoding the body: from admission to here
            tracing.child("decode", self.admitted_ns, time.time_ns())
        result = await self.plane.infer(
            images,
            self.name,
            self.version,
            self.label,
            budget=self.budget - spent,
            abandoned=lambda: client_gone(self.request),
        )
        if tracing is not None:  # for the request span; "encode" starts here
            state.model, state.version = result.model_name, result.version
            state.answered_ns = time.time_ns()
        return result


def admit(
    request: Request, name: str, version: int | None = None, label: str | None = None
) -> AdmittedCall:
    """404 for an unknown model, 503 now if the queue cannot answer a request of the usual
    size in time: under overload a refusal then costs no body read and no parse."""
    plane = plane_of(request)
    budget = request_budget(request, plane)
    plane.admit(name, version, label, budget)
    admitted_ns = time.time_ns() if plane.tracing is not None else 0
    return AdmittedCall(request, plane, name, version, label, budget, admitted_ns)
