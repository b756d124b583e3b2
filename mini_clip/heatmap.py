"""Relevance grids drawn over the original photo, through the geometry of OpenAI's preprocessing.

The model saw a centre crop of a resized copy of the photo. The original notebook blends an upsampled map
with that crop; here each pixel of the original photo is traced back to where it landed in the crop
(`CropGeometry`), and the grid is sampled there, bilinearly between patch centres. Pixels outside the
crop were never seen by the model: they are dimmed and carry no heat, instead of a map stretched over
them.

Colours: inferno (Smith & van der Walt, matplotlib), not the original's JET. Inferno's lightness rises
steadily from black to pale yellow, so more relevance always reads as brighter, in greyscale and for
colour-blind readers; JET's bright cyan and yellow bands in the middle of the range invent edges.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image import CropGeometry

# Nine colours of matplotlib's inferno at t = 0, 1/8, ..., 1; linear interpolation between them stays
# within a few levels of the full 256-entry table.
INFERNO = np.array([(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85), (227, 89, 51),
                    (249, 140, 10), (249, 201, 50), (252, 255, 164)], dtype=np.float64)
ALPHA = 0.5  # heat over photo, 1:1 as in the original notebook
DIM = 0.35  # brightness left to the parts of the photo outside the model's crop


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB colours (shape + (3,)) on the inferno scale."""
    t = np.clip(values, 0.0, 1.0) * (len(INFERNO) - 1)
    low = np.minimum(t.astype(int), len(INFERNO) - 2)
    frac = (t - low)[..., None]
    return np.rint(INFERNO[low] * (1 - frac) + INFERNO[low + 1] * frac).astype(np.uint8)


def normalise(grid: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant grid (no preference anywhere) becomes all zeros."""
    grid = np.asarray(grid, dtype=np.float64)
    span = grid.max() - grid.min()
    return (grid - grid.min()) / span if span > 0 else np.zeros_like(grid)


def _axis(n_pixels: int, resized: int, offset: int, size: int, cells: int):
    """For one axis, the bilinear taps of each pixel: (low cell, weight of cell low + 1, inside). Pixel centre
    -> resized image -> crop -> grid coordinate, where cell k's centre is at k + 0.5; bilinear between
    centres, clamped at the crop's edges (align_corners=False)."""
    crop = (np.arange(n_pixels) + 0.5) * resized / n_pixels - offset  # position in the crop, in pixels
    inside = (crop >= 0) & (crop < size)
    g = np.clip(crop * cells / size - 0.5, 0, cells - 1)  # in cells, from the first centre
    low = np.minimum(np.floor(g).astype(int), max(cells - 2, 0))
    frac = g - low if cells > 1 else np.zeros(n_pixels)
    return low, frac, inside


def _sampling(n_pixels: int, resized: int, offset: int, size: int, cells: int, smooth: bool):
    """For one axis: (weights (n_pixels, cells), inside (n_pixels,)): `_axis`'s taps as a matrix, or the cell
    containing the point when not smooth."""
    low, frac, inside = _axis(n_pixels, resized, offset, size, cells)
    weights = np.zeros((n_pixels, cells))
    rows = np.arange(n_pixels)
    if smooth:
        weights[rows, low] = 1 - frac
        if cells > 1:
            weights[rows, low + 1] += frac
    else:
        crop = (rows + 0.5) * resized / n_pixels - offset
        weights[rows, np.clip(np.floor(crop * cells / size).astype(int), 0, cells - 1)] = 1
    return weights * inside[:, None], inside


def grid_to_image(grid: np.ndarray, geometry: CropGeometry, smooth: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Map a (rows, cols) grid over the model's crop onto the original image.

    Args:
        grid: relevance per patch, row-major as the model's patch tokens.
        geometry: how the original became the model's input (from `preprocess(..., return_geometry=True)`).
        smooth: bilinear between patch centres (True) or one flat value per patch (False).
    Returns:
        (values (height, width), zero outside the crop; inside (height, width) bool: pixels the model saw).
    """
    grid = np.asarray(grid, dtype=np.float64)
    wy, in_y = _sampling(geometry.height, geometry.resized_height, geometry.top, geometry.size, grid.shape[0],
                         smooth)
    wx, in_x = _sampling(geometry.width, geometry.resized_width, geometry.left, geometry.size, grid.shape[1],
                         smooth)
    return wy @ grid @ wx.T, in_y[:, None] & in_x[None, :]


# The colour of each of the 256 heat levels drawn, k / 255 on the inferno scale: one table lookup per pixel.
COLOURS = colormap(np.arange(256) / 255.0)  # (256, 3) uint8
DIMMED = [round(DIM * v) for v in range(256)] * 3  # PIL's per-channel lookup table for the outside
STRIP = 256  # output rows computed at once: bounds the float32 scratch to 2 x STRIP x width x 4 bytes


def shrink(image: Image.Image, max_size: int) -> Image.Image:
    """The image scaled down so that its long side is at most `max_size` pixels (0: as it is), aspect kept.
    A drawing copy: the frame is the same, so the photo's CropGeometry still maps onto it (see `overlay`)."""
    scale = max_size / max(image.width, image.height) if max_size else 1.0
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.BICUBIC, reducing_gap=1.5)  # a fast box pre-shrink first: half the time


def heat_levels(grid: np.ndarray, geometry: CropGeometry, width: int, height: int
                ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The min-max normalised grid as 8-bit heat levels over the part of a width x height picture of the
    photo that the model saw, bilinear between patch centres exactly as `grid_to_image` (the same
    `_sampling` weights, summed in float32 a strip of rows at a time: no full-size float array).

    Returns:
        (levels (y1 - y0, x1 - x0) uint8, round(255 * heat); box (x0, y0, x1, y1), the pixels inside the
        crop).
    """
    grid = normalise(grid)
    low, frac, in_y = _axis(height, geometry.resized_height, geometry.top, geometry.size, grid.shape[0])
    wx, in_x = _sampling(width, geometry.resized_width, geometry.left, geometry.size, grid.shape[1], True)
    ys, xs = np.flatnonzero(in_y), np.flatnonzero(in_x)  # each a run of consecutive pixels (monotonic map)
    if not len(ys) or not len(xs):
        return np.zeros((0, 0), np.uint8), (0, 0, 0, 0)
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    # The horizontal pass once, on the grid's rows, in levels; padded with a copy of the last row so the
    # upper tap of a one-row grid exists (its weight is 0). Then the vertical pass, two taps per output row,
    # a strip at a time, in numpy on this thread (no BLAS or torch thread pool: drawing runs beside the
    # model).
    columns = (grid @ wx[x0:x1].T * 255).astype(np.float32)  # (cells, x1 - x0)
    columns = np.concatenate([columns, columns[-1:]])
    low, frac = low[y0:y1], frac[y0:y1, None].astype(np.float32)
    levels = np.empty((y1 - y0, x1 - x0), np.uint8)
    for top in range(0, y1 - y0, STRIP):
        rows = slice(top, top + STRIP)
        a, b = columns[low[rows]], columns[low[rows] + 1]
        b -= a
        b *= frac[rows]
        b += a  # a + frac * (b - a): in [0, 255] (convex)
        b += 0.5
        levels[rows] = b  # + 0.5, then truncation: the nearest level
    return levels, (x0, y0, x1, y1)


def overlay(original: Image.Image, grid: np.ndarray, geometry: CropGeometry, alpha: float = ALPHA
            ) -> Image.Image:
    """The photo with the min-max normalised map blended over what the model saw and the rest dimmed.

    Args:
        original: the photo as loaded (RGB, before preprocessing), or a copy of it at another size (`shrink`):
            the geometry maps the photo's frame, so any scale of it is drawn in place.
        grid: relevance over the patch grid (any scale).
        geometry: the photo's CropGeometry.
        alpha: weight of the heat colours over the photo.
    Returns:
        An RGB image of `original`'s size: heat colours from the 256-entry `COLOURS` table, blended in 8 bits.
    """
    return next(overlays(original, [grid], geometry, alpha))


def overlays(original: Image.Image, grids, geometry: CropGeometry, alpha: float = ALPHA
             ) -> Iterator[Image.Image]:
    """`overlay` for each grid in turn, the work they share (the dimmed photo, the crop) done once."""
    photo = original if original.mode == "RGB" else original.convert("RGB")
    dimmed = photo.point(DIMMED)
    seen = None  # the photo inside the crop, cut at the first grid that has one
    for grid in grids:
        levels, box = heat_levels(grid, geometry, photo.width, photo.height)
        out = dimmed.copy()
        if levels.size:
            seen = photo.crop(box) if seen is None else seen  # the same box for every grid
            heat = Image.fromarray(levels, "P")
            heat.putpalette(COLOURS.tobytes())  # the table as the palette: one lookup per pixel, in PIL
            out.paste(Image.blend(seen, heat.convert("RGB"), alpha), box[:2])
        yield out


# The contact sheet's layout. Every size below is fixed, so the sheet is bounded whatever the photo's aspect
# ratio and however many texts are given: at most SHEET_TEXTS panels of PANEL x PANEL pixels, COLUMNS a row.
PANEL = 256  # each picture fits a PANEL x PANEL box, aspect kept, at least 1 pixel a side
COLUMNS = 6  # panels per row (the photo, then one per text), rows wrap
SHEET_TEXTS = 47  # texts drawn on one sheet (8 rows); the rest only as overlay files, as the sheet says
WORD_ROWS = 12  # words listed under a panel; more are counted on a last row ("... 5 more")
GAP = 8  # pixels between panels and around the sheet
LINE = 14  # pixels per text line of PIL's default font, with spacing
BACKGROUND = (24, 24, 24)
INK = (235, 235, 235)
AGAINST = (90, 160, 255)  # words that speak against the text (signed scores): a cool blue, not on inferno
WORD_SCALE = "relevance / the text's largest |relevance|"  # what `word_scale` gives, as the sheet and CLI say


def word_scale(scores) -> np.ndarray:
    """Word relevance divided by the text's largest |relevance|: values in [-1, 1], 1 (or -1) for the word
    that mattered most, the sign kept (negative: evidence against the text, with signed=True). All zero stays
    zero. The one scale for words, in the terminal and on the sheet."""
    scores = np.asarray(scores, dtype=np.float64)
    top = np.abs(scores).max() if scores.size else 0.0
    return scores / top if top > 0 else np.zeros_like(scores)


def word_colour(value: float) -> tuple[int, int, int]:
    """A word's shade for a `word_scale` value: inferno for evidence for the text, a blue ramp from the
    background for evidence against it, so the two never look alike."""
    if value >= 0:
        return tuple(int(c) for c in colormap(np.array(value)))
    return tuple(round(b + min(1.0, -value) * (a - b)) for a, b in zip(AGAINST, BACKGROUND))


def fit(image: Image.Image, box: int = PANEL) -> Image.Image:
    """The image scaled to fit a box x box square, aspect ratio kept, at least 1 pixel on each side."""
    scale = box / max(image.width, image.height)
    size = (max(1, min(box, round(image.width * scale))), max(1, min(box, round(image.height * scale))))
    return image.resize(size, Image.BILINEAR)


def clip_text(text: str, font, width: float, keep: str = "") -> str:
    """`text` + `keep` cut with an ellipsis so that it is at most `width` pixels wide; `keep` (a probability,
    a score) always stays whole at the end."""
    if font.getlength(text + keep) <= width:
        return text + keep
    # The longest fitting prefix, by bisection: a text may be thousands of characters.
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if font.getlength(text[:mid] + "…" + keep) <= width else (low, mid - 1)
    return text[:low] + "…" + keep


def _word_lines(words: list[tuple[str, float]]) -> list[tuple[str, Optional[float]]]:
    """The rows under a panel: (word, scaled score), at most WORD_ROWS, then '... N more' if cut."""
    values = word_scale([s for _, s in words])
    rows = [(word, float(v)) for (word, _), v in zip(words[:WORD_ROWS], values)]
    if len(words) > WORD_ROWS:
        rows.append((f"… {len(words) - WORD_ROWS} more", None))
    return rows


def contact_sheet(original: Image.Image, overlays: list[Image.Image], titles: list[tuple[str, str]],
                  tokens: list[list[tuple[str, float]]]) -> Image.Image:
    """The photo, then one overlay per text titled with its text and score, and under each overlay the
    prompt's words shaded and numbered by `word_scale` (relevance / the text's largest |relevance|).

    Bounded whatever the input: each picture fits a PANEL x PANEL box, panels wrap COLUMNS to a row, at most
    SHEET_TEXTS texts are drawn (a last line counts the others) and at most WORD_ROWS words per text.

    Args:
        original: the photo.
        overlays: one overlay per text (from `overlay`), at any size, or only the first SHEET_TEXTS of them
            (the others are not drawn).
        titles: per overlay, (text, score) drawn on one line, e.g. ('a dog', '  p=0.93'); the text is cut
            with an ellipsis to the panel's width, the score always shown. Both single-line strings.
        tokens: per text, (token, relevance) pairs, relevance as computed (any scale, signed or not).
    Returns:
        The sheet, an RGB image.
    """
    font = ImageFont.load_default()
    drawn = overlays[:SHEET_TEXTS]
    pictures = [fit(original)] + [fit(o) for o in drawn]
    word_rows = [_word_lines(t) for t in tokens[:SHEET_TEXTS]]
    picture_height = max(p.height for p in pictures)  # at most PANEL; less for wide photos
    row_height = LINE + picture_height + GAP + LINE * max((len(r) for r in word_rows), default=0) + GAP
    columns = min(COLUMNS, len(pictures))
    rows = -(-len(pictures) // columns)
    footer = [f"+ {len(titles) - len(drawn)} more texts, not drawn here: see their overlay files"] \
        if len(titles) > len(drawn) else []
    against = any(value is not None and value < 0 for rows in word_rows for _, value in rows)
    footer.append(f"words: {WORD_SCALE} (1.00: the word that mattered most)"
                  + ("; blue: against the text" if against else ""))
    width = GAP + columns * (PANEL + GAP)
    sheet = Image.new("RGB", (width, GAP + rows * row_height + LINE * len(footer)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for k, picture in enumerate(pictures):
        x = GAP + (k % columns) * (PANEL + GAP)
        y = GAP + (k // columns) * row_height
        sheet.paste(picture, (x, y + LINE))
        title = ("original", "") if k == 0 else titles[k - 1]
        draw.text((x, y), clip_text(title[0], font, PANEL, title[1]), fill=INK, font=font)
        for row, (word, value) in enumerate(word_rows[k - 1] if k else []):
            top = y + LINE + picture_height + GAP + row * LINE
            if value is None:  # the '... N more' row
                draw.text((x, top), word, fill=INK, font=font)
                continue
            draw.rectangle((x, top, x + 10, top + 10), fill=word_colour(value))
            draw.text((x + 16, top), clip_text(word, font, PANEL - 16, f"  {value:.2f}"), fill=INK, font=font)
    for n, text in enumerate(footer):
        draw.text((GAP, GAP + rows * row_height + n * LINE), clip_text(text, font, width - 2 * GAP), fill=INK,
                  font=font)
    return sheet
