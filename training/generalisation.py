"""The figures written at export about what MNIST's test set does not show: stroke and shape
robustness, held-out foreign handwriting, not-a-digit pictures and calibration (and the data for
`training.report.plot_hardest`).

These are smaller versions of `bench/robustness.py` and `bench/foreign_handwriting.py`, run
in-process on the new model so that every version carries them; the benchmarks remain the
reference figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from training.calibration import Calibration, expected_calibration_error, softmax
from training.extra_data import LabelledImages
from training.perturb import PERTURBATIONS, perturb_all

Logits = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]

ROBUSTNESS_SEED = 2019  # as bench/robustness.py: the same perturbations of the same digits
ROBUSTNESS_DIGITS = 2_000


def robustness(
    logits: Logits, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.integer[Any]]
) -> dict[str, float]:
    """Accuracy on the first test digits as they are and under each perturbation."""
    images, labels = images[:ROBUSTNESS_DIGITS], labels[:ROBUSTNESS_DIGITS]

    def accuracy(digits: npt.NDArray[np.uint8]) -> float:
        return round(float((logits(digits).argmax(axis=1) == labels).mean()), 4)

    table = {"none": accuracy(images)}
    for name in PERTURBATIONS:
        table[name] = accuracy(perturb_all(images, name, ROBUSTNESS_SEED))
    return table


def held_out_report(
    logits: Logits, held_out: LabelledImages, calibration: Calibration
) -> tuple[dict[str, Any], npt.NDArray[np.float64]]:
    """Foreign digits: accuracy, calibration and unsure share of wrong and right answers;
    not-a-digit pictures: the share flagged unsure. Also returns the digits' probabilities."""
    labels = held_out.labels
    is_digit = held_out.targets.max(axis=1) == 1.0
    raw = logits(held_out.images).astype(np.float64)
    probabilities = softmax(raw, calibration.temperature)
    confidence = probabilities.max(axis=1)
    unsure = confidence < calibration.unsure_below
    digits = probabilities[is_digit]
    correct = digits.argmax(axis=1) == labels[is_digit]
    wrong = ~correct
    return {
        "foreign_held_out": {
            "images": int(is_digit.sum()),
            "accuracy": round(float(correct.mean()), 4) if correct.size else None,
            "ece_before": round(
                expected_calibration_error(softmax(raw[is_digit]).max(axis=1), correct), 4
            ),
            "ece_after": round(expected_calibration_error(confidence[is_digit], correct), 4),
            "wrong_flagged_unsure": round(float(unsure[is_digit][wrong].mean()), 4)
            if wrong.any()
            else None,
            "right_flagged_unsure": round(float(unsure[is_digit][correct].mean()), 4)
            if correct.any()
            else None,
        },
        "not_digits_held_out": {
            "images": int((~is_digit).sum()),
            "flagged_unsure": round(float(unsure[~is_digit].mean()), 4)
            if (~is_digit).any()
            else None,
        },
    }, digits
