"""Digits by writers who are not MNIST's: handwriting fonts, and strokes drawn as the web page
draws them, rendered the way users upload them.

Two sources, each split so that what is measured is never trained on:

- **Fonts** (Debian's handwriting font packages, `FONT_PACKAGES`): each family is one writer.
  `HELD_OUT_FAMILIES` are for testing only; the rest may be used for training and calibration.
- **Drawn styles** (`DRAWN_STYLES`): digit shapes in common writing styles MNIST has few of (a one
  with a flag and a base, a crossed seven, a closed four, a looped two, ...), drawn as polyline
  strokes with a round pen. Variants come from a seed: test sets use `TEST_SEEDS`, training
  anything below it.

Everything is deterministic for a given seed, so a benchmark is the same set on every run.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"))

# Writer (font family) -> font files. apt-get install fonts-<package> for each.
FONT_FAMILIES: dict[str, tuple[str, ...]] = {
    "comic-neue": ("ComicNeue-Regular.otf", "ComicNeue-Bold.otf", "ComicNeue-Italic.otf"),
    "dkg": ("dkg.ttf", "dkgBd.ttf", "dkgIt.ttf"),
    "breip": ("Breip.ttf",),
    "bwht-build": ("BecauseWeBuild-Regular.otf",),
    "bwht-connect": ("BecauseWeConnect-Regular.otf",),
    "bwht-create": ("BecauseWeCreate-Regular.otf",),
    "bwht-learn": ("BecauseWeLearn-Regular.otf",),
    "bwht-mentor": ("BecauseWeMentor-Regular.otf",),
    "bwht-organize": ("BecauseWeOrganize-Regular.otf",),
    "dancingscript": ("DancingScript-Regular.otf", "DancingScript-Bold.otf"),
    "ecolier": ("Ecolier-court.ttf",),
    "humor-sans": ("Humor-Sans.ttf",),
    "kaushanscript": ("KaushanScript-Regular.otf",),
    "klee": ("KleeOne-Regular.ttf", "KleeOne-SemiBold.ttf"),
    "kristi": ("Kristi.ttf",),
    "rufscript": ("Rufscript010.ttf",),
    "leckerli": ("LeckerliOne-Regular.ttf",),
    "kiloji": ("kiloji.ttf", "kiloji_b.ttf"),
    "seto": ("setofont.ttf",),
}
FONT_PACKAGES = (
    "fonts-comic-neue fonts-dkg-handwriting fonts-breip fonts-bwht fonts-dancingscript "
    "fonts-ecolier-court fonts-humor-sans fonts-kaushanscript fonts-klee fonts-kristi "
    "fonts-rufscript fonts-leckerli-one fonts-kiloji fonts-seto"
)
# Writers never trained on, of different kinds: a cursive hand with old-style figures, a felt
# pen, a pencil, a marker print, a rough marker, a Japanese hand, a brush.
# (Left out altogether: fonts-femkeklaver draws hollow outlines, fonts-joscelyn a 16th-century
# secretary hand whose 4, 5 and 7 no one writes today.)
HELD_OUT_FAMILIES = frozenset(
    {"dkg", "kristi", "klee", "bwht-mentor", "humor-sans", "seto", "rufscript"}
)

Stroke = Sequence[tuple[float, float]]


def _ellipse(
    cx: float, cy: float, rx: float, ry: float, start: float, turn: float, n: int = 14
) -> list[tuple[float, float]]:
    """Points along an ellipse from angle `start` (0 is the top), turning `turn` radians."""
    return [
        (cx + rx * math.sin(start + turn * i / n), cy - ry * math.cos(start + turn * i / n))
        for i in range(n + 1)
    ]


# Style -> (digit, strokes in the unit square, y downwards).
DRAWN_STYLES: dict[str, tuple[int, tuple[Stroke, ...]]] = {
    "0-oval": (0, (_ellipse(0.5, 0.5, 0.2, 0.33, 0, 2 * math.pi),)),
    "0-slashed": (0, (_ellipse(0.5, 0.5, 0.2, 0.33, 0, 2 * math.pi), [(0.35, 0.75), (0.65, 0.25)])),
    "1-stick": (1, ([(0.52, 0.15), (0.48, 0.85)],)),
    "1-flag": (1, ([(0.34, 0.3), (0.54, 0.15), (0.52, 0.85)],)),
    "1-flag-base": (1, ([(0.34, 0.3), (0.54, 0.15), (0.52, 0.85)], [(0.34, 0.86), (0.7, 0.86)])),
    "1-long-flag": (1, ([(0.22, 0.42), (0.56, 0.14), (0.54, 0.86)],)),
    "1-long-flag-base": (1, ([(0.22, 0.42), (0.56, 0.14), (0.54, 0.86)],
                             [(0.3, 0.87), (0.78, 0.86)])),
    "2-z": (2, ([(0.28, 0.2), (0.72, 0.2), (0.28, 0.84), (0.74, 0.84)],)),
    "2-plain": (2, ([(0.3, 0.3), (0.42, 0.17), (0.6, 0.17), (0.7, 0.32), (0.62, 0.5),
                     (0.3, 0.85), (0.74, 0.85)],)),
    "2-looped": (2, ([(0.3, 0.3), (0.42, 0.17), (0.6, 0.17), (0.7, 0.32), (0.62, 0.5),
                      (0.32, 0.82), (0.27, 0.74), (0.36, 0.72), (0.42, 0.84), (0.75, 0.84)],)),
    "3-round": (3, ([(0.3, 0.22), (0.45, 0.15), (0.62, 0.18), (0.66, 0.32), (0.48, 0.46),
                     (0.68, 0.58), (0.68, 0.76), (0.5, 0.86), (0.3, 0.8)],)),
    "3-flat-top": (3, ([(0.3, 0.17), (0.7, 0.17), (0.47, 0.43), (0.66, 0.55), (0.68, 0.75),
                        (0.5, 0.86), (0.3, 0.8)],)),
    "4-open": (4, ([(0.44, 0.15), (0.27, 0.6), (0.76, 0.6)], [(0.63, 0.32), (0.63, 0.88)])),
    "4-closed": (4, ([(0.63, 0.88), (0.63, 0.15), (0.26, 0.62), (0.78, 0.62)],)),
    "5-plain": (5, ([(0.68, 0.17), (0.36, 0.17), (0.33, 0.46), (0.55, 0.42), (0.69, 0.58),
                     (0.66, 0.78), (0.48, 0.86), (0.3, 0.8)],)),
    "5-two-strokes": (5, ([(0.36, 0.17), (0.33, 0.46), (0.55, 0.42), (0.69, 0.58), (0.66, 0.78),
                           (0.48, 0.86), (0.3, 0.8)], [(0.36, 0.17), (0.7, 0.16)])),
    "6-round": (6, ([(0.62, 0.15), (0.42, 0.35), (0.32, 0.62), (0.4, 0.83), (0.58, 0.85),
                     (0.68, 0.68), (0.58, 0.52), (0.4, 0.55), (0.33, 0.64)],)),
    "7-plain": (7, ([(0.26, 0.2), (0.74, 0.2), (0.46, 0.86)],)),
    "7-crossed": (7, ([(0.26, 0.2), (0.74, 0.2), (0.46, 0.86)], [(0.38, 0.53), (0.7, 0.52)])),
    "7-hooked": (7, ([(0.26, 0.28), (0.3, 0.2), (0.74, 0.2), (0.46, 0.86)],)),
    "7-european": (7, ([(0.24, 0.27), (0.28, 0.19), (0.74, 0.19), (0.5, 0.52), (0.42, 0.87)],
                       [(0.34, 0.52), (0.68, 0.5)])),
    "8-two-circles": (8, (_ellipse(0.5, 0.3, 0.14, 0.14, 0, 2 * math.pi),
                          _ellipse(0.5, 0.66, 0.18, 0.19, 0, 2 * math.pi))),
    "8-loops": (8, ([*_ellipse(0.5, 0.32, 0.15, 0.16, math.pi, 2 * math.pi),
                     *_ellipse(0.5, 0.67, 0.19, 0.19, 0, -2 * math.pi)],)),
    "9-round": (9, ([*_ellipse(0.5, 0.33, 0.17, 0.17, 0.5 * math.pi, -2 * math.pi),
                     (0.66, 0.38), (0.6, 0.86)],)),
    "9-curly": (9, ([*_ellipse(0.5, 0.3, 0.17, 0.16, 0.5 * math.pi, -2 * math.pi),
                     (0.67, 0.32), (0.64, 0.72), (0.52, 0.86), (0.36, 0.82)],)),
    "9-stick": (9, ([*_ellipse(0.5, 0.33, 0.17, 0.17, 0.5 * math.pi, -2 * math.pi),
                     (0.67, 0.33), (0.67, 0.88)],)),
}  # fmt: skip
TEST_SEEDS = 1_000_000
"""Drawn variants with seeds from here on are for testing; training uses seeds below."""


@dataclass(frozen=True)
class Sample:
    digit: int
    source: str
    """The font family or drawn style it came from."""
    image: Image.Image


@cache
def font_path(file_name: str) -> Path | None:
    for directory in FONT_DIRS:
        for path in directory.rglob(file_name):
            return path
    return None


def available_families(held_out: bool | None = None) -> dict[str, list[Path]]:
    """Families whose fonts are installed (`held_out`: only the test ones, or only the others)."""
    families = {}
    for family, files in FONT_FAMILIES.items():
        if held_out is not None and (family in HELD_OUT_FAMILIES) != held_out:
            continue
        paths = [p for p in map(font_path, files) if p is not None]
        if paths:
            families[family] = paths
    return families


def _paper_and_ink(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A light, slightly tinted paper and a dark pen (black, blue or pencil grey)."""
    paper = np.clip(int(rng.integers(215, 256)) + rng.integers(-8, 9, size=3), 0, 255)
    pens = np.array([(20, 20, 25), (25, 40, 140), (60, 60, 60)])
    ink = np.clip(pens[rng.integers(0, 3)] + int(rng.integers(0, 30)), 0, 255)
    return tuple(int(c) for c in paper), tuple(int(c) for c in ink)


def _pose(mask: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Slant, rotate and scale a white-on-black mask of the digit, as hands and cameras do."""
    slant = float(rng.uniform(-0.35, 0.35))
    width, height = mask.size
    pad = int(abs(slant) * height) + 4
    padded = Image.new("L", (width + 2 * pad, height), 0)
    padded.paste(mask, (pad, 0))
    sheared = padded.transform(
        padded.size,
        Image.Transform.AFFINE,
        (1, slant, -slant * height / 2, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    )
    rotated = sheared.rotate(
        float(rng.uniform(-12, 12)), resample=Image.Resampling.BILINEAR, expand=True
    )
    box = rotated.getbbox()
    return rotated.crop(box) if box else rotated


def _on_paper(mask: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The digit placed on a sheet of random size and tint, in ink, lightly blurred."""
    side = int(rng.integers(64, 320))
    sheet_w, sheet_h = side + int(rng.integers(0, 120)), side + int(rng.integers(0, 120))
    target = int(min(sheet_w, sheet_h) * rng.uniform(0.45, 0.9))
    scale = target / max(mask.size)
    digit = mask.resize(
        (max(1, round(mask.width * scale)), max(1, round(mask.height * scale))),
        Image.Resampling.LANCZOS,
    )
    paper, ink = _paper_and_ink(rng)
    sheet = Image.new("RGB", (sheet_w, sheet_h), paper)
    left = int(rng.integers(0, max(1, sheet_w - digit.width + 1)))
    top = int(rng.integers(0, max(1, sheet_h - digit.height + 1)))
    sheet.paste(Image.new("RGB", digit.size, ink), (left, top), digit)
    blur = float(rng.uniform(0, 1.2))
    return sheet.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.3 else sheet


def render_font_digit(path: Path, digit: int, rng: np.random.Generator) -> Image.Image:
    """One digit in a handwriting font, with a random size, stroke weight, slant, rotation,
    position, paper, ink and blur."""
    return render_glyph(path, str(digit), rng)


def render_glyph(path: Path, text: str, rng: np.random.Generator) -> Image.Image:
    size = int(rng.integers(60, 140))
    font = ImageFont.truetype(str(path), size)
    bold = int(rng.choice([0, 0, 1, 2, 3])) * size // 60
    canvas = Image.new("L", (size * 2, size * 2), 0)
    ImageDraw.Draw(canvas).text(
        (size // 2, size // 4), text, font=font, fill=255, stroke_width=bold, stroke_fill=255
    )
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"{path.name} draws nothing for {text!r}")
    return _on_paper(_pose(canvas.crop(box), rng), rng)


def draw_style(style: str, rng: np.random.Generator) -> Image.Image:
    """A drawn digit: the style's strokes, each point moved a little, with a round pen of random
    width on a 280x280 pad (as the web page draws), then posed and put on paper."""
    _, strokes = DRAWN_STYLES[style]
    width = int(rng.integers(8, 48))  # a fine pen to a fat marker or a finger on a phone
    wobble = float(rng.uniform(0.005, 0.04))
    stretch_x, stretch_y = rng.uniform(0.75, 1.2), rng.uniform(0.85, 1.15)
    moved = [
        [
            (
                0.5 + (x - 0.5) * stretch_x + rng.normal(0, wobble),
                0.5 + (y - 0.5) * stretch_y + rng.normal(0, wobble),
            )
            for x, y in stroke
        ]
        for stroke in strokes
    ]
    return draw_strokes(moved, width, rng)


def draw_strokes(strokes: Sequence[Stroke], width: int, rng: np.random.Generator) -> Image.Image:
    """Strokes in the unit square drawn with a round pen `width` pixels wide on a 280x280 pad (as
    the web page draws), then posed and put on paper."""
    side = 280
    pad = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(pad)
    for stroke in strokes:
        points = [(x * side, y * side) for x, y in stroke]
        draw.line(points, fill=255, width=width, joint="curve")
        for x, y in points:  # a round pen: every joint and end is a disc
            draw.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
    box = pad.getbbox()
    assert box is not None
    return _on_paper(_pose(pad.crop(box), rng), rng)


def font_samples(families: dict[str, list[Path]], per_digit: int, seed: int) -> Iterator[Sample]:
    """`per_digit` renders of each digit in each family (its files in turn)."""
    for family, paths in sorted(families.items()):
        rng = np.random.default_rng([seed, zlib.crc32(family.encode())])
        for digit in range(10):
            for i in range(per_digit):
                yield Sample(digit, family, render_font_digit(paths[i % len(paths)], digit, rng))


def drawn_samples(per_style: int, seed: int) -> Iterator[Sample]:
    for index, (style, (digit, _)) in enumerate(sorted(DRAWN_STYLES.items())):
        rng = np.random.default_rng([seed, index])
        for _ in range(per_style):
            yield Sample(digit, f"drawn:{style}", draw_style(style, rng))


def encode_upload(image: Image.Image, rng: np.random.Generator) -> tuple[bytes, str]:
    """As a user's file: PNG, or JPEG at a random quality."""
    buffer = io.BytesIO()
    if rng.random() < 0.5:
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    image.save(buffer, format="JPEG", quality=int(rng.integers(60, 95)))
    return buffer.getvalue(), "image/jpeg"
