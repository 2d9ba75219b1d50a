"""Stroke and shape robustness on MNIST itself: the 10,000 test digits thickened, thinned,
swollen, broken, slanted and elastically distorted (training/perturb.py, after Morpho-MNIST),
and the model's accuracy on each, in-process from the repository's newest version.

    python bench/robustness.py --model-repository models
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import ensure_model
from training.data import load_mnist
from training.perturb import PERTURBATIONS, perturb_all

SEED = 2019  # the year of Morpho-MNIST; fixed, so every run perturbs the same way


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"))
    parser.add_argument("--limit", type=int, default=10_000, help="test digits to use")
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from service.repository import ModelRepository
    from service.runtime import load_model

    repository = ModelRepository(args.model_repository, "mnist")
    version = max(repository.versions())
    model = load_model("mnist", version, repository.path(version))
    mnist = load_mnist(args.data_dir)
    images, labels = mnist.test_images[: args.limit], mnist.test_labels[: args.limit]

    def accuracy(digits: np.ndarray) -> float:
        predicted = np.concatenate(
            [
                model.predict(digits[i : i + 1000, ..., None].astype(np.float32)).argmax(axis=1)
                for i in range(0, len(digits), 1000)
            ]
        )
        return float((predicted == labels).mean())

    print(f"# {time.strftime('%Y-%m-%d')} model version {version}, {len(images)} test digits")
    print(f"perturbation=none accuracy={accuracy(images):.4f}", flush=True)
    for name in PERTURBATIONS:
        print(
            f"perturbation={name} accuracy={accuracy(perturb_all(images, name, SEED)):.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
