"""Stroke and shape robustness on MNIST itself: the 10,000 test digits thickened, thinned,
swollen, broken, slanted and elastically distorted (training/perturb.py, after Morpho-MNIST),
and the model's accuracy on each, in-process from the repository's newest version.

    python bench/robustness.py --model-repository models --versions 1,2

Versions are compared side by side on the same perturbed digits (default: the newest alone).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import arguments, ensure_model
from training.data import load_mnist
from training.perturb import PERTURBATIONS, perturb_all

SEED = 2019  # the year of Morpho-MNIST; fixed, so every run perturbs the same way


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--limit", type=int, default=10_000, help="test digits to use")
    parser.add_argument("--versions", default="", help="comma-separated (default: newest)")
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from service.repository import ModelRepository
    from service.runtime import load_model

    repository = ModelRepository(args.model_repository, "mnist")
    versions = [int(v) for v in args.versions.split(",") if v.strip()] or [
        max(repository.versions())
    ]
    models = {v: load_model("mnist", v, repository.path(v)) for v in versions}
    mnist = load_mnist(args.data_dir)
    images, labels = mnist.test_images[: args.limit], mnist.test_labels[: args.limit]

    def accuracies(digits: np.ndarray) -> str:
        shares = []
        for version, model in models.items():
            predicted = np.concatenate(
                [
                    model.predict(digits[i : i + 1000, ..., None].astype(np.float32)).argmax(axis=1)
                    for i in range(0, len(digits), 1000)
                ]
            )
            shares.append(f"v{version}={(predicted == labels).mean():.4f}")
        return " ".join(shares)

    print(f"# {time.strftime('%Y-%m-%d')} model versions {versions}, {len(images)} test digits")
    print(f"perturbation=none {accuracies(images)}", flush=True)
    for name in PERTURBATIONS:
        print(f"perturbation={name} {accuracies(perturb_all(images, name, SEED))}", flush=True)


if __name__ == "__main__":
    main()
