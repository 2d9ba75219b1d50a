"""Test-set evaluation: accuracy, loss, confusion matrix and per-class precision/recall/F1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from training.export import NUM_CLASSES


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    confusion: npt.NDArray[np.int64]
    """confusion[true, predicted]"""
    predicted: npt.NDArray[np.int64]
    probabilities: npt.NDArray[np.float32]

    def per_class(self) -> dict[str, dict[str, float | int]]:
        tp = np.diag(self.confusion).astype(np.float64)
        predicted_count = self.confusion.sum(axis=0)
        support = self.confusion.sum(axis=1)
        precision = np.divide(tp, predicted_count, out=np.zeros_like(tp), where=predicted_count > 0)
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        denominator = precision + recall
        f1 = np.divide(
            2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0
        )
        return {
            str(digit): {
                "precision": round(float(precision[digit]), 6),
                "recall": round(float(recall[digit]), 6),
                "f1": round(float(f1[digit]), 6),
                "support": int(support[digit]),
            }
            for digit in range(NUM_CLASSES)
        }

    def summary(self) -> dict[str, Any]:
        return {
            "accuracy": round(self.accuracy, 6),
            "loss": round(self.loss, 6),
            "per_class": self.per_class(),
            "confusion_matrix": self.confusion.tolist(),
        }


def evaluate_probabilities(
    probabilities: npt.NDArray[np.float32], labels: npt.NDArray[np.integer[Any]]
) -> Evaluation:
    """Score predictions computed elsewhere, so the one forward pass serves every figure."""
    labels = labels.astype(np.int64)
    predicted = probabilities.argmax(axis=1).astype(np.int64)
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.log(np.clip(picked, 1e-7, 1.0)).mean()) if len(labels) else 0.0
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    accuracy = float((predicted == labels).mean()) if len(labels) else 0.0
    return Evaluation(accuracy, loss, confusion, predicted, probabilities)
