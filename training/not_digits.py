"""Pictures that are not digits, rendered as users upload them: letters and symbols in the same
handwriting fonts as the digits, scribbles, random strokes and blotchy noise.

The model is taught to answer them with no confidence (outlier exposure: the target is the
uniform distribution over the ten digits), and the benchmark counts how many of them the
"unsure" flag catches. The split follows `training.synthetic`: letters from the held-out font
families and anything made with a seed from `TEST_SEEDS` on are for testing only.

Glyphs that are a digit's twin in handwriting are left out (O, o, D and Q look like 0; I, l, i,
|, / and ! like 1; Z, z like 2; S, s and $ like 5; b and G like 6; B like 8; g, q like 9; T and
t like a 7 or a 4): no reader could call them "not a digit".
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageFont

from training.synthetic import Stroke, draw_strokes, render_glyph

NOT_DIGIT_GLYPHS = "ACEFHKMNPRUVWXYacefhkmnpruvwxy+=#@&%*?~<>^"

KINDS = ("letter", "scribble", "strokes", "noise")


@dataclass(frozen=True)
class NotDigit:
    kind: str
    """One of `KINDS`."""
    source: str
    """The font family, or the kind again."""
    image: Image.Image


@cache
def glyphs_in(path: Path) -> str:
    """The not-a-digit glyphs this font really draws: a missing glyph would come out as an
    empty box, which is a zero, and some fonts map a character to an empty outline."""
    from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # some fonts' tables are untidy
    with TTFont(str(path), lazy=True) as font:
        cmap = font.getBestCmap() or {}
    font = ImageFont.truetype(str(path), 40)
    return "".join(
        c for c in NOT_DIGIT_GLYPHS if ord(c) in cmap and font.getmask(c).getbbox() is not None
    )


def _scribble(rng: np.random.Generator) -> list[Stroke]:
    """One pen movement that wanders and turns back on itself: a tangle, a zigzag, a spiral."""
    points = int(rng.integers(10, 30))
    heading = float(rng.uniform(0, 2 * math.pi))
    turn_rate = float(rng.uniform(0.3, 1.6)) * float(rng.choice([-1.0, 1.0]))
    step = float(rng.uniform(0.1, 0.2))
    x, y, stroke = 0.5, 0.5, []
    for _ in range(points):
        heading += turn_rate + float(rng.normal(0, 0.6))
        x = float(np.clip(x + step * math.cos(heading), 0.05, 0.95))
        y = float(np.clip(y + step * math.sin(heading), 0.05, 0.95))
        stroke.append((x, y))
    return [stroke]


def _random_strokes(rng: np.random.Generator) -> list[Stroke]:
    """Three to six straight or bent strokes anywhere on the pad."""
    strokes: list[Stroke] = []
    for _ in range(int(rng.integers(3, 7))):
        corners = int(rng.integers(2, 4))
        strokes.append(
            [(float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))) for _ in range(corners)]
        )
    return strokes


def _noise(rng: np.random.Generator) -> Image.Image:
    """Paper with smudges, dots or texture dark enough to pass the service's "no ink" check."""
    side = int(rng.integers(64, 320))
    paper = float(rng.uniform(200, 250))
    field = rng.normal(0, 1, (side, side))
    smooth = float(rng.uniform(1, 12))
    from scipy import ndimage

    field = ndimage.gaussian_filter(field, smooth)
    field /= field.std() or 1.0
    darkness = float(rng.uniform(60, 160))
    spots = np.clip(field - float(rng.uniform(0.5, 2.0)), 0, None)
    gray = paper - darkness * spots / (spots.max() or 1.0)
    image = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.0))))


def letters(families: dict[str, list[Path]], per_family: int, seed: int) -> Iterator[NotDigit]:
    """`per_family` letters or symbols from each family, chosen at random among its glyphs."""
    for family, paths in sorted(families.items()):
        rng = np.random.default_rng([seed, zlib.crc32(family.encode()), 1])
        for i in range(per_family):
            path = paths[i % len(paths)]
            glyphs = glyphs_in(path)
            if not glyphs:
                break
            glyph = glyphs[int(rng.integers(len(glyphs)))]
            yield NotDigit("letter", family, render_glyph(path, glyph, rng))


def drawn(kind: str, count: int, seed: int) -> Iterator[NotDigit]:
    """`count` scribbles, random strokes or noise pictures."""
    rng = np.random.default_rng([seed, KINDS.index(kind), 2])
    for _ in range(count):
        if kind == "noise":
            image = _noise(rng)
        else:
            strokes = _scribble(rng) if kind == "scribble" else _random_strokes(rng)
            image = draw_strokes(strokes, int(rng.integers(6, 30)), rng)
        yield NotDigit(kind, kind, image)


def not_digits(
    families: dict[str, list[Path]], per_family: int, per_kind: int, seed: int
) -> Iterator[NotDigit]:
    yield from letters(families, per_family, seed)
    for kind in KINDS[1:]:
        yield from drawn(kind, per_kind, seed)
