"""What every gRPC inference call does before decoding, whatever its API: the client's deadline
becomes the request's budget (if it is the shorter), and the call is admitted or refused now."""

from __future__ import annotations

import grpc

from service.dataplane import DataPlane
from service.errors import DeadlineExceeded, Overloaded


def admit_within_deadline(
    plane: DataPlane,
    context: grpc.aio.ServicerContext,
    name: str,
    version: int | None,
    label: str | None,
) -> float:
    """The call's budget in seconds; DEADLINE_EXCEEDED when the caller's own deadline is what
    cannot be met (retrying would not help), UNAVAILABLE when the server is simply full."""
    remaining = context.time_remaining()
    budget = plane.budget(None if remaining is None else max(remaining, 0.0) * 1000)
    try:
        plane.admit(name, version, label, budget)
    except Overloaded as refusal:
        if remaining is not None and budget < plane.budget():
            raise DeadlineExceeded(
                f"the call's deadline ({remaining * 1000:.0f} ms) is shorter than the time "
                "it would take to answer"
            ) from refusal
        raise
    return budget
