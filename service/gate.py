"""The correctness gate: a version only goes live if it still recognises real digits.

The exporter stores a few dozen real test digits with each version (`samples.npz`) and records
the version's test accuracy in `metadata.json`. A version that loads but answers wrongly (an
untrained model, weights from another model, a preprocessing change) is refused like a corrupt one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.runtime import LoadedModel, ModelLoadError

SAMPLES_FILE = "samples.npz"
RUNTIME_TOLERANCE = 1e-4
"""Largest difference in any probability between a converted runtime and the SavedModel."""


def check_correctness(model: LoadedModel, margin: float) -> float:
    """Return the accuracy on the shipped digits, or raise `ModelLoadError` if it is too low."""
    recorded = model.metadata.get("test_accuracy")
    if not isinstance(recorded, int | float):
        raise ModelLoadError(f"{model.path}: metadata.json has no test_accuracy to check against")
    images, labels = _shipped_digits(model.path)
    predicted = model.predict(images[..., None].astype(np.float32)).argmax(axis=1)
    accuracy = float((predicted == labels).mean())
    if accuracy < recorded - margin:
        raise ModelLoadError(
            f"{model.path}: correctness gate failed: {accuracy:.1%} on {len(labels)} shipped "
            f"test digits, below the recorded {recorded:.1%} minus the {margin:.0%} margin"
        )
    return accuracy


def check_runtime_agrees(model: LoadedModel) -> float:
    """A converted runtime serves only if it answers as the SavedModel does: every probability
    within `RUNTIME_TOLERANCE` and the same digit, on `agreement_images`. Returns the largest
    difference."""
    if model.reference is None:
        return 0.0
    served, reference = model.predict(agreement_images(model.path)), model.reference
    if served.shape != reference.shape:
        raise ModelLoadError(
            f"{model.path}: the {model.runtime} runtime answered {served.shape} for the "
            f"SavedModel's {reference.shape}"
        )
    difference = float(np.abs(served - reference).max())
    disagreements = int((served.argmax(axis=1) != reference.argmax(axis=1)).sum())
    if difference > RUNTIME_TOLERANCE or disagreements:
        raise ModelLoadError(
            f"{model.path}: the {model.runtime} runtime does not answer as the SavedModel does "
            f"(largest probability difference {difference:.2g}, {disagreements} different "
            f"digits in {len(served)} images); serve it with MNIST_RUNTIME=savedmodel"
        )
    return difference


def agreement_images(path: Path) -> npt.NDArray[np.float32]:
    """What a converted runtime and the SavedModel must answer alike: the version's shipped
    digits (when it has them) and 64 fixed random images, as (N, 28, 28, 1) float32."""
    noise = np.random.default_rng(0).uniform(0, 255, (64, 28, 28)).astype(np.float32)
    try:
        digits = _shipped_digits(path)[0].astype(np.float32)
    except ModelLoadError:
        digits = noise[:0]
    return np.concatenate([digits, noise])[..., None]


def _shipped_digits(version_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    path = version_dir / SAMPLES_FILE
    try:
        with np.load(path) as samples:
            images, labels = samples["images"], samples["labels"]
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: nothing to check the model against") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path} is unreadable: {exc}") from exc
    if len(images) == 0 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise ModelLoadError(f"{path}: expected images (N, 28, 28) and N labels")
    return images, labels
