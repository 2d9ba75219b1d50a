"""The foreign-handwriting renderers: deterministic, held-out writers kept apart, and every
render an image the upload endpoint reads as one digit."""

from __future__ import annotations

import os

import numpy as np
import pytest

from service.images import prepare_upload
from training.synthetic import (
    DRAWN_STYLES,
    FONT_PACKAGES,
    HELD_OUT_FAMILIES,
    TEST_SEEDS,
    available_families,
    drawn_samples,
    encode_upload,
    font_samples,
)

if not available_families() and not os.environ.get("CI"):
    pytest.skip(f"no handwriting fonts (apt-get install {FONT_PACKAGES})", allow_module_level=True)


def pixels(image: object) -> np.ndarray:
    return np.asarray(image)


def test_the_same_seed_renders_the_same_images() -> None:
    families = available_families(held_out=True)
    first = [pixels(s.image) for s in font_samples(families, 1, TEST_SEEDS)]
    again = [pixels(s.image) for s in font_samples(families, 1, TEST_SEEDS)]
    other = [pixels(s.image) for s in font_samples(families, 1, TEST_SEEDS + 1)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    same = [a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first, other, strict=True)]
    assert not any(same)  # another seed, other renders
    drawn = [pixels(s.image) for s in drawn_samples(1, TEST_SEEDS)]
    assert all(
        np.array_equal(a, pixels(b.image))
        for a, b in zip(drawn, drawn_samples(1, TEST_SEEDS), strict=True)
    )


def test_held_out_writers_never_reach_the_training_side() -> None:
    training, testing = available_families(held_out=False), available_families(held_out=True)
    assert set(testing) <= HELD_OUT_FAMILIES
    assert not set(training) & HELD_OUT_FAMILIES
    assert len(testing) == len(HELD_OUT_FAMILIES)  # CI installs every package
    assert len(training) >= 10
    sources = {s.source for s in font_samples(training, 1, 0)}
    assert sources == set(training)


def test_every_render_is_one_readable_digit_of_its_label() -> None:
    rng = np.random.default_rng(0)
    samples = [*font_samples(available_families(), 1, 5), *drawn_samples(1, 5)]
    assert {s.digit for s in samples} == set(range(10))
    assert {s.source.removeprefix("drawn:") for s in samples} >= set(DRAWN_STYLES)
    for sample in samples:
        data, media = encode_upload(sample.image, rng)
        assert media in ("image/png", "image/jpeg")
        prepared = prepare_upload(data, 40_000_000, sample.source)  # 422s if no ink is found
        ink = prepared.pixels
        assert ink.shape == (28, 28)
        assert (ink > 128).sum() >= 15, sample.source  # a stroke, not a speck


def test_ci_installs_every_font_package() -> None:
    from pathlib import Path

    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert all(package in ci for package in FONT_PACKAGES.split())
