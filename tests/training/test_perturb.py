"""The perturbations do what they say, the same way for the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import MnistSplits
from training.perturb import PERTURBATIONS, perturb_all


@pytest.fixture(scope="module")
def digits(mnist: MnistSplits) -> np.ndarray:
    return mnist.test_images[:100]


def ink(images: np.ndarray) -> float:
    return float(images.astype(np.float64).sum())


def test_thick_has_more_ink_and_thin_less(digits: np.ndarray) -> None:
    assert ink(perturb_all(digits, "thick", 0)) > 1.3 * ink(digits)
    thinner = perturb_all(digits, "thin", 0)
    assert 0.4 * ink(digits) < ink(thinner) < 0.9 * ink(digits)
    assert all(d.max() > 128 for d in thinner)  # never thinned away


def test_fractures_remove_ink_slant_and_elastic_keep_it(digits: np.ndarray) -> None:
    assert ink(perturb_all(digits, "fractured", 0)) < 0.95 * ink(digits)
    for name in ("slanted", "elastic"):
        moved = perturb_all(digits, name, 0)
        assert 0.85 * ink(digits) < ink(moved) < 1.2 * ink(digits), name
        assert np.abs(moved.astype(int) - digits.astype(int)).mean() > 5, name  # it moved


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_deterministic_and_in_range(digits: np.ndarray, name: str) -> None:
    first = perturb_all(digits[:20], name, 7)
    assert first.shape == (20, 28, 28)
    assert first.dtype == np.uint8
    assert np.array_equal(first, perturb_all(digits[:20], name, 7))
    assert not np.array_equal(first, digits[:20])
