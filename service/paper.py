"""The paper a digit is written on, told apart from the digit.

Users photograph digits on the paper they had at hand: a notebook's ruled or squared page, a
sheet lying on a desk, in the shadow of the phone. Left in, a rule crossing the picture made the
digit's bounding box the picture's width and the digit a small mark in the 28x28 field; around a
sheet on a desk, the desk was taken for the paper (its tone is read from the picture's border)
and the sheet for the ink; a shadow's plateau was ink. MNIST's test digits written so
(`bench/image_accuracy.py`) read 28% on ruled pages, 28% on squared ones, 10% on a desk and 59%
in a shadow, against 99.5% on plain paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import ConvexHull

Mask = npt.NDArray[np.bool_]
Ink = npt.NDArray[np.float32]

SHEET_BORDER = 0.4
"""A sheet on a desk: at most this share of the picture's border is as light as paper..."""
SHEET_AREA = 0.2
"""...and the largest light region covers this share of the picture..."""
SHEET_RECTANGLE = 0.85
"""...and this share of the smallest rectangle around it, at any angle (a sheet is a
rectangle, cut or not by the picture's edge; the filled outline of a light 0 or 8 is round)..."""
SHEET_INK = 0.4
SHEET_STROKE = 0.15
"""...with at most this share of it dark, and what is dark in it thin: at most this share of the
sheet's side from any point to the paper (pen strokes, not the counter of a light 0)..."""
SHEET_EDGE_WIDTH = 3
SHEET_EDGE = 30.0
"""...and a sharp edge around it: the paper just inside at least this much (0-255) lighter than
what lies just outside. Light falling off towards a photo's corners is a slope, not an edge."""


SHADOW_AREA = 0.02
"""A shadow on the paper: a region of middling ink, between the paper's and the pen's levels,
covering at least this share of the picture and reaching its border..."""
SHADOW_DEPTH = 0.03
"""...and somewhere deeper than a stroke's width and this share of the picture's side from its
edge: a plateau, not a line."""
SHADOW_BINS = 64
SHADOW_SIDE = 128
SHADOW_WINDOW = 3
"""The opening that takes a shadow out is this many times the pen's stroke width."""


MAX_TILT = 0.15
"""Rules are looked for up to this slope (about 8.5 degrees) either way: a page photographed a
little askew."""
THIN_RUN = 0.012
"""A rule's cross-section (the run of ink it leaves in one column) is at most this share of the
picture's side, at least 3 pixels: printed rules are hairlines, pen strokes usually wider."""
SEED_SPAN = 0.4
"""A rule is a straight line of thin runs over at least this share of the picture's width (its
height for a vertical rule): far longer than a digit's stroke, unless the digit fills the
picture, and then the tests below keep its strokes."""
SPECK = 0.02
"""A speck: a piece of ink under this share of all the ink..."""
REMNANT = 0.05
"""...or under this share when it touches a rule just removed (where two rules crossed)."""
MAX_LINES = 64
"""At most this many lines are examined per direction: a page has fewer rules."""
RULE_THICKNESS = 0.6
RULE_LIGHTNESS = 0.7
"""A rule is thinner (at most this share of the digit's stroke width) or lighter (its ink at most
this share of the digit's) than the digit's strokes, and its ends run off the picture or stop
clear of the digit. A digit's straight stroke is as thick and dark as its others, or meets
them at an end: the bar of a 7 cropped tight, the thin bar of a serif 7, stays."""
END_REACH = 3
"""Pixels around a rule's end searched for other ink, beyond its own thickness."""


def on_the_sheet(gray: Ink, threshold: float) -> Ink:
    """The sheet alone when the picture shows a light sheet on a darker surface, else `gray`.

    The paper's tone is read from the picture's border (`ink_map`); for a photo of a sheet on a
    desk, the border is the desk, and the sheet's light paper was taken for the ink. Here the
    picture is cut to the sheet, and what lies around it in that cut is given the paper's tone.
    """
    light = gray > threshold
    border = np.concatenate([light[0], light[-1], light[:, 0], light[:, -1]])
    if border.mean() > SHEET_BORDER:
        return gray
    labels, count = ndimage.label(light)
    if count == 0:
        return gray
    sizes = np.bincount(labels.ravel())[1:]
    paper = labels == int(np.argmax(sizes)) + 1
    sheet = ndimage.binary_fill_holes(paper)
    rows, cols = np.flatnonzero(sheet.any(axis=1)), np.flatnonzero(sheet.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    area = float(sheet.sum())
    written = sheet & ~light  # the ink on it (the counter of a written 0 is paper)
    if (
        area < SHEET_AREA * gray.size
        or not written.any()
        or written.sum() > SHEET_INK * area
        or float(ndimage.distance_transform_edt(written).max()) > SHEET_STROKE * np.sqrt(area)
        or area < SHEET_RECTANGLE * _smallest_rectangle(sheet)
        or _edge_contrast(gray, sheet) < SHEET_EDGE
    ):
        return gray
    # The sheet's edge is a blend of paper and desk, darker than the paper: paper too, or it is
    # a line of "ink" around the digit.
    inner = ndimage.binary_erosion(sheet, iterations=SHEET_EDGE_WIDTH)
    cut = gray[top:bottom, left:right].copy()
    cut[~inner[top:bottom, left:right]] = float(np.median(gray[paper]))
    return cut


def without_shadows(ink: Ink) -> Ink:
    """The ink with a shadow on the paper taken out.

    A phone's or a hand's shadow darkens part of the sheet with an edge far sharper than the
    smooth light the paper's surface follows, so the shadowed paper was left as a plateau of
    middling "ink", and one threshold split the lit paper from the shadow and the pen together:
    the digit came out as a blob. Three levels (Otsu's criterion over two thresholds) split
    paper, shadow and pen; when the middle level is a large region reaching the picture's border
    (not the soft edges of the strokes), what is broader than the pen's strokes is taken away:
    a grey opening three strokes wide keeps the plateau and its edge and loses the strokes.
    """
    lower, upper = _two_thresholds(ink)
    # Looked for at about 128 pixels a side: a shadow is broad, and a rule or a stroke's soft
    # edge, a pixel or two wide, mostly vanishes there.
    factor = max(1, min(max(ink.shape) // SHADOW_SIDE, min(ink.shape)))  # a strip: as it is
    coarse = _block_means((ink >= lower) & (ink < upper), factor) >= 0.5
    labels, count = ndimage.label(coarse)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = border[(border > 0) & (sizes[border] >= SHADOW_AREA * coarse.size)]
    if not border.size:
        return ink
    stroke = _stroke_width(ink >= upper)
    depth = ndimage.distance_transform_edt(np.isin(labels, border)) * factor
    # Far broader than the pen's strokes: a plateau, not a line.
    deep = labels[depth > max(stroke, SHADOW_DEPTH * min(ink.shape))]
    shadows = np.intersect1d(border, deep)
    if not shadows.size:
        return ink
    window = max(5, round(SHADOW_WINDOW * stroke))
    lifted: Ink = np.clip(ink - ndimage.grey_opening(ink, size=(window, window)), 0, None)
    # Where the shadow narrows to a point at the border the opening's window does not fit, and
    # a sliver of it was left as ink: the shadow's own paler pixels are paper wherever they are.
    region = ndimage.binary_dilation(np.isin(labels, shadows))
    full = np.repeat(np.repeat(region, factor, axis=0), factor, axis=1)
    shadow = np.zeros(ink.shape, dtype=bool)
    shadow[: full.shape[0], : full.shape[1]] = full[: ink.shape[0], : ink.shape[1]]
    shadow &= ink < upper
    lifted[shadow] = 0
    return lifted


def without_rules(mask: Mask, ink: Ink) -> Mask:
    """The ink without the ruled lines that cross the picture, kept where the digit crosses them.

    In each column a rule leaves a thin run of ink; a pen stroke crossing or lying along it
    makes the run longer, and long runs are never taken. So a digit written over the rules
    comes out whole. Horizontal rules are found in the columns, vertical ones (squared paper, a
    margin) in the rows.
    """
    rules = _rules(mask) + [rule.T for rule in _rules(mask.T)]
    if not rules:
        return mask
    lines = np.zeros_like(mask)
    for rule in rules:
        lines[rule.rows, rule.columns] = True
    rest = _without_small_pieces(mask & ~lines)  # the digit, without where rules cross
    if not rest.any():
        return mask  # nothing but lines: a 1 written alone, not rules on paper
    stroke = _stroke_width(rest)
    digit_ink = float(np.median(ink[rest]))
    kept = mask.copy()
    for rule in rules:
        unlike_the_digit = (
            rule.thickness <= RULE_THICKNESS * stroke
            or float(np.median(ink[rule.rows, rule.columns])) <= RULE_LIGHTNESS * digit_ink
        )
        if unlike_the_digit and not any(_touches(rest, rule, end) for end in rule.ends()):
            kept[rule.rows, rule.columns] = False
    return _without_remnants(kept, mask & ~kept)


def without_specks(mask: Mask) -> Mask:
    """Without small specks outside the digit's box: where two faint rules cross and add up,
    what is left where removed rules crossed, dust on a scan. Each would stretch the box the
    digit is cut to; inside it they change nothing and stay."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count < 2:
        return mask
    small = _small_pieces(labels, count, SPECK)[1:]
    if small.all() or not small.any():
        return mask
    boxes = ndimage.find_objects(labels)
    big = [box for box, tiny in zip(boxes, small, strict=True) if not tiny and box is not None]
    top, bottom = min(b[0].start for b in big), max(b[0].stop for b in big)
    left, right = min(b[1].start for b in big), max(b[1].stop for b in big)
    outside = [
        index + 1
        for index, box in enumerate(boxes)
        if small[index]
        and box is not None
        and (
            box[0].stop <= top
            or box[0].start >= bottom
            or box[1].stop <= left
            or box[1].start >= right
        )
    ]
    if not outside:
        return mask
    cleaned: Mask = mask & ~np.isin(labels, outside)
    return cleaned


@dataclass(frozen=True)
class Rule:
    rows: npt.NDArray[np.int64]
    columns: npt.NDArray[np.int64]
    thickness: float
    """The median length of its runs: about its width, for the slopes looked for."""
    horizontal: bool = True

    @property
    def T(self) -> Rule:  # noqa: N802 - as numpy names the transpose
        return Rule(self.columns, self.rows, self.thickness, not self.horizontal)

    def ends(self) -> tuple[tuple[int, int], tuple[int, int]]:
        along = self.columns if self.horizontal else self.rows
        first, last = int(np.argmin(along)), int(np.argmax(along))
        return (
            (int(self.rows[first]), int(self.columns[first])),
            (int(self.rows[last]), int(self.columns[last])),
        )


def _rules(mask: Mask) -> list[Rule]:
    """Thin runs lying along straight lines, each over `SEED_SPAN` of the picture's width or
    more, the best-fitting line of each first."""
    height, width = mask.shape
    padded = np.zeros((height + 2, width), dtype=np.int8)
    padded[1:-1] = mask
    edges = np.diff(padded, axis=0)
    columns, rows = np.nonzero(edges.T)  # per column, in row order: a start, then its end
    starts, ends, column = rows[0::2], rows[1::2], columns[0::2]
    thin = ends - starts <= max(3, round(THIN_RUN * max(height, width)))
    centre = (starts[thin] + ends[thin] - 1) / 2
    column_thin = column[thin]
    if column_thin.size < SEED_SPAN * width:
        return []
    # Every slope whose line drifts at most a pixel from the next one's across the picture.
    slopes = np.arange(-MAX_TILT, MAX_TILT + 1e-9, 1 / width)
    offsets = np.rint(centre[None, :] - slopes[:, None] * column_thin[None, :]).astype(np.int64)
    low = int(offsets.min())
    span = int(offsets.max()) - low + 3
    counts = np.bincount(
        (np.arange(len(slopes))[:, None] * span + offsets - low).ravel(),
        minlength=len(slopes) * span,
    ).reshape(len(slopes), span)
    # A rule's centres fall in three neighbouring offsets, each column in one of them.
    bands = counts + np.roll(counts, 1, axis=1) + np.roll(counts, -1, axis=1)
    rules: list[Rule] = []
    claimed = np.zeros(len(centre), dtype=bool)
    candidates = np.argwhere(bands >= SEED_SPAN * width)
    seen: list[tuple[float, float]] = []  # each line's offset at the left and right edges
    # The best-fitting line of a rule first; the lines near one already seen are that rule's.
    for slope_index, offset_index in candidates[np.argsort(-bands[tuple(candidates.T)])]:
        slope, offset = slopes[slope_index], float(offset_index + low)
        ends_at = (offset, offset + slope * width)
        if any(abs(ends_at[0] - a) <= 3 and abs(ends_at[1] - b) <= 3 for a, b in seen):
            continue
        seen.append(ends_at)
        if len(seen) > MAX_LINES:
            break
        near = ~claimed & (np.abs(centre - slope * column_thin - offset) <= 1.5)
        if near.sum() < SEED_SPAN * width:
            continue
        claimed |= near
        lengths = ends[thin][near] - starts[thin][near]
        rows = np.repeat(starts[thin][near], lengths) + _counting(lengths)
        rules.append(Rule(rows, np.repeat(column_thin[near], lengths), float(np.median(lengths))))
    return rules


def _touches(rest: Mask, rule: Rule, end: tuple[int, int]) -> bool:
    """Whether the digit's ink lies at this end of the rule (an end on the picture's edge runs
    off it and touches nothing)."""
    row, column = end
    height, width = rest.shape
    along = column if rule.horizontal else row
    if along < END_REACH or along >= (width if rule.horizontal else height) - END_REACH:
        return False
    reach = int(rule.thickness) + END_REACH
    return bool(
        rest[
            max(0, row - reach) : row + reach + 1, max(0, column - reach) : column + reach + 1
        ].any()
    )


def _without_remnants(kept: Mask, removed: Mask) -> Mask:
    """Without the specks the rules leave where they cross each other (both runs are long
    there, so neither direction took them)."""
    if not removed.any():
        return kept
    labels, count = ndimage.label(kept, structure=np.ones((3, 3), dtype=bool))
    touching = np.unique(labels[ndimage.binary_dilation(removed) & kept])
    small = _small_pieces(labels, count, REMNANT)
    cleaned: Mask = kept & ~np.isin(labels, touching[small[touching]])
    return cleaned


def _without_small_pieces(mask: Mask) -> Mask:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    cleaned: Mask = mask & ~_small_pieces(labels, count, SPECK)[labels]
    return cleaned


def _small_pieces(labels: npt.NDArray[np.int32], count: int, share: float) -> npt.NDArray[np.bool_]:
    """Per label, whether it is a speck: far smaller than all the ink (label 0 never is)."""
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    small: npt.NDArray[np.bool_] = sizes < share * sizes[1:].sum()
    small[0] = False
    return small


def _counting(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0, 1, ..., n-1 for each run of length n, end to end: each run's rows from its start."""
    firsts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    counted: npt.NDArray[np.int64] = np.arange(int(lengths.sum())) - firsts
    return counted


def _block_means(mask: Mask, factor: int) -> npt.NDArray[np.float64]:
    """The share of each `factor` x `factor` block that is set (the edges beyond whole blocks
    left out)."""
    height, width = (mask.shape[0] // factor) * factor, (mask.shape[1] // factor) * factor
    blocks = mask[:height, :width].reshape(height // factor, factor, width // factor, factor)
    means: npt.NDArray[np.float64] = blocks.sum(axis=(1, 3), dtype=np.int32) / factor**2
    return means


def _stroke_width(mask: Mask) -> float:
    """About how wide the strokes are: twice the typical distance from a stroke's middle to its
    edge (the 90th percentile of the distance transform inside the ink)."""
    if not mask.any():
        return 0.0
    depth = ndimage.distance_transform_edt(mask)
    return 2.0 * float(np.percentile(depth[mask], 90))


def _edge_contrast(gray: Ink, sheet: Mask) -> float:
    inside = sheet & ~ndimage.binary_erosion(sheet, iterations=SHEET_EDGE_WIDTH)
    outside = ndimage.binary_dilation(sheet, iterations=SHEET_EDGE_WIDTH) & ~sheet
    if not inside.any() or not outside.any():
        return 0.0
    return float(np.median(gray[inside]) - np.median(gray[outside]))


def _smallest_rectangle(region: Mask) -> float:
    """The area of the smallest rectangle, at any angle, around the region's pixels: one of
    its sides lies along an edge of the region's convex hull."""
    rows, cols = np.nonzero(region & ~ndimage.binary_erosion(region))
    points = np.column_stack([cols, rows]).astype(np.float64)
    if len(points) < 3 or np.linalg.matrix_rank(points - points[0]) < 2:
        return float(region.sum())
    hull = points[ConvexHull(points).vertices]
    edges = np.diff(np.vstack([hull, hull[:1]]), axis=0)
    angles = np.arctan2(edges[:, 1], edges[:, 0])
    best = np.inf
    for angle in angles:
        cos, sin = np.cos(angle), np.sin(angle)
        along, across = hull @ [cos, sin], hull @ [-sin, cos]
        # Pixel centres: a pixel's own extent adds one to each side.
        best = min(best, (np.ptp(along) + 1) * (np.ptp(across) + 1))
    return float(best)


def _two_thresholds(ink: Ink) -> tuple[float, float]:
    """Otsu's criterion for three classes: the two thresholds that make the classes' means
    furthest apart (the largest between-class variance), over a coarse histogram."""
    width = 256 // SHADOW_BINS
    levels = np.clip(ink, 0, 255).astype(np.int64) // width
    weights = np.bincount(levels.ravel(), minlength=SHADOW_BINS) / max(1, levels.size)
    centres = np.arange(SHADOW_BINS) * width + width / 2
    mass = np.concatenate([[0.0], np.cumsum(weights)])
    moment = np.concatenate([[0.0], np.cumsum(weights * centres)])
    # Classes [0, i), [i, j), [j, bins) for every 0 < i < j < bins.
    i, j = np.triu_indices(SHADOW_BINS, k=1)
    keep = i > 0
    i, j = i[keep], j[keep]
    score = np.zeros(i.size)
    for low, high in ((np.zeros_like(i), i), (i, j), (j, np.full_like(j, SHADOW_BINS))):
        w = mass[high] - mass[low]
        m = moment[high] - moment[low]
        score += np.divide(m * m, w, out=np.zeros_like(w), where=w > 0)
    best = int(np.argmax(score))
    return float(i[best] * width), float(j[best] * width)
