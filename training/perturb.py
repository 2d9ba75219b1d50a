"""Stroke and shape perturbations of MNIST digits, after Morpho-MNIST (Castro et al., 2019):
thicker and thinner strokes, a local swelling, broken strokes, slant and elastic distortion.

Each function takes a 28x28 uint8 digit (0 paper, 255 ink) and a NumPy generator and returns a
new 28x28 uint8 digit. Morphology works on a 4x upsampled copy, as Morpho-MNIST does, so that
a stroke can grow or shrink by less than a pixel of the original.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy import ndimage

Digit = npt.NDArray[np.uint8]
UPSAMPLE = 4


def _up(digit: Digit) -> npt.NDArray[np.float64]:
    return np.asarray(ndimage.zoom(digit.astype(np.float64), UPSAMPLE, order=1))


def _down(big: npt.NDArray[np.float64]) -> Digit:
    side = big.shape[0] // UPSAMPLE
    blocks = big[: side * UPSAMPLE, : side * UPSAMPLE].reshape(side, UPSAMPLE, side, UPSAMPLE)
    return _as_digit(blocks.mean(axis=(1, 3)))


def _as_digit(values: object) -> Digit:
    return np.clip(np.asarray(values, dtype=np.float64), 0, 255).astype(np.uint8)


def _disk(radius: int) -> npt.NDArray[np.bool_]:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return np.asarray(x * x + y * y <= radius * radius)


def thicken(digit: Digit, rng: np.random.Generator, strength: float = 1.0) -> Digit:
    """Strokes grown by 1-3 upsampled pixels per side (a broader pen)."""
    radius = max(1, round(rng.uniform(1.5, 3.5) * strength))
    return _down(ndimage.grey_dilation(_up(digit), footprint=_disk(radius)))


def thin(digit: Digit, rng: np.random.Generator, strength: float = 1.0) -> Digit:
    """Strokes shrunk by 1-2 upsampled pixels per side (a finer pen), never to nothing."""
    radius = max(1, round(rng.uniform(1.0, 2.5) * strength))
    big = _up(digit)
    for size in dict.fromkeys((radius, 1)):  # eroded away: try the least erosion
        thinner = _down(ndimage.grey_erosion(big, footprint=_disk(size)))
        if thinner.max() > 0.6 * digit.max():
            return thinner
    return digit.copy()  # strokes too fine to thin further


def swell(digit: Digit, rng: np.random.Generator, strength: float = 1.0) -> Digit:
    """A local swelling: the ink around a random stroke point pushed outwards (radius ~7 px)."""
    ink = np.argwhere(digit > 128)
    if len(ink) == 0:
        return digit.copy()
    cy, cx = ink[rng.integers(len(ink))].astype(np.float64)
    radius, power = 7.0, 1.0 + 0.7 * strength
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    dy, dx = y - cy, x - cx
    distance = np.hypot(dy, dx)
    inside = (distance < radius) & (distance > 0)
    scale = np.ones_like(distance)
    scale[inside] = (distance[inside] / radius) ** (power - 1)
    coords = np.array([cy + dy * scale, cx + dx * scale])
    return _as_digit(ndimage.map_coordinates(digit.astype(np.float64), coords, order=1))


def fracture(digit: Digit, rng: np.random.Generator, strength: float = 1.0) -> Digit:
    """Broken strokes: 2-4 short gaps cut across the ink, as a pen that skips."""
    big = _up(digit)
    ink = np.argwhere(big > 128)
    if len(ink) == 0:
        return digit.copy()
    for _ in range(int(rng.integers(2, 5) * strength)):
        cy, cx = ink[rng.integers(len(ink))]
        angle = rng.uniform(0, np.pi)
        for t in np.linspace(-14, 14, 57):  # a 7 px line (at 28x28), 1.5 px wide
            py, px = cy + t * np.sin(angle), cx + t * np.cos(angle)
            y0, x0 = round(float(py)), round(float(px))
            big[max(0, y0 - 3) : y0 + 3, max(0, x0 - 3) : x0 + 3] = 0
    return _down(big)


def slant(digit: Digit, rng: np.random.Generator, strength: float = 1.0) -> Digit:
    """Sheared by -0.4 to 0.4 (forwards or backwards handwriting) about the centre."""
    shear = rng.uniform(0.2, 0.4) * strength * rng.choice([-1.0, 1.0])
    matrix = np.array([[1.0, 0.0], [shear, 1.0]])  # row, column: x moves with y
    offset = np.array([0.0, -shear * 13.5])
    return _as_digit(
        ndimage.affine_transform(digit.astype(np.float64), matrix, offset=offset, order=1)
    )


def elastic(digit: Digit, rng: np.random.Generator, strength: float = 1.0) -> Digit:
    """Simard et al.'s elastic distortion: a random displacement field smoothed by a Gaussian
    (sigma 4 px) and scaled (alpha 34 px)."""
    alpha, sigma = 34.0 * strength, 4.0
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (28, 28)), sigma) * alpha
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (28, 28)), sigma) * alpha
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    return _as_digit(ndimage.map_coordinates(digit.astype(np.float64), [y + dy, x + dx], order=1))


PERTURBATIONS: dict[str, Callable[[Digit, np.random.Generator, float], Digit]] = {
    "thick": thicken,
    "thin": thin,
    "swollen": swell,
    "fractured": fracture,
    "slanted": slant,
    "elastic": elastic,
}


def perturb_all(
    digits: npt.NDArray[np.uint8], name: str, seed: int, strength: float = 1.0
) -> npt.NDArray[np.uint8]:
    """Every digit perturbed by `name`, reproducibly (one generator per call, in order)."""
    rng = np.random.default_rng(seed)
    function = PERTURBATIONS[name]
    return np.stack([function(d, rng, strength) for d in digits])
