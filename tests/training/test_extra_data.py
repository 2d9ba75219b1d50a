"""What training adds to MNIST: perturbed copies, rendered digits through the service's own
preprocessing, and not-a-digit pictures with a uniform target; never a held-out writer."""

from __future__ import annotations

import os

import numpy as np
import pytest

from training import extra_data
from training.extra_data import ExtraConfig, calibration_jobs, perturb_share, render, training_jobs
from training.synthetic import FONT_PACKAGES, HELD_OUT_FAMILIES, TEST_SEEDS, available_families

if not available_families() and not os.environ.get("CI"):
    pytest.skip(f"no handwriting fonts (apt-get install {FONT_PACKAGES})", allow_module_level=True)


def test_a_share_of_the_digits_is_perturbed_the_same_way_every_time(mnist) -> None:  # type: ignore[no-untyped-def]
    digits = mnist.train_images[:500]
    perturbed = perturb_share(digits, 0.2, seed=3)
    changed = (perturbed != digits).any(axis=(1, 2))
    assert 80 <= changed.sum() <= 100  # 100 chosen; a perturbation can leave a digit as it was
    assert np.array_equal(perturbed, perturb_share(digits, 0.2, seed=3))
    assert not np.array_equal(perturbed, perturb_share(digits, 0.2, seed=4))


def test_jobs_never_render_a_held_out_writer_or_a_test_seed() -> None:
    jobs = training_jobs(ExtraConfig(), seed=42) + calibration_jobs(ExtraConfig(), seed=42)
    assert not {name for _, name, _, _ in jobs} & HELD_OUT_FAMILIES
    assert all(seed < TEST_SEEDS for *_, seed in jobs)
    kinds = {what for what, *_ in jobs}
    assert kinds == {"font-digits", "drawn-digits", "letters", "scribble", "strokes", "noise"}


def test_rendered_pictures_are_28x28_digits_and_uniform_targets() -> None:
    tiny = ExtraConfig(0.0, 1, 1, 2, 2)
    jobs = training_jobs(tiny, seed=1)
    (rendered,) = render(jobs, processes=2)
    digits = rendered.targets.max(axis=1) == 1.0
    assert rendered.images.shape[1:] == (28, 28)
    assert rendered.images.dtype == np.uint8
    assert digits.sum() == 10 * len(available_families(held_out=False)) + len(extra_data_styles())
    assert np.allclose(rendered.targets[~digits], 0.1)  # not a digit: no digit more likely
    assert (~digits).sum() >= 2 * len(available_families(held_out=False))
    assert np.allclose(rendered.targets.sum(axis=1), 1.0)
    # The same jobs in one process give the same pictures: the split does not matter.
    (again,) = render(jobs, processes=1)
    assert np.array_equal(rendered.images, again.images)


def extra_data_styles() -> list[str]:
    from training.synthetic import DRAWN_STYLES

    return list(DRAWN_STYLES)


def test_no_extra_data_gives_an_empty_set() -> None:
    (empty,) = render([])
    assert empty.images.shape == (0, 28, 28)
    assert empty.targets.shape == (0, 10)
    assert extra_data.LabelledImages.concatenate([empty, empty]).labels.shape == (0,)
