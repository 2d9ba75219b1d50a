"""Image uploads to MNIST-style 28x28 inputs, made the way MNIST itself was made.

MNIST digits are light ink on a dark field, cut to the ink's bounding box, scaled so the longer
side is 20 pixels (keeping the aspect ratio, anti-aliased), and placed in a 28x28 field by their
centre of mass. A user's upload is usually the opposite: dark pen on light paper, any size,
off-centre, maybe a photo with uneven light, paper texture and JPEG noise. Each step below
undoes one of those differences; the threshold is estimated from the image (Otsu on the ink once
the paper's light is subtracted), never a fixed `> 0`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from scipy import ndimage

from service.errors import InvalidInput, PayloadTooLarge, ServingError, UnsupportedMediaType
from service.paper import on_the_sheet, without_rules, without_shadows, without_specks

log = logging.getLogger("service.images")

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "MPO"})
WORKING_SIDE = 512
"""Uploads are first reduced to at most this side: enough detail for a 20-pixel digit, and the
filters below then cost the same for a 12-megapixel photo as for a small canvas."""
DIGIT_SIDE = 20
FIELD_SIDE = 28
MIN_INK_CONTRAST = 40.0
"""Ink must stand this far (0-255) above the background to count: paper texture and JPEG noise
stay below it, a pencil stroke does not."""
CENTRE_OF_MASS = 14.0
"""Where MNIST puts a digit's centre of mass, in pixel-index coordinates of the 28x28 field: the
60,000 training digits average (14.00, 14.01), half a pixel below and right of the geometric
centre 13.5. Centring on 13.5 instead doubles the pixel difference between a rendered-then-prepared
test digit and its original (8.3 to 15.8 per pixel); our shift-augmented model does not mind, a
model trained without augmentation would."""
ALPHA_SAMPLE_SIDE = 128
LUMINANCE = np.array([0.299, 0.587, 0.114])
"""ITU-R 601-2, as Pillow's conversion to grey weighs red, green and blue."""
WHITE = (255, 255, 255, 255)
BLACK = (0, 0, 0, 255)
POLARITY_MARGIN = 0.67
"""The ink is the extreme further from the border's tone, unless the nearer one is at least this
share as far: then the rarer extreme."""
PAPER_SAMPLES = 64
PAPER_DEGREE = 2
_EXPONENTS = [(i, j) for i in range(PAPER_DEGREE + 1) for j in range(PAPER_DEGREE + 1 - i)]


@dataclass(frozen=True)
class PreparedImage:
    pixels: npt.NDArray[np.uint8]
    """28x28, 0 background, 255 ink, as the model expects."""

    def png_bytes(self) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.pixels, mode="L").save(buffer, format="PNG")
        return buffer.getvalue()


def prepare_upload(data: bytes, max_pixels: int, name: str = "image") -> PreparedImage:
    """Decode and preprocess one upload; anything the image makes fail is the client's 422.

    Pillow raises many exception types for hostile files, and not only while decoding: EXIF
    orientation, mode conversion (a LAB TIFF has none to RGB) and lazy tile loading fail later.
    So the whole pipeline is guarded here, once, rather than each call that might touch pixels.
    """
    try:
        return preprocess(decode_upload(data, max_pixels, name), name)
    except ServingError:
        raise
    except Exception as exc:
        log.warning("upload %s could not be prepared", name, exc_info=True)
        raise InvalidInput(
            f"{name} could not be read as an image: {type(exc).__name__}: {exc}"
        ) from None


def decode_upload(data: bytes, max_pixels: int, name: str = "image") -> Image.Image:
    """Open, check the declared size before decoding (decompression bombs), then decode."""
    if not data:
        raise InvalidInput(f"{name} is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own, far higher, limit
        raise PayloadTooLarge(f"{name} declares too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"{name} is not an image in a supported format "
            f"({', '.join(sorted(ACCEPTED_FORMATS - {'MPO'}))})"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"{name} could not be read: {exc}") from None
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedMediaType(
            f"{name} is {image.format}; send PNG, JPEG, BMP, GIF, WebP or TIFF"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{name} declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if width < 1 or height < 1:
        raise InvalidInput(f"{name} has no pixels")
    try:
        image.seek(0)  # GIF, WebP, TIFF: the first frame
        if image.format in ("JPEG", "MPO"):
            # libjpeg scales by 1/2 to 1/8 while it decodes: a 12-megapixel photo comes out at
            # 1000x750, all the working size needs, in half the time and 1/16 of the memory.
            image.draft(None, (WORKING_SIDE, WORKING_SIDE))
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise InvalidInput(f"{name} is corrupt or truncated: {exc}") from None
    return image


def to_grayscale(image: Image.Image) -> npt.NDArray[np.float32]:
    """Any transparency laid on paper (`paper_behind`), any depth brought to 8 bits, as grey."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, paper_behind(rgba))
        image = Image.alpha_composite(paper, rgba)
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array / peak * 255).astype(np.uint8), mode="L")
    if image.mode == "1":
        image = image.convert("L")
    gray = image.convert("L")
    gray.thumbnail((WORKING_SIDE, WORKING_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.float32)


def paper_behind(rgba: Image.Image) -> tuple[int, int, int, int]:
    """White, unless what is visible is strokes of one light colour: then black.

    The colour under a transparent pixel is never seen, so a transparent canvas shows only its
    strokes, and they must stand out from the paper they are laid on. On white, a dark-mode
    app's white pen left nothing to read, and a yellow one 29 levels. A picture with paper of
    its own (a sheet with a clear margin) shows both light and dark, and keeps white as before.
    Judged on a small copy, resampled with its alpha, so a thin stroke still counts.
    """
    small = rgba.resize(
        (min(rgba.width, ALPHA_SAMPLE_SIDE), min(rgba.height, ALPHA_SAMPLE_SIDE)),
        Image.Resampling.BOX,
    )
    pixels = np.asarray(small, dtype=np.float64).reshape(-1, 4)
    weight = pixels[:, 3] / 255
    if weight.sum() == 0:  # an empty canvas: paper
        return WHITE
    light = (pixels[:, :3] @ LUMINANCE * weight).sum() / weight.sum()
    spread = np.sqrt(((pixels[:, :3] @ LUMINANCE - light) ** 2 * weight).sum() / weight.sum())
    return BLACK if light > 127.5 and spread < MIN_INK_CONTRAST else WHITE


def ink_map(gray: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Ink as light-on-dark, with the (possibly uneven) paper subtracted.

    The paper's brightness is read from the image border, and the ink is whichever extreme lies
    further from it (or, when both lie about as far, the rarer one: a shadow over most of the
    border, the lit paper and the pen either side of it): dark ink on paper is inverted. (A
    fixed "border above 127" rule fails on a dim photo of white paper, whose border is grey.)
    Uneven lighting is removed by subtracting a smooth surface fitted to the paper alone (see
    `paper_surface`), so the inside of a thick stroke is never mistaken for background, as it is
    by a morphological opening narrower than the stroke. (A shadow's sharp edge is not smooth:
    `without_shadows` takes it out after.)
    """
    paper = float(np.median(np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])))
    # Extremes of a 3x3 mean: a stroke keeps its value there, a single noisy pixel does not.
    blurred = np.asarray(
        Image.fromarray(gray.astype(np.uint8), mode="L").filter(ImageFilter.BoxBlur(1)),
        dtype=np.float32,
    )
    darker, lighter = paper - float(blurred.min()), float(blurred.max()) - paper
    if min(darker, lighter) > POLARITY_MARGIN * max(darker, lighter):
        # Both extremes as far from the border: a shadow on the border, lit paper and a dark
        # pen on either side of it. The ink is the extreme that covers less of the picture.
        dark_share = float((blurred < paper - darker / 2).mean())
        light_share = float((blurred > paper + lighter / 2).mean())
        dark_ink = dark_share < light_share
    else:
        dark_ink = darker > lighter
    ink = 255.0 - gray if dark_ink else gray.copy()
    corrected: npt.NDArray[np.float32] = np.clip(ink - paper_surface(ink), 0, None)
    return corrected


def paper_surface(ink: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The paper's brightness as a quadratic surface, fitted robustly to the non-ink pixels.

    A lamp on one side or a vignetting lens change the light slowly, which a quadratic follows
    (light that changes within a stroke's width, such as a sharp shadow edge, is not removed).
    The fit starts from the pixels below Otsu's threshold (the paper, however much of the
    picture a bold digit covers) and then keeps only the pixels close to the surface: ink lies
    far above it and never pulls it up. It is fitted on a grid of about 64x64 samples and
    evaluated as two small matrix products, so it costs the same for every upload size.
    """
    height, width = ink.shape
    step = max(1, max(height, width) // PAPER_SAMPLES)
    sample = ink[::step, ::step]
    row_powers = _powers(np.arange(0, height, step) / max(height - 1, 1))
    col_powers = _powers(np.arange(0, width, step) / max(width - 1, 1))
    i, j = np.array(_EXPONENTS).T
    # One row per sample pixel, one column per term y**i * x**j.
    terms = (row_powers[:, None, i] * col_powers[None, :, j]).reshape(-1, len(i))
    values = sample.ravel().astype(np.float64)
    paper = values < otsu_threshold(sample)
    if paper.sum() < 10 * len(i):  # no second mode (a blank picture): start from all of it
        paper = np.ones_like(paper)
    for _ in range(4):
        coefficients = np.linalg.lstsq(terms[paper], values[paper], rcond=None)[0]
        residual = values - terms @ coefficients
        spread = 1.4826 * float(np.median(np.abs(residual[paper]))) + 1.0  # robust sigma
        paper = residual < 2.5 * spread
    grid = np.zeros((PAPER_DEGREE + 1, PAPER_DEGREE + 1))
    grid[i, j] = coefficients
    rows = _powers(np.arange(height) / max(height - 1, 1))
    cols = _powers(np.arange(width) / max(width - 1, 1))
    surface: npt.NDArray[np.float32] = (rows @ grid @ cols.T).astype(np.float32)
    return surface


def _powers(positions: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    powers: npt.NDArray[np.float64] = positions[:, None] ** np.arange(PAPER_DEGREE + 1)
    return powers


def otsu_threshold(values: npt.NDArray[np.float32]) -> float:
    flat = values.ravel()
    # np.histogram's 256 bins over [0, 256), counted twice as fast (ink is never negative).
    weights = np.bincount(flat[flat < 256].astype(np.int64), minlength=256).astype(np.float64)
    total = weights.sum()
    centres = np.arange(256) + 0.5
    cumulative = np.cumsum(weights)
    cumulative_mean = np.cumsum(weights * centres)
    background = cumulative
    foreground = total - cumulative
    valid = (background > 0) & (foreground > 0)
    mean_bg = np.divide(cumulative_mean, background, out=np.zeros_like(centres), where=valid)
    mean_fg = np.divide(
        cumulative_mean[-1] - cumulative_mean, foreground, out=np.zeros_like(centres), where=valid
    )
    between = np.where(valid, background * foreground * (mean_bg - mean_fg) ** 2, 0)
    return float(centres[int(np.argmax(between))])


def preprocess(image: Image.Image, name: str = "image") -> PreparedImage:
    gray = to_grayscale(image)
    ink = without_shadows(ink_map(on_the_sheet(gray, otsu_threshold(gray))))
    # The strongest 3x3 neighbourhood: a thin stroke counts, a lone noisy pixel does not.
    smoothed = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8), mode="L").filter(
        ImageFilter.BoxBlur(1)
    )
    if float(np.asarray(smoothed).max()) < MIN_INK_CONTRAST:
        raise InvalidInput(f"{name} shows no digit: no ink stands out from the background")
    threshold = max(otsu_threshold(ink), MIN_INK_CONTRAST / 2)
    mask = ink >= threshold
    connected = mask & ~_isolated(mask)
    if connected.any():
        mask = connected  # lone noisy pixels do not stretch the bounding box
    mask = without_frames(without_specks(without_rules(mask, ink)))
    # The box also takes the faint anti-aliased edge touching the strokes, as MNIST's did.
    edge = (ink >= threshold / 4) & _dilate(_dilate(mask))
    rows, cols = np.flatnonzero(edge.any(axis=1)), np.flatnonzero(edge.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Soft strokes as MNIST has them: scale the ink so a full stroke is 255, drop faint texture.
    stroke = float(np.percentile(ink[mask], 90)) or 1.0
    soft = np.clip(ink / stroke, 0, 1) * 255
    soft[~edge] = 0
    digit = Image.fromarray(soft[top:bottom, left:right].astype(np.uint8), mode="L")
    return PreparedImage(place_in_field(digit))


FRAME_FILL = 0.12
"""An outline fills little of its bounding box: a box whose lines are 1% of its side fills 4%,
one of 3% fills 12%. Most digits fill more; a thin 0 does not, hence the two checks below."""
FRAME_CONTENT = 0.3
"""What a frame encloses is a digit: at least this share of the frame's height (a 1 in a box is
narrow but tall; the crossbar of a 7 is wide but flat)."""
FRAME_CORNER = 0.1
"""A frame is a box: it has ink within this share of its size from at least three corners of
its bounding box. An oval passes its corners at 14.6% of its size from each side, so a thin zero
with a slash inside that does not touch it stays a zero."""


def without_frames(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The ink without a box drawn around the digit and not touching it: a form's field, a frame
    on a canvas, a cell of a table. Kept, it made the bounding box the frame's and the digit a
    small figure in the middle of an outline (7 of 10 rendered digits read right, most unsure)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size or not _box_like(
        mask, np.array([rows[0], rows[-1] + 1, cols[0], cols[-1] + 1])
    ):
        return mask  # a frame would be the outermost ink: most uploads end here, unlabelled
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count < 2:
        return mask
    spans = np.array([[s.start, s.stop, c.start, c.stop] for s, c in ndimage.find_objects(labels)])
    top, bottom, left, right = spans.T
    heights, areas = bottom - top, (bottom - top) * (right - left)
    pixels = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    frames = []
    for index in np.flatnonzero(pixels < FRAME_FILL * areas):
        inside = (
            (top > top[index])
            & (bottom < bottom[index])
            & (left > left[index])
            & (right < right[index])
            & (heights >= FRAME_CONTENT * heights[index])
        )
        if inside.any() and _box_like(labels == index + 1, spans[index]):
            frames.append(index + 1)
    if not frames:
        return mask
    kept: npt.NDArray[np.bool_] = mask & ~np.isin(labels, frames)
    return kept


def _box_like(component: npt.NDArray[np.bool_], span: npt.NDArray[np.int_]) -> bool:
    top, bottom, left, right = (int(v) for v in span)
    reach_y = max(1, round(FRAME_CORNER * (bottom - top)))
    reach_x = max(1, round(FRAME_CORNER * (right - left)))
    corners = [
        bool(component[rows, cols].any())
        for rows in (slice(top, top + reach_y), slice(bottom - reach_y, bottom))
        for cols in (slice(left, left + reach_x), slice(right - reach_x, right))
    ]
    return sum(corners) >= 3


def _neighbours(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int_]:
    padded = np.pad(mask, 1).astype(np.int_)
    height, width = mask.shape
    return sum(  # type: ignore[return-value]
        padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    )


def _dilate(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    grown: npt.NDArray[np.bool_] = mask | (_neighbours(mask) > 0)
    return grown


def _isolated(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    alone: npt.NDArray[np.bool_] = mask & (_neighbours(mask) == 0)
    return alone


def place_in_field(digit: Image.Image) -> npt.NDArray[np.uint8]:
    """Longer side to 20 pixels, then centre of mass to where MNIST has it in a 28x28 field."""
    width, height = digit.size
    scale = DIGIT_SIDE / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(digit.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    small = np.clip(small, 0, 255)
    total = small.sum()
    if total > 0:
        ys, xs = np.indices(small.shape)
        centre_y, centre_x = (ys * small).sum() / total, (xs * small).sum() / total
    else:
        centre_y, centre_x = (small.shape[0] - 1) / 2, (small.shape[1] - 1) / 2
    top = round(float(CENTRE_OF_MASS - centre_y))
    left = round(float(CENTRE_OF_MASS - centre_x))
    top = min(max(top, 0), FIELD_SIDE - small.shape[0])
    left = min(max(left, 0), FIELD_SIDE - small.shape[1])
    field = np.zeros((FIELD_SIDE, FIELD_SIDE), dtype=np.float32)
    field[top : top + small.shape[0], left : left + small.shape[1]] = small
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)
