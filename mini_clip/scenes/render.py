"""A seeded synthetic world of flat coloured shapes, with a ground-truth mask for every object.

It is (1) training data for the tiny CLIP that ships as mini_clip's default model (`captions.sample_batch`
puts hard negatives such as "a red star" / "a red circle" / "a blue star" in one batch) and (2) ground truth
for explanations: an object's `mask` says where "a red star" is, so a relevance map can be scored by the
pointing game (does its arg-max cell lie on the mask?).

A scene holds 1-4 non-overlapping shapes on a background drawn by its `World` (WORLDS): "wide" (the default:
solid, gradient, noisy and cloudy backgrounds from black to mid-grey, objects 10-40 % of the side),
"textured" (the embedded model's last training world: wide's backgrounds plus random strokes and flat
polygonal cells, edges that belong to no object), two worlds no training sees: "held-out" (stripes and
checkerboards, to measure generalisation) and "held-out-val" (concentric rings and smooth plaids, for
choices between models, so that the held-out world only measures), and "dark" (the first embedded model's
narrower world: dark backgrounds, objects 15-35 %). Shapes are drawn at
SUPERSAMPLE times the output resolution and box-filtered down, so edges are anti-aliased. The coverage of a
pixel is the fraction of it the shape covers; the pixel is `background * (1 - coverage) + colour * coverage`,
and the object's mask is `coverage >= 0.5`. Pixels of partial coverage below 0.5 lie on the mask's border
(within two pixels of it), and every other pixel outside all masks is pure background. Objects keep MARGIN
pixels of pure background between their partially covered borders, so no pixel mixes two objects.

Everything is drawn from a `numpy.random.Generator`, so a seed fixes pixels, masks and captions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Fixed, mutually distinct colours. Each has a channel >= 190 (and keeps one >= 160 after jitter), so it
# stands out from the backgrounds, whose channels all stay <= 128 (World.background_max); colours that
# neighbour on the hue wheel (red/orange/yellow, blue/purple) differ by >= 80 in some channel.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 220, 50),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon")
PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)  # all 35 nameable objects

@dataclass(frozen=True)
class World:
    """How a family of scenes is drawn.

    `backgrounds` are the kinds drawn (gradients run along the named axis); every background channel stays
    <= `background_max` (of 255), below every object colour's brightest channel (>= 160 after jitter), so
    an object always stands out; `size_range` is an object's diameter (its circumscribed circle) as a
    fraction of the image side; a `held_out` world is never trained on (scripts/train_scenes.py refuses it).
    """

    name: str
    backgrounds: tuple[str, ...]
    background_max: int
    size_range: tuple[float, float]
    held_out: bool = False


WORLDS: dict[str, World] = {
    # The first embedded model's world. Below ~10 px (0.15 of 64) a star, hexagon and circle blur together.
    "dark": World("dark", ("solid", "vertical", "horizontal", "noise"), 79, (0.15, 0.35)),
    # Training's world since: up to mid-grey, low-frequency "clouds" texture, objects from 6 px (at 64) up.
    "wide": World("wide", ("solid", "vertical", "horizontal", "noise", "clouds"), 128, (0.10, 0.40)),
    # "wide" plus backgrounds with edges that belong to no object: random strokes ("lines") and flat
    # polygonal regions ("cells"). Families apart from the held-out world's periodic stripes and checks.
    "textured": World("textured", ("solid", "vertical", "horizontal", "noise", "clouds", "lines", "cells"),
                      128, (0.10, 0.40)),
    # Never used for training: background families with edges of their own, to test generalisation.
    "held-out": World("held-out", ("stripes", "checker"), 128, (0.10, 0.40), held_out=True),
    # Never used for training either, and apart from "held-out": the variant choices between models may look
    # at (the held-out world only measures the model chosen).
    "held-out-val": World("held-out-val", ("rings", "plaid"), 128, (0.10, 0.40), held_out=True),
}
DEFAULT_WORLD = "wide"
BACKGROUNDS: tuple[str, ...] = tuple(dict.fromkeys(k for w in WORLDS.values() for k in w.backgrounds))
# an object's RGB is scaled by one factor from this range: varied, unambiguous
BRIGHTNESS_JITTER = (0.85, 1.0)
MAX_OBJECTS = 4
MIN_SIZE = 32  # smallest image side: at 0.10 * 32 = 3.2 px a shape still covers whole pixels
SUPERSAMPLE = 4  # draw at 4x and box-filter down: 17 coverage levels per pixel
MARGIN = 1  # pixels of pure background kept between any two objects
PLACEMENT_TRIES = 30  # random placements tried per object before the scene settles for fewer objects
# inner / outer radius of the 5-point star; fatter than the regular 0.38 to stay legible small
STAR_INNER = 0.45
# Where the first vertex sits (radians, image y points down): triangle and star point up, the square is
# axis-aligned and the hexagon has a flat top at angle 0.
_FIRST_VERTEX = {"square": math.pi / 4, "triangle": -math.pi / 2, "star": -math.pi / 2, "hexagon": 0.0}
_CORNERS = {"square": 4, "triangle": 3, "star": 10, "hexagon": 6}  # the star alternates outer and inner


def caption(colour: str, shape: str) -> str:
    """The caption naming one object, e.g. `caption("red", "star") == "a red star"`."""
    return f"a {colour} {shape}"


@dataclass(frozen=True, eq=False)
class Obj:
    """One drawn object.

    `mask` is a bool (H, W) array at the image's size (True where coverage >= 0.5); `centre` is (x, y) in
    pixels, pixel (i, j) spanning [j, j+1) x [i, i+1); `size` is the diameter of the circumscribed circle in
    pixels; `angle` is the rotation in degrees (0 for circles); `rgb` is the colour as drawn, after jitter.
    """

    colour: str
    shape: str
    mask: np.ndarray
    centre: tuple[float, float]
    size: float
    angle: float
    rgb: tuple[int, int, int]

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape)


@dataclass(frozen=True, eq=False)
class Scene:
    """An RGB image, its objects (in drawing order) and the kind of background (one of its world's)."""

    image: Image.Image
    objects: list[Obj]
    background: str

    @property
    def captions(self) -> list[str]:
        return [o.caption for o in self.objects]


def _outline(shape: str, angle: float) -> np.ndarray:
    """Vertices of a polygon shape with circumradius 1, rotated by `angle` degrees: (k, 2) as (x, y)."""
    k = _CORNERS[shape]
    theta = _FIRST_VERTEX[shape] + math.radians(angle) + 2 * math.pi * np.arange(k) / k
    radius = np.where(np.arange(k) % 2 == 1, STAR_INNER, 1.0) if shape == "star" else np.ones(k)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)


def _coverage(shape: str, centre: tuple[float, float], diameter: float, angle: float,
              size: int) -> np.ndarray:
    """Fraction of each output pixel that the shape covers: (size, size) float32 in [0, 1]."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    # PIL, like us, puts pixel k at [k, k+1), so coordinates just scale by s. It also fills the outline,
    # widening a shape by about half a fine pixel: shrink the radius by that much (areas then agree to ~1 %).
    cx, cy = centre[0] * s, centre[1] * s
    r = diameter / 2 * s - 0.5
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon([(cx + r * x, cy + r * y) for x, y in _outline(shape, angle)], fill=255)
    return np.asarray(canvas.reduce(s), dtype=np.float32) / 255  # reduce() is a box filter


def get_world(world: str | World) -> World:
    """A World, or the one of WORLDS with that name."""
    if isinstance(world, World):
        return world
    if not isinstance(world, str) or world not in WORLDS:  # a name may come from a weights file: untrusted
        raise ValueError(f"unknown world {world!r:.40}; choose one of {', '.join(WORLDS)}")
    return WORLDS[world]


def _background(rng: np.random.Generator, kind: str, size: int, top: int) -> np.ndarray:
    """A background of the given kind: (size, size, 3) float32, every channel in [0, top]."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # pixel centres, for the kinds drawn by geometry
    if kind == "noise":
        image = rng.uniform(10, top - 29, 3) + rng.normal(0, 10, (size, size, 3))
    elif kind == "clouds":  # smooth blobs: a coarse random grid upsampled bicubically, plus a little grain
        coarse = rng.uniform(0, top, (int(rng.integers(3, 8)),) * 2 + (3,)).astype(np.float32)
        smooth = [np.asarray(Image.fromarray(coarse[..., c], "F").resize((size, size), Image.BICUBIC))
                  for c in range(3)]
        image = np.stack(smooth, axis=-1) + rng.normal(0, 4, (size, size, 3))
    elif kind == "lines":  # 3-12 straight strokes across the image, any angle, 1-5 px wide, on a flat colour
        image = np.broadcast_to(rng.uniform(0, top, 3), (size, size, 3)).copy()
        for _ in range(int(rng.integers(3, 13))):
            (px, py), theta = rng.uniform(0, size, 2), rng.uniform(0, np.pi)
            width = rng.uniform(1, 5) * size / 64
            on = np.abs((xx - px) * np.sin(theta) - (yy - py) * np.cos(theta)) < width / 2
            image[on] = rng.uniform(0, top, 3)
    elif kind == "cells":  # 3-9 flat regions, each the pixels nearest one random site (straight edges)
        sites = rng.uniform(0, size, (int(rng.integers(3, 10)), 2))
        colours = rng.uniform(0, top, (len(sites), 3))
        nearest = ((xx[..., None] - sites[:, 0]) ** 2 + (yy[..., None] - sites[:, 1]) ** 2).argmin(-1)
        image = colours[nearest]
    elif kind == "rings":  # two colours in concentric bands around a random point
        a, b = rng.uniform(0, top, (2, 3))
        period = rng.uniform(0.08, 0.25) * size
        cx, cy = rng.uniform(0, size, 2)
        image = np.where((np.hypot(xx - cx, yy - cy) % period < period / 2)[..., None], a, b)
    elif kind == "plaid":  # two smooth sinusoidal gratings at random angles, between two colours
        a, b = rng.uniform(0, top, (2, 3))
        t = np.zeros((size, size))
        for theta, period in zip(rng.uniform(0, np.pi, 2), rng.uniform(0.08, 0.25, 2) * size):
            t += np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) / 4
        image = a + (b - a) * (t[..., None] + 0.5)
    elif kind in ("stripes", "checker"):  # two colours; stripes at any angle, checks axis-aligned
        a, b = rng.uniform(0, top, (2, 3))
        period = rng.uniform(0.08, 0.25) * size
        if kind == "stripes":
            theta = rng.uniform(0, np.pi)
            on = (xx * np.cos(theta) + yy * np.sin(theta)) % period < period / 2
        else:
            on = ((xx // (period / 2)) + (yy // (period / 2))) % 2 == 0
        image = np.where(on[..., None], a, b)
    else:
        start, end = rng.uniform(0, top, (2, 3))
        t = np.linspace(0, 1, size) if kind != "solid" else np.zeros(size)
        t = t[:, None, None] if kind == "vertical" else t[None, :, None]
        image = np.broadcast_to(start + (end - start) * t, (size, size, 3))
    return np.clip(image, 0, top).astype(np.float32)


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Grow a bool mask by r pixels in every direction (a (2r+1)^2 square neighbourhood)."""
    h, w = mask.shape
    p = np.pad(mask, r)
    k = 2 * r + 1
    return np.logical_or.reduce([p[dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)])


def _choose_pairs(rng: np.random.Generator, n: int, one_colour: bool, distinct_colours: bool,
                  anchor: tuple[str, str] | None) -> list[tuple[str, str]]:
    """n distinct (colour, shape) pairs obeying the flags; `anchor`, if given, comes first."""
    if anchor is not None and anchor not in PAIRS:
        raise ValueError(f"anchor {anchor!r} is not a (colour, shape) pair; colours are {list(COLOURS)}, "
                         f"shapes are {list(SHAPES)}")
    if one_colour and distinct_colours:
        raise ValueError("one_colour and distinct_colours exclude each other; set at most one of them")
    limit = len(SHAPES) if one_colour else len(COLOURS) if distinct_colours else len(PAIRS)
    if not 1 <= n <= limit:
        raise ValueError(f"n_objects is {n}; with one_colour={one_colour}, "
                         f"distinct_colours={distinct_colours} it must be between 1 and {limit}")
    colour = anchor[0] if anchor else list(COLOURS)[rng.integers(len(COLOURS))]  # used by one_colour
    chosen = [anchor] if anchor else []
    while len(chosen) < n:
        free = [p for p in PAIRS if p not in chosen]
        if one_colour:
            free = [(c, s) for c, s in free if c == colour and s not in {s2 for _, s2 in chosen}]
        if distinct_colours:
            free = [(c, s) for c, s in free if c not in {c2 for c2, _ in chosen}]
        chosen.append(free[rng.integers(len(free))])
    return chosen


def make_scene(rng: np.random.Generator | int | None = None, size: int = 64,
               n_objects: int | None = None, one_colour: bool = False, distinct_colours: bool = False,
               anchor: tuple[str, str] | None = None, world: str | World = DEFAULT_WORLD) -> Scene:
    """Draw one scene of non-overlapping shapes on a background of its world.

    Args:
        rng: a numpy Generator (advanced in place) or a seed; the same seed gives the same scene.
        size: side of the square image in pixels (>= MIN_SIZE).
        n_objects: how many objects to try to place; None draws 1-4 (2-4 with one_colour). A crowded scene
            may hold fewer: after PLACEMENT_TRIES failed placements of an object, it and later ones are
            dropped.
        one_colour: all objects share one colour and have distinct shapes (only shape tells them apart).
        distinct_colours: all objects have distinct colours. Without either flag, (colour, shape) pairs are
            distinct but colours or shapes may repeat.
        anchor: the (colour, shape) of the first object, which is always placed (e.g. the one a caption
            names).
        world: a World or a name in WORLDS: backgrounds, their brightness and the objects' sizes.

    Returns:
        A Scene; each Obj's mask is True where its coverage is >= 0.5 (see the module docstring).
    """
    if size < MIN_SIZE:
        raise ValueError(f"size is {size}; scenes need at least {MIN_SIZE} px so the smallest shape stays "
                         "visible")
    rng = np.random.default_rng(rng)
    w = get_world(world)
    if n_objects is None:
        n_objects = int(rng.integers(2 if one_colour else 1, MAX_OBJECTS + 1))
    pairs = _choose_pairs(rng, n_objects, one_colour, distinct_colours, anchor)
    kind = w.backgrounds[rng.integers(len(w.backgrounds))]
    image = _background(rng, kind, size, w.background_max)
    occupied = np.zeros((size, size), dtype=bool)  # every object's partial coverage, grown by MARGIN
    objects: list[Obj] = []
    for colour, shape in pairs:
        for _ in range(PLACEMENT_TRIES):
            diameter = float(rng.uniform(*w.size_range)) * size
            x, y = rng.uniform(diameter / 2, size - diameter / 2, 2)  # the circumscribed circle fits inside
            angle = 0.0 if shape == "circle" else float(rng.uniform(0, 360))
            cover = _coverage(shape, (x, y), diameter, angle, size)
            if not (occupied & (cover > 0)).any():
                break
        else:
            break  # this object does not fit; the first always does, on an empty canvas
        brightness = rng.uniform(*BRIGHTNESS_JITTER)  # one factor for all channels keeps the hue
        rgb = tuple(int(round(v * brightness)) for v in COLOURS[colour])
        image = image * (1 - cover[..., None]) + np.array(rgb, dtype=np.float32) * cover[..., None]
        occupied |= _dilate(cover > 0, MARGIN)
        objects.append(Obj(colour, shape, cover >= 0.5, (float(x), float(y)), diameter, angle, rgb))
    return Scene(Image.fromarray(np.round(image).astype(np.uint8)), objects, kind)
