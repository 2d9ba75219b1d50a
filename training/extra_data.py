"""What training sees beside MNIST's own digits, and why.

MNIST's 250 writers leave gaps the benchmarks show: broken and elastically distorted strokes,
the continental one with a flag, the closed four, and no notion of "this is not a digit". So
the training set also gets

- **perturbed copies**: a share of the MNIST training digits replaced by a thickened, thinned,
  swollen, broken, slanted or elastically distorted version (`training.perturb`);
- **rendered digits** from the held-in handwriting fonts and the drawn writing styles
  (`training.synthetic`, seeds below its `TEST_SEEDS`; the held-out fonts are never rendered here);
- **not-a-digit pictures** (`training.not_digits`: letters, symbols, scribbles, strokes, noise)
  with the uniform distribution as their target, so the model learns to say it cannot tell
  (outlier exposure, Hendrycks et al., 2019).

Rendered pictures go through the service's own upload preprocessing, so training sees exactly
the 28x28 digits the server will make of such uploads. Rendering runs in a pool of processes
(without TensorFlow), one job per font family or drawn kind, so the result does not depend on
how many processes there are.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from training.export import NUM_CLASSES
from training.perturb import PERTURBATIONS

log = logging.getLogger("training.extra_data")

CALIBRATION_SEED_OFFSET = 500_000
"""Held-in foreign digits for fitting the temperature: other seeds than training's, still below
the test seeds."""

Images = npt.NDArray[np.uint8]
Job = tuple[str, str, int, int]
"""(what, font family or kind, count, seed): one process's share of the rendering."""


@dataclass(frozen=True)
class ExtraConfig:
    perturbed_share: float = 0.1
    per_font_digit: int = 25
    """Renders of each digit in each held-in font family."""
    per_drawn_style: int = 100
    not_digit_letters_per_family: int = 150
    not_digits_per_kind: int = 400
    """Scribbles, random strokes and noise pictures, each."""
    calibration_per_font_digit: int = 3
    calibration_per_drawn_style: int = 10
    """Held-in foreign digits, not trained on, for fitting the temperature."""
    report_per_font_digit: int = 4
    report_per_drawn_style: int = 8
    report_not_digits_per_kind: int = 40
    """Held-out digits and not-a-digit pictures for the figures written at export."""

    def shrunk(self, fraction: float) -> ExtraConfig:
        """The training extras cut to `fraction` (at least one of each kind that has any), for a
        run on that fraction of MNIST (`--limit`): the mix stays the full run's, and a quick run
        does not spend a minute rendering thousands of pictures for a thousand digits. The
        calibration and report pictures stay: they are few, and the figures need them."""

        def cut(count: int) -> int:
            return 0 if count == 0 else max(1, round(count * fraction))

        return replace(
            self,
            per_font_digit=cut(self.per_font_digit),
            per_drawn_style=cut(self.per_drawn_style),
            not_digit_letters_per_family=cut(self.not_digit_letters_per_family),
            not_digits_per_kind=cut(self.not_digits_per_kind),
        )


@dataclass(frozen=True)
class LabelledImages:
    images: Images
    targets: npt.NDArray[np.float32]
    """One row of 10 per image: one-hot for a digit, uniform for a not-a-digit picture."""

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        return np.asarray(self.targets.argmax(axis=1), np.int64)

    @staticmethod
    def concatenate(parts: Iterable[LabelledImages]) -> LabelledImages:
        parts = list(parts)
        if not parts:
            return LabelledImages(np.zeros((0, 28, 28), np.uint8), np.zeros((0, 10), np.float32))
        return LabelledImages(
            np.concatenate([p.images for p in parts]), np.concatenate([p.targets for p in parts])
        )


def one_hot(labels: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.float32]:
    targets = np.zeros((len(labels), NUM_CLASSES), np.float32)
    targets[np.arange(len(labels)), labels] = 1.0
    return targets


def perturb_share(images: Images, share: float, seed: int) -> Images:
    """A copy of `images` with `share` of them perturbed, each by one perturbation chosen at
    random at a random strength (so mild and strong versions both occur)."""
    rng = np.random.default_rng([seed, 7])
    result = images.copy()
    chosen = rng.choice(len(images), size=int(len(images) * share), replace=False)
    functions = list(PERTURBATIONS.values())
    for index in chosen:
        function = functions[int(rng.integers(len(functions)))]
        result[index] = function(images[index], rng, float(rng.uniform(0.4, 0.9)))
    return result


def _render_job(job: Job) -> tuple[list[Images], list[int]]:
    """Runs in a pool process: render one family's or kind's pictures and preprocess them as the
    service does. Label -1 is "not a digit". Pictures the service would refuse are dropped."""
    from service.errors import InvalidInput
    from service.images import preprocess
    from training import not_digits, synthetic

    what, name, count, seed = job
    pictures: Iterable[tuple[int, Any]]
    if what == "font-digits":
        families = {name: synthetic.available_families()[name]}
        pictures = ((s.digit, s.image) for s in synthetic.font_samples(families, count, seed))
    elif what == "drawn-digits":
        pictures = ((s.digit, s.image) for s in synthetic.drawn_samples(count, seed))
    elif what == "letters":
        families = {name: synthetic.available_families()[name]}
        pictures = ((-1, n.image) for n in not_digits.letters(families, count, seed))
    else:
        pictures = ((-1, n.image) for n in not_digits.drawn(name, count, seed))
    images, labels = [], []
    for label, picture in pictures:
        try:
            images.append(preprocess(picture).pixels)
        except InvalidInput:
            continue
        labels.append(label)
    return images, labels


def _labelled(images: list[Images], labels: list[int]) -> LabelledImages:
    array = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    targets = np.full((len(labels), NUM_CLASSES), 1 / NUM_CLASSES, np.float32)
    digits = np.array(labels, np.int64)
    is_digit = digits >= 0
    targets[is_digit] = one_hot(digits[is_digit])
    return LabelledImages(array, targets)


def _held_in_families() -> list[str]:
    from training import synthetic

    families = sorted(synthetic.available_families(held_out=False))
    if not families:
        log.warning(
            "no handwriting fonts found: training without rendered font digits "
            "(apt-get install %s)",
            synthetic.FONT_PACKAGES,
        )
    return families


def render(*groups: list[Job], processes: int | None = None) -> list[LabelledImages]:
    """Run groups of rendering jobs in one pool of fresh processes, one result per group.

    The processes are spawned, not forked: the parent may hold TensorFlow's threads, which a
    fork would copy in an unknown state.
    """
    jobs = [job for group in groups for job in group]
    if not jobs:
        return [LabelledImages.concatenate([]) for _ in groups]
    processes = processes or min(len(jobs), os.cpu_count() or 1)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        results = iter(pool.map(_render_job, jobs))
        parts = [[next(results) for _ in group] for group in groups]
    return [
        _labelled(
            [image for images, _ in part for image in images],
            [label for _, labels in part for label in labels],
        )
        for part in parts
    ]


def training_jobs(config: ExtraConfig, seed: int) -> list[Job]:
    families = _held_in_families()
    jobs = []
    if config.per_font_digit:
        jobs += [("font-digits", family, config.per_font_digit, seed) for family in families]
    if config.per_drawn_style:
        jobs.append(("drawn-digits", "", config.per_drawn_style, seed))
    if config.not_digit_letters_per_family:
        jobs += [
            ("letters", family, config.not_digit_letters_per_family, seed) for family in families
        ]
    if config.not_digits_per_kind:
        jobs += [
            (kind, kind, config.not_digits_per_kind, seed)
            for kind in ("scribble", "strokes", "noise")
        ]
    # The longest jobs first, so the pool's processes finish together.
    return sorted(jobs, key=lambda job: job[0] != "drawn-digits")


def calibration_jobs(config: ExtraConfig, seed: int) -> list[Job]:
    """Held-in foreign digits the model is not trained on, for the temperature."""
    seed += CALIBRATION_SEED_OFFSET
    return [
        ("drawn-digits", "", config.calibration_per_drawn_style, seed),
        *[
            ("font-digits", family, config.calibration_per_font_digit, seed)
            for family in _held_in_families()
        ],
    ]


def held_out_jobs(config: ExtraConfig) -> list[Job]:
    """Held-out foreign digits (test fonts and test seeds), then not-a-digit pictures (letters
    from the test fonts, scribbles, strokes, noise; test seeds): never trained or tuned on."""
    from training.synthetic import TEST_SEEDS, available_families

    families = sorted(available_families(held_out=True))
    per_kind = config.report_not_digits_per_kind
    return [
        *[("font-digits", family, config.report_per_font_digit, TEST_SEEDS) for family in families],
        ("drawn-digits", "", config.report_per_drawn_style, TEST_SEEDS),
        *[("letters", family, max(1, per_kind // 4), TEST_SEEDS) for family in families],
        *[(kind, kind, per_kind, TEST_SEEDS) for kind in ("scribble", "strokes", "noise")],
    ]
