"""MNIST-style preprocessing of uploads, on images drawn and rendered here."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.errors import InvalidInput
from service.images import decode_upload, prepare_upload, preprocess
from training.data import MnistSplits


def prepared(image: Image.Image) -> np.ndarray:
    return preprocess(image).pixels.astype(np.float32)


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(pixels.shape)
    total = pixels.sum()
    return float((ys * pixels).sum() / total), float((xs * pixels).sum() / total)


def ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(pixels.max(1) > 0), np.flatnonzero(pixels.max(0) > 0)
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def seven(
    size: int = 200, ink: str = "black", paper: str = "white", mode: str = "RGB"
) -> Image.Image:
    image = Image.new(mode, (size, size), paper)
    draw = ImageDraw.Draw(image)
    s = size / 200
    draw.line([(60 * s, 50 * s), (140 * s, 50 * s), (90 * s, 160 * s)], fill=ink, width=int(12 * s))
    return image


def best_shift_correlation(a: np.ndarray, b: np.ndarray, reach: int = 2) -> float:
    best = -1.0
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            shifted = np.roll(np.roll(a, dy, 0), dx, 1)
            best = max(best, float(np.corrcoef(shifted.ravel(), b.ravel())[0, 1]))
    return best


def test_dark_on_light_and_light_on_dark_give_the_same_input() -> None:
    normal = prepared(seven(ink="black", paper="white"))
    inverted = prepared(seven(ink="white", paper="black"))
    assert normal.max() == 255
    assert best_shift_correlation(normal, inverted, 0) > 0.99


@pytest.mark.parametrize(
    ("ink", "hidden"),
    [
        ((0, 0, 0), (0, 0, 0)),  # a drawing app's export: black pen, transparent canvas
        ((0, 0, 0), (255, 255, 255)),
        ((255, 255, 255), (255, 255, 255)),  # a dark-mode app's white pen: was "no ink"
        ((255, 255, 0), (0, 0, 0)),  # a yellow highlighter: 29 levels from white, was "no ink"
        ((30, 60, 200), (30, 60, 200)),
    ],
    ids=["black", "black-over-white", "white", "yellow", "blue"],
)
@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_strokes_on_a_transparent_canvas_are_the_digit_whatever_their_colour(
    ink: tuple[int, int, int], hidden: tuple[int, int, int], mode: str
) -> None:
    """The colour under a transparent pixel is not seen, so the strokes are the drawing: the
    paper they are laid on must stand out from them, whatever colour the pen was."""
    canvas = seven(mode="RGBA", ink=(*ink, 255), paper=(*hidden, 0))
    if mode == "LA":
        canvas = canvas.convert("LA")
    elif mode == "P":  # a GIF's or an indexed PNG's transparency: one palette entry
        strokes = np.asarray(canvas)[..., 3] > 0
        canvas = Image.fromarray(strokes.astype(np.uint8), mode="P")
        canvas.putpalette([*hidden, *ink])
        canvas.info["transparency"] = 0
    assert best_shift_correlation(prepared(canvas), prepared(seven()), 0) > 0.99


def test_an_opaque_sheet_on_a_transparent_margin_keeps_its_own_paper() -> None:
    """A picture that has its own paper (a scan with rounded corners, a sticker) is read as
    before: its dark ink on its light paper, the clear margin laid on white."""
    sheet = Image.new("RGBA", (260, 260), (0, 0, 0, 0))
    sheet.paste(seven(mode="RGBA", ink=(0, 0, 0, 255), paper=(255, 255, 255, 255)), (30, 30))
    assert best_shift_correlation(prepared(sheet), prepared(seven()), 0) > 0.99


def test_off_centre_and_tiny_digits_are_scaled_to_20_and_centred() -> None:
    canvas = Image.new("L", (900, 600), 255)
    canvas.paste(seven(size=40, mode="L"), (820, 530))
    pixels = prepared(canvas)
    assert max(ink_box(pixels)) in (19, 20, 21)
    y, x = centre_of_mass(pixels)
    assert abs(y - 14) < 0.5  # where MNIST's digits have it
    assert abs(x - 14) < 0.5


@pytest.mark.parametrize(("width", "height"), [(8, 120), (120, 30)], ids=["tall", "wide"])
def test_aspect_ratio_is_kept(width: int, height: int) -> None:
    canvas = Image.new("L", (300, 300), 255)
    ImageDraw.Draw(canvas).rectangle([(100, 100), (100 + width, 100 + height)], fill=0)
    rows, cols = ink_box(prepared(canvas))
    longer, shorter = max(rows, cols), min(rows, cols)
    assert longer in (20, 21)
    assert shorter == pytest.approx(20 * min(width, height) / max(width, height), abs=2.5)
    assert (rows > cols) == (height > width)


@pytest.mark.parametrize("paper", [255, 0, 180], ids=["white", "black", "grey"])
def test_blank_image_is_refused_with_a_clear_message(paper: int) -> None:
    with pytest.raises(InvalidInput, match="no digit"):
        preprocess(Image.new("L", (64, 64), paper))


def test_photo_with_uneven_light_texture_and_jpeg_noise_still_finds_the_digit() -> None:
    rng = np.random.default_rng(3)
    clean = np.asarray(seven(size=300, mode="L"), dtype=np.float32)
    xs = np.indices(clean.shape)[1]
    light = 150 + 90 * xs / xs.max()  # lamp on the right: paper from 150 to 240
    photo = clean / 255 * light + rng.normal(0, 8, clean.shape)
    photo = np.clip(photo * (clean > 0) + (clean == 0) * 40 + rng.normal(0, 4, clean.shape), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(photo.astype(np.uint8)).convert("RGB").save(buffer, "JPEG", quality=60)
    noisy = prepared(decode_upload(buffer.getvalue(), 10**8))
    assert best_shift_correlation(noisy, prepared(seven(size=300)), 1) > 0.9


def test_dim_photo_of_white_paper_is_read_as_dark_ink() -> None:
    """The border is grey (below mid-scale), yet the ink is the darker extreme."""
    dim = np.asarray(seven(size=200, mode="L"), dtype=np.float32) * 0.4 + 10  # paper 112, ink 10
    pixels = prepared(Image.fromarray(dim.astype(np.uint8)))
    assert best_shift_correlation(pixels, prepared(seven(size=200)), 1) > 0.95


def test_a_thick_stroke_is_ink_all_the_way_through() -> None:
    """A stroke wider than a background filter's window must not come out hollow."""
    canvas = Image.new("L", (120, 120), 255)
    ImageDraw.Draw(canvas).rectangle([(35, 10), (85, 110)], fill=0)  # a fat "1"
    pixels = prepared(canvas)
    rows, cols = np.flatnonzero(pixels.max(1) > 0), np.flatnonzero(pixels.max(0) > 0)
    inside = pixels[rows[0] + 2 : rows[-1] - 1, cols[0] + 2 : cols[-1] - 1]
    assert inside.min() >= 250


def test_a_bold_digit_covering_most_of_the_picture_keeps_its_ink() -> None:
    """More ink than paper: the paper is still told apart (Otsu), not taken from the majority."""
    canvas = Image.new("L", (100, 100), 255)
    ImageDraw.Draw(canvas).rectangle([(20, 0), (80, 99)], fill=0)  # 61% of the pixels
    pixels = prepared(canvas)
    rows, cols = np.flatnonzero(pixels.max(1) > 0), np.flatnonzero(pixels.max(0) > 0)
    assert pixels[rows[0] + 2 : rows[-1] - 1, cols[0] + 2 : cols[-1] - 1].min() >= 250


def framed(digit: Image.Image, margin: int = 60, line: int = 6) -> Image.Image:
    """`digit` inside a box drawn around it, not touching it, as on a form."""
    canvas = Image.new("RGB", (digit.width + 2 * margin, digit.height + 2 * margin), "white")
    canvas.paste(digit, (margin, margin))
    ImageDraw.Draw(canvas).rectangle(
        [margin // 2, margin // 2, canvas.width - margin // 2, canvas.height - margin // 2],
        outline="black",
        width=line,
    )
    return canvas


def one(size: int = 200) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).line([(100, 30), (100, 170)], fill="black", width=12)
    return image


@pytest.mark.parametrize("digit", [seven, one], ids=["seven", "one"])
def test_a_box_drawn_around_the_digit_is_not_part_of_it(digit: Callable[[], Image.Image]) -> None:
    alone = prepared(digit())
    in_a_box = prepared(framed(digit()))
    assert best_shift_correlation(in_a_box, alone, 0) > 0.98


@pytest.mark.parametrize("inside", ["speck", "slash"])
def test_a_thin_zero_keeps_its_outline_and_what_is_inside_it(inside: str) -> None:
    """An outline that encloses a speck (a dotted zero) or a slash that does not touch it is
    the digit, not a frame."""
    image = Image.new("RGB", (200, 200), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse([60, 30, 140, 170], outline="black", width=3)  # fills 9% of its box
    if inside == "speck":
        draw.ellipse([96, 96, 104, 104], fill="black")
    else:
        draw.line([(115, 55), (85, 145)], fill="black", width=4)
    pixels = prepared(image)
    height, width = ink_box(pixels)
    assert (height, width) >= (20, 10)  # the zero's box (20 x 11), not its content's (a slash: 7)
    assert pixels[14, 14] > 0  # and what is inside is still there


def test_rendered_mnist_digits_come_back_close_to_the_originals(mnist: MnistSplits) -> None:
    """Dark ink on white, upscaled and off-centre, as a user would upload a test digit."""
    rng = np.random.default_rng(0)
    scores = []
    for original in mnist.test_images[:30]:
        scale = int(rng.integers(3, 9))
        digit = Image.fromarray(255 - original).resize(
            (28 * scale, 28 * scale), Image.Resampling.BILINEAR
        )
        canvas = Image.new("L", (28 * scale + 150, 28 * scale + 90), 255)
        canvas.paste(digit, (int(rng.integers(0, 150)), int(rng.integers(0, 90))))
        scores.append(best_shift_correlation(prepared(canvas), original.astype(np.float32)))
    assert np.median(scores) > 0.9
    assert min(scores) > 0.75


def written(original: np.ndarray, scale: int = 8) -> Image.Image:
    """An MNIST digit as a pen leaves it: a mask of its strokes, `scale` times MNIST's size."""
    side = 28 * scale
    return Image.fromarray(original).resize((side, side), Image.Resampling.BILINEAR)


def on_page(
    strokes: Image.Image, rules: str, tilt: float = 0.0, pen: tuple[int, int, int] = (25, 40, 140)
) -> Image.Image:
    """The strokes written on a notebook's page, `tilt` degrees askew as a hand-held photo is:
    ruled (blue rules and a red margin) or squared (a grey-blue grid), the rules crossing the
    digit."""
    width, height = strokes.width + 200, strokes.height + 160
    page = Image.new("RGB", (width, height), (238, 238, 232))
    draw = ImageDraw.Draw(page)
    if rules == "ruled":
        for y in range(30, height, 70):
            draw.line([(0, y), (width, y)], fill=(120, 150, 210), width=2)
        draw.line([(50, 0), (50, height)], fill=(215, 80, 80), width=2)
    else:
        for y in range(12, height, 36):
            draw.line([(0, y), (width, y)], fill=(110, 130, 165), width=2)
        for x in range(20, width, 36):
            draw.line([(x, 0), (x, height)], fill=(110, 130, 165), width=2)
    page.paste(Image.new("RGB", strokes.size, pen), (110, 80), strokes)
    return page.rotate(tilt, resample=Image.Resampling.BILINEAR, fillcolor=(238, 238, 232))


def alone(strokes: Image.Image, tilt: float = 0.0, pen: int = 30) -> Image.Image:
    page = Image.new("L", (strokes.width + 200, strokes.height + 160), 238)
    page.paste(Image.new("L", strokes.size, pen), (110, 80), strokes)
    return page.rotate(tilt, resample=Image.Resampling.BILINEAR, fillcolor=238)


@pytest.mark.parametrize("tilt", [0.0, -4.0, 6.0])
@pytest.mark.parametrize("rules", ["ruled", "squared"])
def test_the_rules_of_a_notebook_are_not_part_of_the_digit(
    mnist: MnistSplits, rules: str, tilt: float
) -> None:
    """Rules cross the whole picture: left in, they made the digit's box the page's width and
    the digit a small mark in the field (held-out fonts on ruled pages read 69% before)."""
    for original in mnist.test_images[:6]:
        strokes = written(original)
        expected = prepared(alone(strokes, tilt))
        assert best_shift_correlation(prepared(on_page(strokes, rules, tilt)), expected) > 0.9


@pytest.mark.parametrize("bar", [14, 4], ids=["pen", "serif"])
def test_a_seven_cropped_tight_keeps_its_bar(bar: int) -> None:
    """A bar that crosses the whole picture is the digit's, not a rule, when it is as thick as
    the rest of the digit or, thinner (a serif 7's), meets it at an end."""
    image = Image.new("L", (120, 200), 255)
    draw = ImageDraw.Draw(image)
    draw.line([(0, 8), (120, 8)], fill=0, width=bar)
    draw.line([(112, 8), (40, 200)], fill=0, width=14)
    pixels = prepared(image)
    assert ink_box(pixels)[0] >= 19
    assert pixels[:8].sum() > 0.15 * pixels.sum()  # the bar is there, at the top


def test_a_sheet_photographed_on_a_desk_is_read_as_the_paper(mnist: MnistSplits) -> None:
    """A darker desk around the sheet was taken for the paper (the border's tone), and the
    sheet for the ink: held-out fonts read 11% so."""
    for original in mnist.test_images[:6]:
        strokes = written(original, 5)
        sheet = alone(strokes).convert("RGB")
        desk = Image.new("RGB", (sheet.width + 180, sheet.height + 140), (92, 70, 48))
        desk.paste(sheet.rotate(5, expand=True, fillcolor=(92, 70, 48)), (70, 50))
        assert best_shift_correlation(prepared(desk), prepared(alone(strokes, 5))) > 0.9


@pytest.mark.parametrize("digit", [0, 8])
def test_a_light_digit_on_a_dark_canvas_is_not_taken_for_a_sheet(digit: int) -> None:
    """A bold light 0 or 8 on black is a light region on a dark border too, but round and with
    wide counters: it stays the digit, as the same digit dark on white."""

    def draw(ink: int, paper: int) -> Image.Image:
        image = Image.new("L", (200, 200), paper)
        pen = ImageDraw.Draw(image)
        if digit == 0:
            pen.ellipse([50, 30, 150, 170], outline=ink, width=34)
        else:
            pen.ellipse([60, 30, 140, 100], outline=ink, width=26)
            pen.ellipse([52, 92, 148, 172], outline=ink, width=26)
        return image

    light = prepared(draw(255, 0))
    assert best_shift_correlation(light, prepared(draw(0, 255)), 0) > 0.99


def test_specks_outside_the_digit_do_not_stretch_its_box() -> None:
    """Dust on a scan, or where two faint rules cross and add up past the threshold."""
    clean = seven()
    dusty = seven()
    draw = ImageDraw.Draw(dusty)
    for x, y in [(8, 8), (190, 12), (15, 185), (185, 190)]:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill="black")
    assert best_shift_correlation(prepared(dusty), prepared(clean), 0) > 0.99


def in_shadow(strokes: Image.Image, angle: float, place: float, dark: float) -> Image.Image:
    """The strokes on white paper with a phone's shadow across it: `dark` of the light gone
    beyond an edge 3 pixels soft, at `angle` degrees, `place` of the way across."""
    page = np.asarray(alone(strokes), dtype=np.float32)
    ys, xs = np.indices(page.shape)
    turn = np.radians(angle)
    across = np.cos(turn) * (xs - place * page.shape[1]) + np.sin(turn) * (
        ys - place * page.shape[0]
    )
    light = 1 - dark / (1 + np.exp(-across / 3))
    return Image.fromarray(np.clip(page * light, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("angle", "place", "dark"),
    [(30, 0.5, 0.4), (100, 0.7, 0.3), (-60, 0.2, 0.45)],
    ids=["through-the-digit", "below", "most-of-the-border"],
)
def test_a_shadow_across_the_paper_is_not_ink(
    mnist: MnistSplits, angle: float, place: float, dark: float
) -> None:
    """Its edge is far sharper than the light the paper's surface follows: the shadowed paper
    was a plateau of "ink", the digit came out as a blob (59% of shadowed test digits read),
    and with most of the border in shadow the lit paper was taken for the ink. (The pen in the
    shadow stays fainter than in the light, as the shadow is subtracted, not divided out.)"""
    for original in mnist.test_images[:6]:
        strokes = written(original, 5)
        shaded = prepared(in_shadow(strokes, angle, place, dark))
        assert best_shift_correlation(shaded, prepared(alone(strokes))) > 0.85


@pytest.mark.parametrize("size", [(1, 3000), (3000, 1), (3, 700), (700, 3), (2, 2)])
@pytest.mark.parametrize("paper", [0, 255])
def test_a_strip_of_a_picture_is_read_or_has_no_digit(size: tuple[int, int], paper: int) -> None:
    """A side narrower than the blocks the shadow is looked for in left no blocks, and the
    search failed on the empty grid: "could not be read as an image" for a valid PNG."""
    image = Image.new("L", size, paper)
    image.putpixel((0, 0), 255 - paper)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    try:
        answer = f"{prepare_upload(buffer.getvalue(), 10**8).pixels.shape}"
    except InvalidInput as error:
        answer = str(error)
    assert answer == "(28, 28)" or "shows no digit" in answer
