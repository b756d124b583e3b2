"""Relevance grids drawn over the original photo: geometry, blending and colours, checked from first
principles.

The expected geometry is worked out here, not taken from mini_clip: OpenAI's preprocessing resizes the short
side to `size` and the long side to int(size * long / short), then cuts a centre square at
int(round((resized - size) / 2)). Cell (r, c) of a g x g grid covers crop pixels
[c * size / g, (c + 1) * size / g) across and the same with r down; a crop pixel position p maps back to the
original at
(offset + p) * original / resized. A pixel of the original belongs to the cell its centre falls in.
"""
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image, ImageFont

from mini_clip import CropGeometry, preprocess
from mini_clip.heatmap import ALPHA, DIM, colormap, contact_sheet, grid_to_image, overlay

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
    start = (offset + k * size / cells) * original / resized
    end = (offset + (k + 1) * size / cells) * original / resized
    return start, end


def crop_span(size: int, offset: int, resized: int, original: int) -> tuple[float, float]:
    return offset * original / resized, (offset + size) * original / resized


def axis_mask(n: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centre lies in [lo, hi): (surely in: more than one pixel inside the edges; surely out:
    more than one pixel outside them). The pixels in between are the 1-pixel tolerance at the edges."""
    centre = np.arange(n) + 0.5
    return (centre >= lo + 1) & (centre < hi - 1), (centre < lo - 1) | (centre >= hi + 1)


# (width, height, size, grid): landscape and portrait, odd sizes, up- and downscaling, offsets from .5
# rounding
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
        x0, x1 = cell_span(c, cells, size, left, rw, width)
        y0, y1 = cell_span(r, cells, size, top, rh, height)
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


@pytest.mark.parametrize("width, height, size, cells",
                         [(120, 80, 32, 4), (80, 120, 32, 4), (300, 533, 224, 7)])
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


# ---------------------------------------------------------------------------------------------------------
# The contact sheet: bounded whatever the photo and the number of texts; titles and word lists that say
# when they are cut; one word scale for signed scores

BACKGROUND = (24, 24, 24)


def sheet_of(original: Image.Image, n_texts: int, n_words: int = 3, title: str = "a text",
             scores=None) -> Image.Image:
    overlays = [original] * n_texts
    titles = [(title, "  p=0.50")] * n_texts
    scores = [1.0] * n_words if scores is None else scores
    words = [[(f"w{k}", s) for k, s in enumerate(scores)]] * n_texts
    return contact_sheet(original, overlays, titles, words)


@pytest.mark.parametrize("size", [(10000, 1), (1, 10000), (5000, 3), (64, 48)])
def test_sheet_is_bounded_for_any_aspect_ratio_and_many_texts(size):
    """Each panel fits 256 x 256 and panels wrap into rows: a 10000 x 1 photo used to make every panel
    2,560,000 px wide. 100 texts of 40 words still give a sheet of a few million pixels, in seconds."""
    original = Image.new("RGB", size, (200, 40, 40))
    start = time.monotonic()
    sheet = sheet_of(original, 100, n_words=40)
    assert time.monotonic() - start < 10
    assert sheet.width <= 8 + 6 * (256 + 8) and sheet.height <= 8 * (14 + 256 + 8 + 14 * 13 + 8) + 8 + 3 * 14
    assert sheet_of(original, 2).width <= 8 + 3 * (256 + 8)  # few texts: a narrow sheet


def test_photo_panel_keeps_its_aspect_within_the_box():
    sheet = np.asarray(sheet_of(Image.new("RGB", (300, 100), (250, 0, 0)), 1))[:, :264]  # the first panel
    red = np.argwhere((sheet[..., 0] == 250) & (sheet[..., 1] == 0))
    height, width = red.max(axis=0) - red.min(axis=0) + 1
    assert (width, height) == (256, round(100 * 256 / 300))


def ink_columns(sheet: Image.Image, top: int, bottom: int) -> np.ndarray:
    """Columns with any pixel other than the background between rows top and bottom."""
    band = np.asarray(sheet)[top:bottom]
    return np.flatnonzero((np.abs(band.astype(int) - BACKGROUND).max(axis=-1) > 0).any(axis=0))


def test_long_titles_stop_at_their_panel_and_keep_the_probability():
    """A long title used to run over the next panel (and hide its probability)."""
    sheet = sheet_of(Image.new("RGB", (64, 64), (90, 90, 90)), 2, title="a very long text " * 20)
    ink = ink_columns(sheet, 0, 8 + 14)
    gaps = [(8 + k * 264 + 256, 8 + (k + 1) * 264) for k in range(3)]  # the 8-pixel gaps after each panel
    assert not any(((ink >= a) & (ink < b)).any() for a, b in gaps), ink
    from mini_clip.heatmap import clip_text  # new with the bounded sheet
    font = ImageFont.load_default()
    title = clip_text("a very long text " * 20, font, 256, "  p=0.93")
    assert title.endswith("…  p=0.93") and font.getlength(title) <= 256
    assert clip_text("short", font, 256, "  p=0.93") == "short  p=0.93"


def test_a_cut_word_list_says_how_many_words_are_left_out():
    """Words beyond the twelfth used to be dropped without a mark: now a last row counts them."""
    original = Image.new("RGB", (64, 64), (90, 90, 90))
    twelve, thirteen = sheet_of(original, 1, n_words=12), sheet_of(original, 1, n_words=13)
    assert thirteen.height == twelve.height + 14
    row = 8 + 14 + 256 + 8 + 12 * 14  # the 13th row under the panel
    ink = ink_columns(thirteen, row, row + 12)
    assert ink.size > 0 and 8 + 264 <= ink.min() < ink.max() < 8 + 2 * 264  # under the text's panel only
    assert ink_columns(twelve, row, row + 12).min() < 8 + 264  # there: the sheet's footer, from the left edge


def test_signed_word_shades_are_scaled_by_the_largest_magnitude_and_negatives_look_different():
    """Words of 'a yellow cross' scored [-0.04, 7.98, -6.95]: the strongest against the text (-6.95) must
    not share the colour of a weak word for it, nor be shaded as the strongest for it."""
    from mini_clip.heatmap import word_colour, word_scale  # new with the one word scale
    np.testing.assert_allclose(word_scale([-0.04, 7.98, -6.95]), [-0.04 / 7.98, 1.0, -6.95 / 7.98])
    np.testing.assert_array_equal(word_scale([0.0, 0.0]), [0.0, 0.0])
    inferno = colormap(np.linspace(0, 1, 1001)).astype(int)
    for value in (-0.5, -0.87, -1.0):
        distance = np.abs(inferno - np.array(word_colour(value))).sum(axis=1).min()
        assert distance > 60, (value, word_colour(value))  # far from every colour of the positive scale
    assert tuple(word_colour(1.0)) == INFERNO_LAST


def reference_overlay(original: Image.Image, grid: np.ndarray, width: int, height: int, size: int
                      ) -> np.ndarray:
    """The drawing as it was, in float64, worked out here: each pixel of a picture of the photo's frame
    (any scale) traced to the crop, the min-max normalised grid sampled bilinearly between cell centres
    (clamped at the crop's edges), coloured by the inferno scale, blended 1:1 inside the crop, dimmed
    outside."""
    rw, rh, left, top = expected_geometry(width, height, size)
    w, h = original.size
    cells = grid.shape[0]

    def axis(n, resized, offset):
        crop = (np.arange(n) + 0.5) * resized / n - offset
        g = np.clip(crop * cells / size - 0.5, 0, cells - 1)
        low = np.minimum(np.floor(g).astype(int), cells - 2)
        return low, g - low, (crop >= 0) & (crop < size)

    (ly, fy, iny), (lx, fx, inx) = axis(h, rh, top), axis(w, rw, left)
    g = (grid - grid.min()) / (grid.max() - grid.min())
    rows = g[ly] * (1 - fy)[:, None] + g[ly + 1] * fy[:, None]  # (h, cells)
    heat = rows[:, lx] * (1 - fx) + rows[:, lx + 1] * fx  # (h, w)
    photo = np.asarray(original, dtype=np.float64)
    blended = (1 - ALPHA) * photo + ALPHA * colormap(heat)
    return np.where((iny[:, None] & inx[None, :])[..., None], blended, DIM * photo)


@pytest.mark.parametrize("width, height, size, cells, scale", [
    (120, 80, 32, 4, 1), (80, 120, 32, 4, 1), (640, 427, 224, 7, 1), (301, 533, 224, 14, 1),
    (53, 37, 16, 2, 1), (37, 530, 56, 7, 1), (640, 427, 224, 7, 0.37), (301, 533, 224, 14, 0.5)])
def test_overlay_equals_the_float64_drawing_within_one_colour_level(width, height, size, cells, scale):
    """The 8-bit drawing (heat levels, a 256-entry table, PIL's blend) against the float64 one, at the photo's
    size and on a smaller copy of it (--max-size): the geometry is the same, the outside as dimmed. One level
    of 256 moves an inferno channel by at most 61 * 8 / 255 < 2 (its steepest eighth: 140 -> 201), halved by
    the 1:1 blend, plus one for rounding: 2."""
    original = photo(width, height, seed=3)
    g = geometry_of(width, height, size)
    grid = np.random.default_rng(4).random((cells, cells))
    picture = original if scale == 1 else original.resize((round(width * scale), round(height * scale)))
    got = np.asarray(overlay(picture, grid, g), dtype=np.float64)
    want = reference_overlay(picture, grid, width, height, size)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 2


def test_overlay_of_a_large_photo_makes_no_full_size_float_array():
    """The float64 drawing held 8 bytes per channel and pixel several times over (7.7 GB peak for 48 MP):
    numpy allocations while drawing a 3 MP photo now stay below one float32 per pixel (tracemalloc counts
    numpy's, and Python's bytes): the 8-bit heat levels inside the crop, their copy handed to PIL, and two
    float32 strips of rows (about 2.9 bytes per pixel here). Measured in a fresh process: tracemalloc
    counts every thread's allocations, and other tests leave threads behind."""
    code = textwrap.dedent("""
        import time, tracemalloc
        import numpy as np
        from PIL import Image
        from mini_clip import preprocess
        from mini_clip.heatmap import overlay
        pixels = np.random.default_rng(5).integers(30, 226, (1500, 2000, 3), dtype=np.uint8)
        original = Image.fromarray(pixels)
        _, g = preprocess(original, 224, return_geometry=True)
        grid = np.random.default_rng(6).random((7, 7))
        tracemalloc.start()
        start = time.perf_counter()
        overlay(original, grid, g)
        print(tracemalloc.get_traced_memory()[1], time.perf_counter() - start)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    peak, seconds = out.stdout.split()
    assert int(peak) < 4 * 2000 * 1500, peak
    assert float(seconds) < 5  # about 0.05 s here; the float64 drawing took seconds
