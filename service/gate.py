"""The correctness gate: a version only goes live if it still recognises real digits.

The exporter stores a few dozen real test digits with each version (`samples.npz`) and records
the version's test accuracy in `metadata.json`. A version that loads but answers wrongly (an
untrained model, weights from another model, a preprocessing change) is refused like a corrupt one.
"""

from __future__ import annotations

import numpy as np

from service.runtime import LoadedModel, ModelLoadError

SAMPLES_FILE = "samples.npz"


def check_correctness(model: LoadedModel, margin: float) -> float:
    """Return the accuracy on the shipped digits, or raise `ModelLoadError` if it is too low."""
    recorded = model.metadata.get("test_accuracy")
    if not isinstance(recorded, int | float):
        raise ModelLoadError(f"{model.path}: metadata.json has no test_accuracy to check against")
    path = model.path / SAMPLES_FILE
    try:
        with np.load(path) as samples:
            images, labels = samples["images"], samples["labels"]
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: nothing to check the model against") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path} is unreadable: {exc}") from exc
    if len(images) == 0 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise ModelLoadError(f"{path}: expected images (N, 28, 28) and N labels")
    predicted = model.predict(images[..., None].astype(np.float32)).argmax(axis=1)
    accuracy = float((predicted == labels).mean())
    if accuracy < recorded - margin:
        raise ModelLoadError(
            f"{model.path}: correctness gate failed: {accuracy:.1%} on {len(labels)} shipped "
            f"test digits, below the recorded {recorded:.1%} minus the {margin:.0%} margin"
        )
    return accuracy
