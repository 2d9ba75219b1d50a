"""Atomic export into a TensorFlow-Serving-style model repository: `<repo>/<name>/<version>/`.

A version directory appears by a single `rename` of a fully written hidden staging directory in
the same parent, so a server polling the repository never sees half a model, and a run that fails
half-way leaves only a staging directory that it removes on the way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # TensorFlow loads only when a model is written: the CLI's checks stay fast
    import keras

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
UNSURE_NAME = "unsure"
LOGITS_LAYER = "logits"
"""The layer before the softmax: the temperature divides its weights."""
METADATA_FILE = "metadata.json"

INPUT_SPEC: dict[str, Any] = {
    "name": INPUT_NAME,
    "dtype": "float32",
    "shape": [-1, *INPUT_SHAPE],
    "value_range": [0, 255],
    "layout": "NHWC, grayscale; 0 is background, 255 is ink (MNIST convention)",
}
OUTPUT_SPEC: dict[str, Any] = {
    "name": OUTPUT_NAME,
    "dtype": "float32",
    "shape": [-1, NUM_CLASSES],
    "meaning": "softmax probability of each digit 0-9",
}
UNSURE_SPEC: dict[str, Any] = {
    "name": UNSURE_NAME,
    "dtype": "bool",
    "shape": [-1],
    "meaning": "true when the largest probability is below the calibration's unsure threshold",
}


def existing_versions(model_dir: Path) -> list[int]:
    """Versions are directories named by positive integers; the rest (staging) is ignored."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in model_dir.iterdir()
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0
    )


def logits_of(model: keras.Model) -> keras.Model:
    """The same model without its final softmax."""
    import keras

    return keras.Model(model.input, model.get_layer(LOGITS_LAYER).output)


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """A copy of `model` whose logits layer is divided by `temperature` in its weights.

    softmax(logits / T) is softmax of a Dense layer with kernel / T and bias / T, so the
    calibrated model costs exactly what the uncalibrated one does: no extra op at serving time.
    """
    import keras

    if temperature == 1.0:
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    layer = copy.get_layer(LOGITS_LAYER)
    layer.set_weights([weight / temperature for weight in layer.get_weights()])
    return copy


def save_serving_model(
    model: keras.Model, path: Path, temperature: float = 1.0, unsure_below: float | None = None
) -> None:
    """Write a SavedModel whose only signature is `serving_default(image) -> {probabilities}`,
    plus `unsure` when a threshold is given.

    The signature is explicit (named input and outputs, dynamic batch) so TensorFlow Serving and
    this project's server read the same contract from the file. The calibration (temperature and
    unsure threshold) is part of the graph, so every client of the file, TensorFlow Serving's
    too, gets calibrated probabilities and the same flag as this project's server.
    """
    import keras
    import tensorflow as tf

    served = with_temperature(model, temperature)
    archive = keras.export.ExportArchive()
    archive.track(served)

    def serve(image: Any) -> dict[str, Any]:
        probabilities = served(image, training=False)
        outputs = {OUTPUT_NAME: probabilities}
        if unsure_below is not None:
            outputs[UNSURE_NAME] = tf.reduce_max(probabilities, axis=1) < unsure_below
        return outputs

    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=serve,
        input_signature=[tf.TensorSpec([None, *INPUT_SHAPE], tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(str(path), verbose=False)


@contextlib.contextmanager
def staging_directory(model_dir: Path) -> Iterator[Path]:
    """A hidden directory beside the versions, removed whatever happens inside the block."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    staging.chmod(
        0o755
    )  # mkdtemp's 0700 would hide the version from a server running as another user
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, model_dir: Path) -> tuple[int, Path]:
    """Rename `staging` to the next free version number; retry if a concurrent export took it."""
    for _ in range(100):
        version = max(existing_versions(model_dir), default=0) + 1
        target = model_dir / str(version)
        metadata_path = staging / METADATA_FILE
        metadata = json.loads(metadata_path.read_text())
        metadata["version"] = version
        metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
        try:
            os.rename(staging, target)  # fails if another writer created `target` meanwhile
        except OSError:
            if target.exists():
                continue
            raise
        _fsync_dir(model_dir)
        return version, target
    raise RuntimeError(f"could not find a free version number in {model_dir}")


class ExportFailed(RuntimeError):
    """The version could not be written (a full disk, a read-only mount); nothing was published."""


def export_version(
    model: keras.Model,
    model_dir: Path,
    metadata: dict[str, Any],
    write_extras: Callable[[Path], None] | None = None,
    temperature: float = 1.0,
    unsure_below: float | None = None,
) -> tuple[int, Path]:
    """Write the SavedModel, `metadata.json` and any extras (reports), then publish atomically.

    A write that fails (TensorFlow reports it as its own error type, Python as `OSError`) is
    `ExportFailed`; the staging directory is removed on the way out, so nothing half-written
    is ever left in the repository.
    """
    import tensorflow as tf

    try:
        with staging_directory(model_dir) as staging:
            save_serving_model(model, staging, temperature, unsure_below)
            if write_extras is not None:
                write_extras(staging)
            metadata = {
                **metadata,
                "signature_name": SIGNATURE_NAME,
                "input": INPUT_SPEC,
                "output": OUTPUT_SPEC,
                "extra_outputs": [UNSURE_SPEC] if unsure_below is not None else [],
            }
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
            return publish(staging, model_dir)
    except (OSError, tf.errors.OpError) as exc:
        reason = str(exc)
        if isinstance(exc, tf.errors.OpError):  # "{{function_node ...}} <file>; <why> [Op:X]"
            reason = exc.message.rsplit("; ", 1)[-1].split(" [Op:")[0]
        raise ExportFailed(
            f"could not write the model into {model_dir}: {reason.strip()}; nothing was published"
        ) from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
