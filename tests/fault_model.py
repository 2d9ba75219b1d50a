"""A real SavedModel that misbehaves on demand, for fault tests: it answers like the model it
wraps, except that an image whose first pixel is 251 makes the call raise (a TensorFlow
assertion) and an image whose first pixel is 252 makes it spin for its second pixel x 10 ms
(a bounded hang). Both behaviours live in the graph, so they survive saving and loading and run
inside the server exactly as a faulty model would."""

from __future__ import annotations

import shutil
from pathlib import Path

import tensorflow as tf

RAISE_PIXEL = 251.0
HANG_PIXEL = 252.0
# Servers of this model run it on TensorFlow: the TensorFlow Lite converter drops assertions, so
# the converted model would never raise (and answers as the SavedModel on every other input).
ON_TENSORFLOW = {"MNIST_RUNTIME": "savedmodel"}


class FaultyModel(tf.Module):
    def __init__(self, inner: object, spin_per_10ms: int) -> None:
        super().__init__()
        self.inner = inner
        self.spin_per_10ms = spin_per_10ms

    @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image")])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        first = image[:, 0, 0, 0]
        tf.debugging.assert_none_equal(first, RAISE_PIXEL, message="injected model failure")
        hang_steps = tf.reduce_max(tf.where(first == HANG_PIXEL, image[:, 0, 1, 0], 0.0))
        steps = tf.cast(hang_steps, tf.int64) * self.spin_per_10ms

        def spin(i: tf.Tensor, acc: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return i + 1, acc + tf.sin(acc)

        _, noise = tf.while_loop(
            lambda i, _: i < steps, spin, (tf.constant(0, tf.int64), tf.constant(0.5))
        )
        probabilities = self.inner.signatures["serving_default"](image=image)["probabilities"]
        return {"probabilities": probabilities + 0.0 * noise}


def spin_steps_per_10ms() -> int:
    """How many loop steps take 10 ms on this machine (measured, not assumed)."""
    import time

    @tf.function
    def run(n: tf.Tensor) -> tf.Tensor:
        return tf.while_loop(
            lambda i, acc: i < n, lambda i, acc: (i + 1, acc + tf.sin(acc)), (0, 0.5)
        )[1]

    run(tf.constant(1000))
    started = time.perf_counter()
    run(tf.constant(20000))
    return max(1, int(20000 * 0.010 / (time.perf_counter() - started)))


def export_faulty_version(source_version: Path, target_repository: Path, version: int = 1) -> None:
    """Wrap `source_version` (a served SavedModel) and publish it as `version` of `mnist`."""
    inner = tf.saved_model.load(str(source_version))
    module = FaultyModel(inner, spin_steps_per_10ms())
    staging = target_repository / "mnist" / f".staging-{version}"
    staging.parent.mkdir(parents=True, exist_ok=True)
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    for name in ("metadata.json", "samples.npz"):
        shutil.copy(source_version / name, staging / name)
    staging.rename(target_repository / "mnist" / str(version))
