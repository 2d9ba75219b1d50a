"""Digits from writers who are not MNIST's, and pictures that are not digits, uploaded to a real
server: accuracy per digit and per writer or style, how far the model's confidence can be
trusted, and what the "unsure" flag catches.

    python bench/foreign_handwriting.py --model-repository models --versions 1,2

The set (training/synthetic.py and training/not_digits.py, fixed seeds, made afresh on every run,
nothing downloaded): the held-out handwriting font families (never used for training), each
digit rendered with a random size, weight, slant, rotation, position, paper, ink, blur and
PNG/JPEG encoding; the drawn styles (a one with a flag and a base, a crossed seven, a closed
four, a looped two, ...) with test seeds; and not-a-digit pictures (letters and symbols from the
held-out fonts, scribbles, random strokes, blotchy noise) with test seeds. The fonts come from
Debian packages: apt-get install fonts-comic-neue fonts-dkg-handwriting ...
(training.synthetic.FONT_PACKAGES).

Reported per version, each served alone: accuracy (all, fonts, drawn, per digit, per source),
expected calibration error (15 equal-width confidence bins) as served and before the version's
temperature (undone from the served probabilities), the share of wrong answers given with
probability > 0.9, the share of wrong and of right answers flagged unsure, the share of
not-a-digit pictures flagged (per kind), and MNIST's 10,000 test digits (sent as raw pixels to
`/v1/predict`): accuracy, calibration and the share flagged.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import arguments, ensure_model, served
from mnist_client import Client, Prediction, ServerError
from training.calibration import expected_calibration_error, softmax
from training.not_digits import not_digits
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


def test_set(per_digit: int, per_style: int) -> list[Sample]:
    families = available_families(held_out=True)
    if not families:
        sys.exit(f"no held-out handwriting fonts installed: apt-get install {FONT_PACKAGES}")
    return [*font_samples(families, per_digit, TEST_SEEDS), *drawn_samples(per_style, TEST_SEEDS)]


def not_a_digit_set(per_family: int, per_kind: int) -> list[Sample]:
    pictures = not_digits(available_families(held_out=True), per_family, per_kind, TEST_SEEDS)
    return [Sample(-1, f"{n.kind}:{n.source}", n.image) for n in pictures]


def classify(url: str, samples: list[Sample]) -> list[Prediction | None]:
    """The server's prediction for every sample through `/v1/predict/image`, in batches of
    `BATCH`; None where the server refused the picture (422: no digit to be seen). Through the
    project's client, which sends a refused request again after the server's `Retry-After`:
    on a slow day the upload queue refuses some batches for a moment."""
    rng = np.random.default_rng(TEST_SEEDS)
    uploads = [encode_upload(s.image, rng)[0] for s in samples]

    def send(client: Client, start: int, stop: int) -> list[Prediction | None]:
        try:
            return list(client.predict_files([(f"{i}", uploads[i]) for i in range(start, stop)]))
        except ServerError as refused:
            if refused.status != 422:
                raise
        if stop - start > 1:  # one refused picture: ask singly
            return [p for i in range(start, stop) for p in send(client, i, i + 1)]
        return [None]

    def batch(start: int) -> list[Prediction | None]:
        with Client(url, timeout=120, retries=60) as client:
            return send(client, start, min(start + BATCH, len(uploads)))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(batch, range(0, len(uploads), BATCH)))
    return [p for part in parts for p in part]


def report_mnist(url: str, data_dir: str | None, temperature: float) -> None:
    """MNIST's 10,000 test digits as raw pixels to `/v1/predict`: accuracy, calibration before
    and after the temperature, and the share flagged unsure."""
    from training.data import load_mnist

    splits = load_mnist(data_dir)
    rows, flags = [], []
    with Client(url, timeout=120, retries=60) as client:  # raw uint8 pixels, retried as above
        for start in range(0, len(splits.test_labels), 100):
            for prediction in client.predict(splits.test_images[start : start + 100]):
                rows.append(prediction.probabilities)
                flags.append(prediction.unsure)
    probabilities = np.array(rows, np.float64)
    correct = probabilities.argmax(axis=1) == splits.test_labels
    before = uncalibrated(probabilities, temperature).max(axis=1)
    print(
        f"mnist_test accuracy={correct.mean():.4f} "
        f"ece={expected_calibration_error(probabilities.max(axis=1), correct):.4f} "
        f"ece_before_temperature={expected_calibration_error(before, correct):.4f} "
        f"flagged={np.mean(flags):.4f}"
    )


def uncalibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """What the model said before its temperature: softmax(T * log p) undoes softmax(z / T)."""
    return softmax(np.log(np.clip(probabilities, 1e-30, 1.0)) * temperature)


def temperature_of(repository: Path, version: str | None) -> float:
    model_dir = repository / "mnist"
    chosen = version or str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))
    metadata = json.loads((model_dir / chosen / "metadata.json").read_text())
    return float((metadata.get("calibration") or {}).get("temperature", 1.0))


def report_digits(
    samples: list[Sample], predictions: list[Prediction | None], temperature: float
) -> None:
    answered = [(s, p) for s, p in zip(samples, predictions, strict=True) if p is not None]
    if len(answered) < len(samples):
        print(f"refused={len(samples) - len(answered)} (counted as wrong below)")
    labels = np.array([s.digit for s in samples])
    probabilities = np.array(
        [p.probabilities if p is not None else [0.1] * 10 for p in predictions], np.float64
    )
    unsure = np.array([p.unsure if p is not None else True for p in predictions])
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    correct = (predicted == labels) & np.array([p is not None for p in predictions])
    drawn = np.array([s.source.startswith("drawn:") for s in samples])
    wrong = ~correct
    print(f"images={len(samples)} fonts={int((~drawn).sum())} drawn={int(drawn.sum())}")
    print(
        f"accuracy={correct.mean():.4f} fonts={correct[~drawn].mean():.4f} "
        f"drawn={correct[drawn].mean():.4f}"
    )
    before = uncalibrated(probabilities, temperature).max(axis=1)
    print(
        f"ece={expected_calibration_error(confidence, correct):.4f} "
        f"ece_before_temperature={expected_calibration_error(before, correct):.4f} "
        f"(temperature {temperature}) "
        f"wrong_over_0.9={(confidence[wrong] > 0.9).mean() if wrong.any() else 0:.3f} "
        f"mean_confidence={confidence.mean():.4f}"
    )
    print(
        f"unsure: wrong_flagged={unsure[wrong].mean() if wrong.any() else 0:.3f} "
        f"right_flagged={unsure[correct].mean():.4f} "
        f"accuracy_of_unflagged={correct[~unsure].mean():.4f} ({int((~unsure).sum())} answers)"
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


def report_not_digits(samples: list[Sample], predictions: list[Prediction | None]) -> None:
    """A refused picture (no ink the service can see) counts as caught."""
    caught = np.array([p is None or p.unsure for p in predictions])
    refused = sum(p is None for p in predictions)
    print(f"not_digits={len(samples)} flagged_or_refused={caught.mean():.4f} refused={refused}")
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for sample, flag in zip(samples, caught, strict=True):
        by_kind[sample.source.split(":")[0]].append(bool(flag))
    for kind, flags in sorted(by_kind.items()):
        print(f"not_digit_kind={kind} flagged={np.mean(flags):.4f} n={len(flags)}")


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument(
        "--versions",
        default="",
        help="comma-separated versions, each served alone (default: newest)",
    )
    parser.add_argument(
        "--per-digit", type=int, default=20, help="renders per digit and font family"
    )
    parser.add_argument("--per-style", type=int, default=40, help="variants per drawn style")
    parser.add_argument(
        "--not-digits", type=int, default=200, help="not-a-digit pictures of each kind"
    )
    parser.add_argument("--core", default="1", help="the server's core(s)")
    args = parser.parse_args()
    ensure_model(args.model_repository, args.data_dir)
    digits = test_set(args.per_digit, args.per_style)
    families = len(available_families(held_out=True))
    others = not_a_digit_set(max(1, args.not_digits // max(1, families)), args.not_digits)
    versions = [v.strip() for v in args.versions.split(",") if v.strip()] or [None]
    for version in versions:
        policy = {"model_version_policy": "specific", "model_versions": version} if version else {}
        # Accuracy, not latency: 16 pictures per request took over the default 1 s budget to
        # prepare on a slow day (504s).
        settings = {**policy, "request_timeout_ms": "60000"}
        with served(args.model_repository.resolve(), 18104, args.core, **settings) as server:
            print(f"# model version {version or 'newest'}", flush=True)
            temperature = temperature_of(args.model_repository, version)
            report_digits(digits, classify(server.url, digits), temperature)
            report_not_digits(others, classify(server.url, others))
            report_mnist(server.url, args.data_dir, temperature)


if __name__ == "__main__":
    main()
