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


def _sampling(n_pixels: int, resized: int, offset: int, size: int, cells: int, smooth: bool):
    """For one axis: (weights (n_pixels, cells), inside (n_pixels,)). Pixel centre -> resized image ->
    crop -> grid coordinate, where cell k's centre is at k + 0.5; bilinear between centres, clamped at the
    crop's edges (align_corners=False), or the cell containing the point when not smooth."""
    crop = (np.arange(n_pixels) + 0.5) * resized / n_pixels - offset  # position in the crop, in pixels
    inside = (crop >= 0) & (crop < size)
    g = crop * cells / size  # in cells
    weights = np.zeros((n_pixels, cells))
    if smooth:
        g = np.clip(g - 0.5, 0, cells - 1)
        low = np.minimum(np.floor(g).astype(int), cells - 2) if cells > 1 else np.zeros(n_pixels, int)
        frac = g - low if cells > 1 else np.zeros(n_pixels)
        weights[np.arange(n_pixels), low] = 1 - frac
        if cells > 1:
            weights[np.arange(n_pixels), low + 1] += frac
    else:
        weights[np.arange(n_pixels), np.clip(np.floor(g).astype(int), 0, cells - 1)] = 1
    return weights * inside[:, None], inside


def grid_to_image(grid: np.ndarray, geometry: CropGeometry, smooth: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Map a (rows, cols) grid over the model's crop onto the original image.

    Args:
        grid: relevance per patch, row-major as the model's patch tokens.
        geometry: how the original became the model's input (from `preprocess(..., return_geometry=True)`).
        smooth: bilinear between patch centres (True) or one flat value per patch (False).
    Returns:
        (values (height, width), zero outside the crop; inside (height, width) bool: pixels the model saw).
    """
    grid = np.asarray(grid, dtype=np.float64)
    wy, in_y = _sampling(geometry.height, geometry.resized_height, geometry.top, geometry.size, grid.shape[0], smooth)
    wx, in_x = _sampling(geometry.width, geometry.resized_width, geometry.left, geometry.size, grid.shape[1], smooth)
    return wy @ grid @ wx.T, in_y[:, None] & in_x[None, :]


def overlay(original: Image.Image, grid: np.ndarray, geometry: CropGeometry, alpha: float = ALPHA) -> Image.Image:
    """The original photo, at its own size, with the min-max normalised map blended over what the model
    saw and the rest dimmed.

    Args:
        original: the photo as loaded (RGB, before preprocessing).
        grid: relevance over the patch grid (any scale).
        geometry: the photo's CropGeometry.
        alpha: weight of the heat colours over the photo.
    Returns:
        An RGB image of the photo's size.
    """
    heat, inside = grid_to_image(normalise(grid), geometry)
    photo = np.asarray(original.convert("RGB"), dtype=np.float64)
    blended = (1 - alpha) * photo + alpha * colormap(heat)
    out = np.where(inside[..., None], blended, DIM * photo)
    return Image.fromarray(np.rint(out).astype(np.uint8), "RGB")


def _fit(image: Image.Image, height: int) -> Image.Image:
    return image.resize((max(1, round(image.width * height / image.height)), height), Image.BILINEAR)


def contact_sheet(original: Image.Image, overlays: list[Image.Image], titles: list[str],
                  tokens: list[list[tuple[str, float]]], height: int = 256) -> Image.Image:
    """The photo, then one overlay per text titled with its text and probability, and under each overlay
    the prompt's tokens shaded by their relevance (divided by the text's largest, in the maps' colours).

    Args:
        original: the photo.
        overlays: one overlay per text (from `overlay`).
        titles: one title per overlay, e.g. 'a dog  p=0.93'.
        tokens: per text, (token, relevance) pairs.
        height: height of each picture in the sheet.
    Returns:
        The sheet, an RGB image.
    """
    font = ImageFont.load_default()
    pictures = [_fit(original, height)] + [_fit(o, height) for o in overlays]
    line = 14  # pixels per text line of PIL's default font, with spacing
    token_rows = max((len(t) for t in tokens), default=0)
    width = sum(p.width for p in pictures) + 8 * (len(pictures) + 1)
    sheet = Image.new("RGB", (width, height + line * (2 + min(token_rows, 12)) + 16), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    x = 8
    for k, picture in enumerate(pictures):
        sheet.paste(picture, (x, 8 + line))
        draw.text((x, 6), "original" if k == 0 else titles[k - 1], fill=(235, 235, 235), font=font)
        if k:
            scores = np.array([s for _, s in tokens[k - 1]])
            shades = colormap(scores / scores.max() if scores.size and scores.max() > 0 else scores)
            for row, ((word, _), shade) in enumerate(zip(tokens[k - 1][:12], shades)):
                y = 16 + line + height + row * line
                draw.rectangle((x, y, x + 10, y + 10), fill=tuple(int(c) for c in shade))
                draw.text((x + 16, y), word, fill=(235, 235, 235), font=font)
        x += picture.width + 8
    return sheet
