"""How long the model takes for n images, learnt from the calls it makes.

Admission needs to know, before a request is queued, when it would be answered. A model call's
duration is close to linear in its batch size, t(n) = a + b*n: a fixed cost per call (TensorFlow's
dispatch, ~0.3-0.6 ms here) and a cost per image. Both are fitted by least squares over the recent
calls, each weighted by recency, so the estimate follows a slower neighbour or a new version
within a few dozen calls (the batcher learns a slower call only when no request was refused
around it: `DynamicBatcher._learn`). Seeded with the warm-up's timings, it is right from the
first request.
"""

from __future__ import annotations

import math

DECAY = 0.98
"""Weight kept by older calls at each new call: the fit covers roughly the last 50 calls."""


class CostModel:
    def __init__(self, seed: list[tuple[int, float]] | None = None) -> None:
        self._w = self._n = self._nn = self._t = self._nt = 0.0
        self._fitted = (0.0, 0.0)
        for size, seconds in seed or []:
            self.observe(size, seconds)

    def observe(self, size: int, seconds: float) -> None:
        d = DECAY
        self._w = self._w * d + 1.0
        self._n = self._n * d + size
        self._nn = self._nn * d + size * size
        self._t = self._t * d + seconds
        self._nt = self._nt * d + size * seconds
        self._fitted = self._fit()

    def coefficients(self) -> tuple[float, float]:
        """(seconds per call, seconds per image), both non-negative; refitted once per call
        observed, read on every admission decision."""
        return self._fitted

    def _fit(self) -> tuple[float, float]:
        if self._w == 0:
            return 0.0, 0.0
        spread = self._w * self._nn - self._n * self._n
        if spread > 1e-9 * self._w * self._nn:
            per_image = (self._w * self._nt - self._n * self._t) / spread
            per_call = (self._t - per_image * self._n) / self._w
            if per_image >= 0 and per_call >= 0:
                return per_call, per_image
        # All recent calls had one size (typical under steady overload): the mean cost per image
        # is then exactly what the fit needs to predict.
        return 0.0, self._t / self._n if self._n else 0.0

    def seconds(self, images: int, calls: int) -> float:
        """Time to run `images` through the model in `calls` calls."""
        per_call, per_image = self.coefficients()
        return calls * per_call + images * per_image

    def batched_seconds(self, images: int, max_batch_size: int) -> float:
        """Time to run `images` in full batches of `max_batch_size`."""
        return self.seconds(images, math.ceil(images / max_batch_size))
