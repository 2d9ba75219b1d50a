"""The not-a-digit set: deterministic, kept apart like the digits, no digit twins among the
glyphs, and every picture one the upload endpoint accepts (so the unsure flag is what decides)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from service.images import prepare_upload
from training.not_digits import KINDS, NOT_DIGIT_GLYPHS, drawn, glyphs_in, letters, not_digits
from training.synthetic import FONT_PACKAGES, TEST_SEEDS, available_families, encode_upload

if not available_families() and not os.environ.get("CI"):
    pytest.skip(f"no handwriting fonts (apt-get install {FONT_PACKAGES})", allow_module_level=True)


def test_no_glyph_is_a_digit_or_its_handwritten_twin() -> None:
    assert not set(NOT_DIGIT_GLYPHS) & set("0123456789OoDQIli|/!ZzSs$bGBgqTt")


def test_only_glyphs_a_font_has_are_drawn() -> None:
    for paths in available_families().values():
        for path in paths:
            assert set(glyphs_in(path)) <= set(NOT_DIGIT_GLYPHS)
    # A font without lower-case letters must not draw them as empty boxes (a "0").
    assert all(glyphs_in(path) for paths in available_families().values() for path in paths)


def test_the_same_seed_makes_the_same_pictures_and_test_fonts_stay_apart() -> None:
    training = available_families(held_out=False)
    first = [np.asarray(n.image) for n in not_digits(training, 2, 3, seed=5)]
    again = [np.asarray(n.image) for n in not_digits(training, 2, 3, seed=5)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = [np.asarray(n.image) for n in drawn("scribble", 3, seed=6)]
    assert not any(np.array_equal(a, b) for a, b in zip(first[-9:-6], other, strict=False))
    assert {n.source for n in letters(training, 1, 0)} == set(training)
    assert not {n.source for n in letters(training, 1, 0)} & set(available_families(True))


def test_every_picture_passes_the_upload_checks() -> None:
    """Not a digit, but not an empty page either: the service must answer them, flagged."""
    rng = np.random.default_rng(0)
    pictures = list(not_digits(available_families(held_out=True), 1, 6, seed=TEST_SEEDS))
    assert {n.kind for n in pictures} == set(KINDS)
    for picture in pictures:
        data, _ = encode_upload(picture.image, rng)
        pixels = prepare_upload(data, 10**8).pixels
        assert pixels.shape == (28, 28)
        assert pixels.max() > 100
