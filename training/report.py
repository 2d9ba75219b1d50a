"""The PNG reports written next to an exported model, for a human deciding whether to ship it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from training.evaluate import Evaluation


def plot_history(history: Mapping[str, Sequence[float]], path: Path) -> None:
    """Accuracy and loss, train against validation, one panel each."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        train = history.get(metric, [])
        epochs = np.arange(1, len(train) + 1)
        ax.plot(epochs, train, marker="o", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        ax.set_title(metric.capitalize())
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(evaluation: Evaluation, path: Path) -> None:
    confusion = evaluation.confusion
    fig, ax = plt.subplots(figsize=(7, 6))
    # Log scale so the few mistakes stay visible next to ~1,000 correct answers per digit.
    image = ax.imshow(np.log1p(confusion), cmap="Blues")
    for true in range(confusion.shape[0]):
        for pred in range(confusion.shape[1]):
            count = int(confusion[true, pred])
            if count:
                colour = "white" if true == pred else "black"
                ax.text(pred, true, str(count), ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(f"Confusion matrix (test accuracy {evaluation.accuracy:.2%})")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(count: int, row_height: float) -> tuple[Any, list[Any]]:
    """A figure of `count` image cells, ten to a row, without axes."""
    columns = 10
    rows = max(1, int(np.ceil(count / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * row_height))
    cells = list(np.atleast_1d(axes).ravel())
    for ax in cells:
        ax.axis("off")
    return fig, cells


def plot_sample_predictions(
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.uint8],
    evaluation: Evaluation,
    path: Path,
    *,
    count: int = 40,
) -> None:
    """A grid led by mistakes (red titles) so the failure modes are what a reader sees first."""
    wrong = np.flatnonzero(evaluation.predicted != labels)
    right = np.flatnonzero(evaluation.predicted == labels)
    chosen = np.concatenate([wrong[: count // 2], right[: count - min(len(wrong), count // 2)]])
    fig, cells = _grid(len(chosen), row_height=1.45)
    for ax, index in zip(cells, chosen, strict=False):
        predicted = int(evaluation.predicted[index])
        confidence = float(evaluation.probabilities[index, predicted])
        mistaken = predicted != int(labels[index])
        ax.imshow(images[index], cmap="gray_r" if not mistaken else "Reds")
        ax.set_title(
            f"{predicted} ({confidence:.0%})" + (f"\ntrue {labels[index]}" if mistaken else ""),
            fontsize=8,
            color="red" if mistaken else "black",
        )
    fig.suptitle("Sample test predictions (mistakes first, in red)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hardest(
    images: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.integer[Any]],
    probabilities: npt.NDArray[np.float64],
    unsure_below: float,
    path: Path,
    count: int = 30,
) -> None:
    """The foreign digits with the least probability on their true digit, with what the model
    said and how sure it was."""
    truth = probabilities[np.arange(len(labels)), labels]
    order = np.argsort(truth)[:count]
    fig, cells = _grid(len(order), row_height=1.5)
    for ax, index in zip(cells, order, strict=False):
        said = int(probabilities[index].argmax())
        confidence = float(probabilities[index, said])
        flag = " ?" if confidence < unsure_below else ""
        ax.imshow(images[index], cmap="gray_r")
        ax.set_title(
            f"{said} ({confidence:.0%}){flag}\ntrue {labels[index]}",
            fontsize=8,
            color="red" if said != labels[index] else "black",
        )
    fig.suptitle(
        "Hardest held-out foreign digits: what the model said (? = flagged unsure)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
