"""Relevance grids drawn over the original photo: geometry, blending and colours, checked from first principles.

The expected geometry is worked out here, not taken from mini_clip: OpenAI's preprocessing resizes the short
side to `size` and the long side to int(size * long / short), then cuts a centre square at
int(round((resized - size) / 2)). Cell (r, c) of a g x g grid covers crop pixels [c * size / g, (c + 1) * size / g)
across and the same with r down; a crop pixel position p maps back to the original at
(offset + p) * original / resized. A pixel of the original belongs to the cell its centre falls in.
"""
import numpy as np
import pytest
from PIL import Image

from mini_clip import CropGeometry, preprocess
from mini_clip.heatmap import ALPHA, DIM, colormap, grid_to_image, overlay

# matplotlib's inferno at 0 and at 1: (0.001462, 0.000466, 0.013866) and (0.988362, 0.998364, 0.644924) x 255
INFERNO_FIRST = (0, 0, 4)
INFERNO_LAST = (252, 255, 164)


def expected_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of torchvision's Resize(size) + CenterCrop(size)."""
    short, long = min(width, height), max(width, height)
    resized_long = int(size * long / short)
    rw, rh = (size, resized_long) if width <= height else (resized_long, size)
    return rw, rh, int(round((rw - size) / 2)), int(round((rh - size) / 2))


def cell_span(k: int, cells: int, size: int, offset: int, resized: int, original: int) -> tuple[float, float]:
    """Cell k's extent along one axis in original-image coordinates (edges)."""
    return ((offset + k * size / cells) * original / resized, (offset + (k + 1) * size / cells) * original / resized)


def crop_span(size: int, offset: int, resized: int, original: int) -> tuple[float, float]:
    return offset * original / resized, (offset + size) * original / resized


def axis_mask(n: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centre lies in [lo, hi): (surely in: more than one pixel inside the edges; surely out:
    more than one pixel outside them). The pixels in between are the 1-pixel tolerance at the edges."""
    centre = np.arange(n) + 0.5
    return (centre >= lo + 1) & (centre < hi - 1), (centre < lo - 1) | (centre >= hi + 1)


# (width, height, size, grid): landscape and portrait, odd sizes, up- and downscaling, offsets from .5 rounding
CASES = [(120, 80, 32, 4), (80, 120, 32, 4), (640, 427, 224, 7), (300, 533, 224, 14), (101, 77, 56, 7),
         (53, 37, 16, 2), (37, 530, 56, 7)]


def geometry_of(width: int, height: int, size: int) -> CropGeometry:
    _, g = preprocess(Image.new("RGB", (width, height)), size, return_geometry=True)
    assert (g.resized_width, g.resized_height, g.left, g.top) == expected_geometry(width, height, size)
    return g


@pytest.mark.parametrize("width, height, size, cells", CASES)
def test_one_hot_cell_lights_its_rectangle(width, height, size, cells):
    g = geometry_of(width, height, size)
    rw, rh, left, top = expected_geometry(width, height, size)
    for r, c in {(0, 0), (cells - 1, cells - 1), (0, cells - 1), (cells // 2, cells // 3)}:
        grid = np.zeros((cells, cells))
        grid[r, c] = 1.0
        values, inside = grid_to_image(grid, g, smooth=False)
        assert values.shape == inside.shape == (height, width)
        x_in, x_out = axis_mask(width, *cell_span(c, cells, size, left, rw, width))
        y_in, y_out = axis_mask(height, *cell_span(r, cells, size, top, rh, height))
        surely_lit = y_in[:, None] & x_in[None, :]
        surely_dark = y_out[:, None] | x_out[None, :]
        assert surely_lit.any(), "the test's rectangle is too thin to check"
        assert np.all(values[surely_lit] == 1.0), (r, c)
        assert np.all(values[surely_dark] == 0.0), (r, c)
        assert set(np.unique(values)) <= {0.0, 1.0}  # flat: one value per cell

        smooth, _ = grid_to_image(grid, g, smooth=True)
        y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
        (x0, x1), (y0, y1) = cell_span(c, cells, size, left, rw, width), cell_span(r, cells, size, top, rh, height)
        assert x0 - 1 <= x + 0.5 <= x1 + 1 and y0 - 1 <= y + 0.5 <= y1 + 1, ((r, c), (x, y))
        assert 0.5 < smooth.max() <= 1.0 and smooth.min() >= 0.0  # bilinear between cell centres


@pytest.mark.parametrize("width, height, size, cells", CASES)
def test_pixels_outside_the_crop_are_not_inside_and_carry_nothing(width, height, size, cells):
    g = geometry_of(width, height, size)
    rw, rh, left, top = expected_geometry(width, height, size)
    x_in, x_out = axis_mask(width, *crop_span(size, left, rw, width))
    y_in, y_out = axis_mask(height, *crop_span(size, top, rh, height))
    grid = np.random.default_rng(0).random((cells, cells)) + 0.5  # positive everywhere inside
    for smooth in (False, True):
        values, inside = grid_to_image(grid, g, smooth=smooth)
        outside = y_out[:, None] | x_out[None, :]
        assert not inside[outside].any() and np.all(values[outside] == 0.0)
        surely_in = y_in[:, None] & x_in[None, :]
        assert inside[surely_in].all() and np.all(values[surely_in] > 0)
        assert np.all(values[~inside] == 0.0)
    if width != height:  # a non-square photo has pixels the model never saw
        assert (~inside).any()


def test_crop_box_agrees_with_the_inside_mask():
    for width, height, size, _ in CASES:
        g = geometry_of(width, height, size)
        rw, rh, left, top = expected_geometry(width, height, size)
        want = (*crop_span(size, left, rw, width)[:1], *crop_span(size, top, rh, height)[:1],
                crop_span(size, left, rw, width)[1], crop_span(size, top, rh, height)[1])
        assert g.crop_box() == pytest.approx(want)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(30, 226, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("width, height, size, cells", [(120, 80, 32, 4), (80, 120, 32, 4), (300, 533, 224, 7)])
def test_overlay_keeps_the_size_dims_outside_and_blends_inside(width, height, size, cells):
    original = photo(width, height)
    g = geometry_of(width, height, size)
    rw, rh, left, top = expected_geometry(width, height, size)
    grid = np.random.default_rng(1).random((cells, cells))
    out = overlay(original, grid, g)
    assert out.size == original.size and out.mode == "RGB"
    got, src = np.asarray(out, dtype=np.float64), np.asarray(original, dtype=np.float64)
    x_in, x_out = axis_mask(width, *crop_span(size, left, rw, width))
    y_in, y_out = axis_mask(height, *crop_span(size, top, rh, height))
    outside = y_out[:, None] | x_out[None, :]
    assert outside.any()
    assert np.abs(got[outside] - DIM * src[outside]).max() <= 1
    inside = y_in[:, None] & x_in[None, :]
    assert (np.abs(got[inside] - src[inside]).max(axis=-1) > 0).mean() > 0.95  # a blend, not the photo
    assert (np.abs(got[inside] - DIM * src[inside]).max(axis=-1) > 1).mean() > 0.95  # and not dimmed


def test_overlay_of_a_constant_grid_is_the_photo_half_blended_with_the_coldest_colour():
    """No preference anywhere: normalised to zeros, coloured with inferno's first colour, blended 1:1."""
    original = photo(90, 60, seed=2)
    g = geometry_of(90, 60, 32)
    out = np.asarray(overlay(original, np.full((4, 4), 0.3), g), dtype=np.float64)
    src = np.asarray(original, dtype=np.float64)
    rw, rh, left, top = expected_geometry(90, 60, 32)
    x_in, _ = axis_mask(90, *crop_span(32, left, rw, 90))
    y_in, _ = axis_mask(60, *crop_span(32, top, rh, 60))
    inside = y_in[:, None] & x_in[None, :]
    want = (1 - ALPHA) * src + ALPHA * np.array(INFERNO_FIRST, dtype=np.float64)
    assert ALPHA == 0.5  # the original notebook's 1:1 blend
    assert np.abs(out[inside] - want[inside]).max() <= 1


def test_colormap_endpoints_are_infernos():
    assert tuple(colormap(np.array(0.0))) == INFERNO_FIRST
    assert tuple(colormap(np.array(1.0))) == INFERNO_LAST
    assert tuple(colormap(np.array(-3.0))) == INFERNO_FIRST and tuple(colormap(np.array(7.0))) == INFERNO_LAST
    out = colormap(np.zeros((2, 3, 5)))
    assert out.shape == (2, 3, 5, 3) and out.dtype == np.uint8


def test_colormap_lightness_rises_steadily():
    """More relevance always reads as brighter: relative luminance (Rec. 709 weights on linearised sRGB)
    increases along t; within a level of rounding step to step, strictly over every eighth of the range."""
    t = np.linspace(0, 1, 1025)
    rgb = colormap(t).astype(np.float64) / 255
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) >= -0.002)
    coarse = luminance[::128]
    assert np.all(np.diff(coarse) > 0)
    assert luminance[0] < 0.01 and luminance[-1] > 0.9
