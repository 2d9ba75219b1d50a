"""BentoML 1.4 serving this project's SavedModel, as a BentoML user would write it: one service
with one API taking the same `{"instances": [...]}` body as our `/v1/predict`; `Digits` with
BentoML's adaptive batching, `DigitsUnbatched` without (the better of the two for large requests).

Runs inside the peers benchmark's own BentoML virtual environment, never the project's; the
model path comes from `MNIST_MODEL_PATH`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import bentoml
import numpy as np


def load_predictor() -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(os.environ["MNIST_MODEL_PATH"])
    signature = loaded.signatures["serving_default"]

    def predict(instances: np.ndarray) -> np.ndarray:
        images = instances.astype(np.float32).reshape(-1, 28, 28, 1)
        # a keyword argument: a concrete function called positionally is ~15x slower
        probabilities: np.ndarray = signature(image=tf.convert_to_tensor(images))[
            "probabilities"
        ].numpy()
        return probabilities

    predict.loaded = loaded  # type: ignore[attr-defined]  # the signature dies with it
    return predict


@bentoml.service(workers=1, traffic={"timeout": 10})
class Digits:
    def __init__(self) -> None:
        self._predict = load_predictor()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def predict(self, instances: np.ndarray) -> np.ndarray:
        return self._predict(instances)


@bentoml.service(workers=1, traffic={"timeout": 10})
class DigitsUnbatched:
    def __init__(self) -> None:
        self._predict = load_predictor()

    @bentoml.api
    def predict(self, instances: np.ndarray) -> np.ndarray:
        return self._predict(instances)
