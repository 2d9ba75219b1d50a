"""Triton's statistics extension: what each served version's requests and model calls took.

Triton answers `GET /v2/models/{name}[/versions/{v}]/stats` (and gRPC's ModelStatistics) with
running counts and nanoseconds per model version. perf_analyzer, the load generator built for
Triton's protocol, reads them around every measurement to say where a request's time went
(queue, model), and stops without them. Counted by each worker process for the requests it
answered, like the batcher that sees them; the Prometheus metrics are the cross-worker view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """Triton's StatisticDuration: how many, and their nanoseconds in all."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class VersionStatistics:
    """One version's running totals, in Triton's terms: a request succeeds or fails as a whole
    (its time from reaching the version's queue to its answer), waits in the queue, and is
    computed with every other request of its batch, so each request counts its batch's model
    time. Inputs are decoded before the queue and outputs encoded after the answer, by the
    protocol's own code: no phase of the model call is theirs, so they count with 0 ns."""

    version: int
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    """Images computed (Triton counts each request by its batch size)."""
    execution_count: int = 0
    """Model calls."""
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)
    """Model calls and their time by batch size."""

    def request_done(self, succeeded: bool, seconds: float) -> None:
        (self.success if succeeded else self.fail).add(seconds)

    def queued(self, seconds: float) -> None:
        self.queue.add(seconds)

    def computed(self, size: int, requests: int, seconds: float) -> None:
        self.execution_count += 1
        self.inference_count += size
        self.last_inference_ms = int(time.time() * 1000)
        self.compute_infer.add(seconds * requests, requests)
        self.batches.setdefault(size, Duration()).add(seconds)

    def as_dict(self, model: str) -> dict[str, Any]:
        """The version's entry of Triton's `model_stats`, as its REST API writes it."""
        untimed = Duration(self.compute_infer.count).as_dict()
        return {
            "name": model,
            "version": str(self.version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": untimed,
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": untimed,
                "cache_hit": Duration().as_dict(),
                "cache_miss": Duration().as_dict(),
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": Duration(calls.count).as_dict(),
                    "compute_infer": calls.as_dict(),
                    "compute_output": Duration(calls.count).as_dict(),
                }
                for size, calls in sorted(self.batches.items())
            ],
        }
