"""Temperature scaling and the unsure threshold, on numbers whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibration import (
    Calibration,
    calibrate,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    softmax,
    unsure_threshold,
)


def overconfident(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits), then sharpened by `temperature`:
    the honest temperature to fit back is `temperature`."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(0, 2.5, (n, 10))
    probabilities = softmax(honest)
    labels = np.array([rng.choice(10, p=row) for row in probabilities])
    return honest * temperature, labels


def test_the_fitted_temperature_undoes_overconfidence() -> None:
    logits, labels = overconfident(20_000, 2.0, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)
    before = softmax(logits)
    after = softmax(logits, fit_temperature(logits, labels))
    correct = before.argmax(axis=1) == labels
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()  # no answer changes
    ece_before = expected_calibration_error(before.max(axis=1), correct)
    ece_after = expected_calibration_error(after.max(axis=1), correct)
    assert ece_after < 0.02 < ece_before


def test_the_threshold_flags_the_chosen_share_of_held_out_answers() -> None:
    confidence = np.linspace(0.5, 1.0, 1001)
    threshold = unsure_threshold(confidence, 0.01)
    assert (confidence < threshold).mean() == pytest.approx(0.01, abs=0.002)


def test_calibrate_reports_before_and_after() -> None:
    logits, labels = overconfident(5_000, 1.5, seed=2)
    foreign, foreign_labels = overconfident(1_000, 3.0, seed=3)
    calibration = calibrate(logits, labels, foreign, foreign_labels)
    assert 1.5 < calibration.temperature < 3.0  # between what each set alone asks for
    report = calibration_report(logits, labels, calibration)
    assert report["images"] == 5_000
    assert 0 < report["flagged_unsure"] < 0.02
    assert set(Calibration(1.0, 0.5).to_json({"x": 1})) >= {"temperature", "unsure_below", "x"}
