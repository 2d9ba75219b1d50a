"""Digits from writers who are not MNIST's, uploaded to a real server: accuracy per digit and per
writer or style, and how far the model's confidence can be trusted on them.

    python bench/foreign_handwriting.py --model-repository models   # fonts: see below

The set (training/synthetic.py, fixed seeds, made afresh on every run, nothing downloaded):
the held-out handwriting font families (never used for training), each digit rendered with a
random size, weight, slant, rotation, position, paper, ink, blur and PNG/JPEG encoding; and the
drawn styles (a one with a flag and a base, a crossed seven, a closed four, a looped two, ...)
with test seeds. The fonts come from Debian packages:
apt-get install fonts-comic-neue fonts-dkg-handwriting ... (training.synthetic.FONT_PACKAGES).

Reported: accuracy (all, fonts, drawn, per digit, per source), expected calibration error (15
equal-width confidence bins), and the share of wrong answers given with probability > 0.9.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import sys
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import itertools

from bench.harness import ensure_model, served
from training.synthetic import (
    FONT_PACKAGES,
    TEST_SEEDS,
    Sample,
    available_families,
    drawn_samples,
    encode_upload,
    font_samples,
)

BATCH = 16


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15
) -> float:
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(error)


def test_set(per_digit: int, per_style: int) -> list[Sample]:
    families = available_families(held_out=True)
    if not families:
        sys.exit(f"no held-out handwriting fonts installed: apt-get install {FONT_PACKAGES}")
    return [*font_samples(families, per_digit, TEST_SEEDS), *drawn_samples(per_style, TEST_SEEDS)]


def classify(url: str, samples: list[Sample]) -> np.ndarray:
    """Probabilities for every sample, through `/v1/predict/image` in batches of `BATCH`."""
    rng = np.random.default_rng(TEST_SEEDS)
    uploads = [encode_upload(s.image, rng) for s in samples]

    def batch(start: int) -> list[list[float]]:
        files = [
            ("file", (f"{start + i}", data, media))
            for i, (data, media) in enumerate(uploads[start : start + BATCH])
        ]
        with httpx.Client(base_url=url, timeout=120) as client:
            answer = client.post("/v1/predict/image", files=files)
        answer.raise_for_status()
        return [p["probabilities"] for p in answer.json()["predictions"]]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(batch, range(0, len(uploads), BATCH)))
    return np.array([row for part in parts for row in part], np.float64)


def report(samples: list[Sample], probabilities: np.ndarray) -> None:
    labels = np.array([s.digit for s in samples])
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    correct = predicted == labels
    drawn = np.array([s.source.startswith("drawn:") for s in samples])
    wrong = ~correct
    print(f"images={len(samples)} fonts={int((~drawn).sum())} drawn={int(drawn.sum())}")
    print(
        f"accuracy={correct.mean():.4f} fonts={correct[~drawn].mean():.4f} "
        f"drawn={correct[drawn].mean():.4f}"
    )
    print(
        f"ece={expected_calibration_error(confidence, correct):.4f} "
        f"wrong_over_0.9={(confidence[wrong] > 0.9).mean() if wrong.any() else 0:.3f} "
        f"mean_confidence={confidence.mean():.4f}"
    )
    for digit in range(10):
        mine = labels == digit
        confused = np.bincount(predicted[mine & wrong], minlength=10)
        top = ", ".join(
            f"{d}:{n}" for d, n in sorted(enumerate(confused), key=lambda x: -x[1])[:3] if n
        )
        print(
            f"digit={digit} accuracy={correct[mine].mean():.4f} n={int(mine.sum())} read_as={top}"
        )
    by_source: dict[str, list[bool]] = defaultdict(list)
    for sample, ok in zip(samples, correct, strict=True):
        by_source[sample.source].append(bool(ok))
    for source, results in sorted(by_source.items()):
        print(f"source={source} accuracy={np.mean(results):.4f} n={len(results)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_DIR"))
    parser.add_argument(
        "--per-digit", type=int, default=20, help="renders per digit and font family"
    )
    parser.add_argument("--per-style", type=int, default=40, help="variants per drawn style")
    parser.add_argument("--core", default="1", help="the server's core(s)")
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    samples = test_set(args.per_digit, args.per_style)
    with served(args.model_repository.resolve(), 18104, args.core) as server:
        probabilities = classify(server.url, samples)
    report(samples, probabilities)


if __name__ == "__main__":
    main()
