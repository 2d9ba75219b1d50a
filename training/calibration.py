"""How far the model's probabilities can be trusted, and the two numbers export records about it:
a softmax temperature that makes them honest, and the confidence below which an answer is
flagged "unsure".

Temperature scaling (Guo et al., 2017) divides the logits by one number fitted on held-out data;
it changes no prediction, only how sure each one claims to be. The unsure threshold is a quantile
of the calibrated confidence on held-out MNIST digits, so the share of ordinary digits flagged is
chosen, not discovered.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating[Any]]

ECE_BINS = 15
UNSURE_SHARE = 0.01
"""Share of held-out MNIST digits the unsure threshold flags (the target on the test set is 1%)."""


def softmax(logits: FloatArray, temperature: float = 1.0) -> npt.NDArray[np.float64]:
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    result: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return result


def expected_calibration_error(
    confidence: FloatArray, correct: npt.NDArray[np.bool_], bins: int = ECE_BINS
) -> float:
    """The gap between claimed confidence and accuracy, averaged over equal-width bins."""
    error = 0.0
    for low, high in itertools.pairwise(np.linspace(0, 1, bins + 1)):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(error)


def negative_log_likelihood(
    logits: FloatArray, labels: npt.NDArray[np.integer[Any]], temperature: float
) -> float:
    probabilities = softmax(logits, temperature)
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def fit_temperature(logits: FloatArray, labels: npt.NDArray[np.integer[Any]]) -> float:
    """The temperature with the least negative log-likelihood, by golden-section search on its
    logarithm (the likelihood is smooth and has one minimum in T)."""
    if len(labels) == 0:
        return 1.0
    low, high = np.log(0.25), np.log(8.0)
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if negative_log_likelihood(logits, labels, np.exp(a)) < negative_log_likelihood(
            logits, labels, np.exp(b)
        ):
            high = b
        else:
            low = a
    return round(float(np.exp((low + high) / 2)), 4)


def unsure_threshold(confidence: FloatArray, share: float = UNSURE_SHARE) -> float:
    """The confidence below which `share` of these (ordinary, held-out) answers fall."""
    if len(confidence) == 0:
        return 0.5
    return round(float(np.quantile(confidence, share)), 4)


@dataclass(frozen=True)
class Calibration:
    temperature: float
    unsure_below: float

    def to_json(self, report: dict[str, Any]) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "unsure_below": self.unsure_below,
            "unsure_share_of_validation": UNSURE_SHARE,
            "applied_in": "the serving signature (probabilities = softmax(logits / temperature))",
            **report,
        }


def calibrate(
    mnist_logits: FloatArray,
    mnist_labels: npt.NDArray[np.integer[Any]],
    foreign_logits: FloatArray,
    foreign_labels: npt.NDArray[np.integer[Any]],
) -> Calibration:
    """Temperature from held-out MNIST and held-in foreign digits together (either alone is
    over- or under-confident on the other); the threshold from the MNIST part alone, because
    what it promises is a share of ordinary digits."""
    logits = np.concatenate([mnist_logits, foreign_logits])
    labels = np.concatenate([mnist_labels, foreign_labels])
    temperature = fit_temperature(logits, labels)
    confidence = softmax(mnist_logits, temperature).max(axis=1)
    return Calibration(temperature, unsure_threshold(confidence))


def calibration_report(
    logits: FloatArray, labels: npt.NDArray[np.integer[Any]], calibration: Calibration
) -> dict[str, float]:
    """Accuracy, ECE before and after, and the share flagged unsure, for one labelled set."""
    before = softmax(logits)
    after = softmax(logits, calibration.temperature)
    correct = before.argmax(axis=1) == labels
    return {
        "images": len(labels),
        "accuracy": round(float(correct.mean()), 6),
        "ece_before": round(expected_calibration_error(before.max(axis=1), correct), 6),
        "ece_after": round(expected_calibration_error(after.max(axis=1), correct), 6),
        "flagged_unsure": round(float((after.max(axis=1) < calibration.unsure_below).mean()), 6),
    }
