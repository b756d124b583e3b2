"""Tests for the synthetic shapes world: determinism, masks against drawn pixels, hard negatives, batches.

Expected values come from the pixels and from counting, never from re-running mini_clip's own drawing code.
"""
import math
from collections import Counter

import numpy as np
import pytest

from mini_clip import scenes as S

SEEDS = range(60)
# Each world's promise, written here independently of the code: (smallest, largest object diameter as a
# fraction of the side, brightest background channel, background kinds).
WORLDS = {"dark": (0.15, 0.35, 79, {"solid", "vertical", "horizontal", "noise"}),
          "wide": (0.10, 0.40, 128, {"solid", "vertical", "horizontal", "noise", "clouds"}),
          "textured": (0.10, 0.40, 128, {"solid", "vertical", "horizontal", "noise", "clouds", "lines",
                                          "cells"}),
          "held-out": (0.10, 0.40, 128, {"stripes", "checker"}),
          "held-out-val": (0.10, 0.40, 128, {"rings", "plaid"})}
TRAINED_ON = ("dark", "wide", "textured")
# Area of each shape with circumradius 1: pi; a square of diagonal 2; 3 sqrt(3) / 4 for the equilateral
# triangle; 10 triangles of sides 1 and 0.45 at 36 degrees for the star; 6 equilateral triangles.
UNIT_AREA = {"circle": math.pi, "square": 2.0, "triangle": 3 * math.sqrt(3) / 4,
             "star": 10 * 0.5 * 0.45 * math.sin(math.pi / 5), "hexagon": 3 * math.sqrt(3) / 2}


def grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Independent square dilation (loops over offsets with explicit bounds), for checking masks."""
    out = mask.copy()
    ys, xs = np.nonzero(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            y, x = ys + dy, xs + dx
            keep = (y >= 0) & (y < mask.shape[0]) & (x >= 0) & (x < mask.shape[1])
            out[y[keep], x[keep]] = True
    return out


def shrink(mask: np.ndarray, r: int) -> np.ndarray:
    """Erosion by r pixels; outside the image counts as off the mask (a shape may touch the image's edge)."""
    return ~grow(~np.pad(mask, r), r)[r:-r, r:-r]


def test_same_seed_same_scene_and_different_seeds_differ():
    for size in (64, 96):
        a, b = S.make_scene(5, size=size), S.make_scene(np.random.default_rng(5), size=size)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.captions == b.captions and a.background == b.background
        assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.objects, b.objects))
    images = [np.asarray(S.make_scene(seed).image) for seed in range(10)]
    assert all(not np.array_equal(images[i], images[j]) for i in range(10) for j in range(i))
    x1, c1 = S.sample_batch(3, 16)
    x2, c2 = S.sample_batch(3, 16)
    x3, c3 = S.sample_batch(4, 16)
    assert np.array_equal(x1, x2) and c1 == c2
    assert not np.array_equal(x1, x3)


def test_worlds_are_the_promised_ones_and_the_default_is_wide():
    assert set(S.WORLDS) == set(WORLDS) and S.DEFAULT_WORLD == "wide"
    for name, (low, high, top, kinds) in WORLDS.items():
        assert S.WORLDS[name].size_range == (low, high) and S.WORLDS[name].background_max == top
        assert set(S.WORLDS[name].backgrounds) == kinds
        seen = {S.make_scene(seed, world=name).background for seed in range(80)}
        assert seen == kinds, (name, seen)
    # training never sees either held-out world's backgrounds, and the two held-out worlds share none
    trained = {kind for name in TRAINED_ON for kind in S.WORLDS[name].backgrounds}
    held_out, held_out_val = (set(S.WORLDS[name].backgrounds) for name in ("held-out", "held-out-val"))
    assert not held_out & trained and not held_out_val & trained and not held_out & held_out_val
    assert {name for name, w in S.WORLDS.items() if w.held_out} == set(WORLDS) - set(TRAINED_ON)
    with pytest.raises(ValueError, match="unknown world 'bright'; choose one of dark, wide, textured, "
                       "held-out, held-out-val"):
        S.make_scene(0, world="bright")
    # a name read from a weights file may be anything: refused in a line of bounded length, never a TypeError
    for name in (["wide"], {"wide": 1}, "w" * 10_000):
        with pytest.raises(ValueError, match="^unknown world ") as error:
            S.make_scene(0, world=name)
        assert len(str(error.value)) < 120


@pytest.mark.parametrize("size,world", [(64, "dark"), (64, "wide"), (64, "textured"), (64, "held-out"),
                                        (64, "held-out-val"), (224, "wide"), (224, "textured")])
def test_masks_match_pixels_and_do_not_overlap(size, world):
    low, high, top, kinds = WORLDS[world]
    for seed in SEEDS if size == 64 else range(6):
        scene = S.make_scene(seed, size=size, world=world)
        image = np.asarray(scene.image).astype(float)
        assert scene.image.mode == "RGB" and scene.image.size == (size, size)
        assert 1 <= len(scene.objects) <= 4 and scene.background in kinds
        union = np.zeros((size, size), dtype=int)
        for obj in scene.objects:
            assert obj.mask.shape == (size, size) and obj.mask.dtype == bool
            union += obj.mask
            base = np.array(S.COLOURS[obj.colour], dtype=float)
            rgb = np.array(obj.rgb, dtype=float)
            # the drawn colour is the named one scaled by a brightness factor of 0.85-1
            assert np.all(rgb <= base + 0.5) and np.all(rgb >= 0.85 * base - 0.5)
            brightness = rgb.max() / base.max()  # one factor for all channels: the hue is unchanged
            assert np.abs(rgb - brightness * base).max() <= 1, (obj.colour, obj.rgb)
            # pixels well inside the mask are exactly the object's colour; the whole mask is close to it
            core = shrink(obj.mask, 1)
            if core.any():
                assert np.abs(image[core] - rgb).max() <= 1
            assert np.abs(image[obj.mask].mean(0) - rgb).max() < 40
            # the nearest named colour of the mean inside the mask is the object's colour
            mean = image[obj.mask].mean(0)
            nearest = min(S.COLOURS, key=lambda c: np.abs(np.array(S.COLOURS[c]) * 0.92 - mean).sum())
            assert nearest == obj.colour, (seed, obj.caption, mean)
            # size: fraction of the side; the mask lies in the circumscribed circle's box (an interval of
            # length L meets at most ceil(L) + 1 pixels); its area is the shape's, up to the edge pixels
            assert low * size - 1e-6 <= obj.size <= high * size + 1e-6
            ys, xs = np.nonzero(obj.mask)
            span = math.ceil(obj.size) + 1
            assert xs.max() - xs.min() + 1 <= span and ys.max() - ys.min() + 1 <= span
            area = UNIT_AREA[obj.shape] * (obj.size / 2) ** 2
            assert abs(obj.mask.sum() - area) <= 0.2 * area, (seed, obj.shape, obj.mask.sum(), area)
            # the mask's centroid is the shape's centre (pixel j's centre is at j + 0.5)
            assert abs(xs.mean() + 0.5 - obj.centre[0]) < 1 and abs(ys.mean() + 0.5 - obj.centre[1]) < 1
            assert (obj.angle == 0) if obj.shape == "circle" else (0 <= obj.angle < 360)
        assert union.max() <= 1, "two masks overlap"
        # away from every object (2 px beyond the masks) there is only background, no brighter than promised
        outside = ~grow(union > 0, 2)
        assert image[outside].max() <= top


def test_objects_are_separated_by_background():
    for seed in SEEDS:
        masks = [o.mask for o in S.make_scene(seed, n_objects=4).objects]
        for i in range(len(masks)):
            for j in range(i):
                assert not (grow(masks[i], 1) & masks[j]).any()  # MARGIN px of background between


def test_pairs_are_distinct_and_flags_hold():
    for seed in SEEDS:
        pairs = [(o.colour, o.shape) for o in S.make_scene(seed).objects]
        assert len(set(pairs)) == len(pairs)
        one = S.make_scene(seed, one_colour=True)
        assert len(one.objects) >= 2  # 2-4 requested; placement never failed this early in practice
        assert len({o.colour for o in one.objects}) == 1
        assert len({o.shape for o in one.objects}) == len(one.objects)
        distinct = S.make_scene(seed, n_objects=4, distinct_colours=True)
        assert len({o.colour for o in distinct.objects}) == len(distinct.objects)
        anchored = S.make_scene(seed, anchor=("orange", "star"), one_colour=True)
        assert anchored.objects[0].caption == "a orange star"
        assert {o.colour for o in anchored.objects} == {"orange"}
    counts = Counter(len(S.make_scene(seed).objects) for seed in range(200))
    assert set(counts) == {1, 2, 3, 4}


def test_object_count_is_respected_or_reduced_never_exceeded():
    counts = [len(S.make_scene(seed, n_objects=4).objects) for seed in SEEDS]
    assert max(counts) == 4 and min(counts) >= 1
    assert sum(c == 4 for c in counts) > len(counts) // 2


def test_bad_arguments_raise_with_the_valid_choices():
    with pytest.raises(ValueError, match="between 1 and 5"):
        S.make_scene(0, n_objects=6, one_colour=True)
    with pytest.raises(ValueError, match="shapes are"):
        S.make_scene(0, anchor=("red", "oval"))
    with pytest.raises(ValueError, match="exclude each other"):
        S.make_scene(0, one_colour=True, distinct_colours=True)
    with pytest.raises(ValueError, match="at least 32"):
        S.make_scene(0, size=16)
    with pytest.raises(ValueError, match="'shape' or 'colour'"):
        scene = S.make_scene(0)
        S.hard_negatives(scene, scene.objects[0], swap="size")


def test_hard_negatives_are_absent_and_differ_in_one_attribute():
    for seed in SEEDS:
        scene = S.make_scene(seed, n_objects=4)
        present = set(scene.captions)
        for obj in scene.objects:
            by_shape = S.hard_negatives(scene, obj, "shape")
            by_colour = S.hard_negatives(scene, obj, "colour")
            assert by_shape and by_colour
            assert not present & (set(by_shape) | set(by_colour))
            assert all(c.startswith(f"a {obj.colour} ") and not c.endswith(f" {obj.shape}") for c in by_shape)
            assert all(c.endswith(f" {obj.shape}") and not c.startswith(f"a {obj.colour} ")
                       for c in by_colour)
            others = sum(o.colour == obj.colour for o in scene.objects) - 1
            assert len(by_shape) == len(S.SHAPES) - 1 - others


def test_sample_batch_shapes_captions_and_hard_negatives():
    images, captions = S.sample_batch(0, 32)
    assert images.shape == (32, 64, 64, 3) and images.dtype == np.uint8
    assert len(captions) == 32 and len(set(captions)) == 32
    scenes, captions = S.sample_scenes(0, 32)
    assert np.array_equal(np.stack([np.asarray(s.image) for s in scenes]), images)
    for scene, text in zip(scenes, captions):
        assert text in scene.captions
    matches = S.caption_matches(scenes, captions)
    assert matches.shape == (32, 32) and matches.diagonal().all()
    # one-colour scenes: the captioned object shares its colour with another object in its own image
    assert sum(len(s.objects) >= 2 and len({o.colour for o in s.objects}) == 1 for s in scenes) >= 3
    # small batches: hard negatives (same colour, other shape; same shape, other colour) are in the batch
    for seed in range(10):
        _, small = S.sample_batch(seed, 8)
        words = [c.split() for c in small]
        same_colour = sum(a[1] == b[1] and a[2] != b[2] for i, a in enumerate(words) for b in words[:i])
        same_shape = sum(a[2] == b[2] and a[1] != b[1] for i, a in enumerate(words) for b in words[:i])
        # a group of 4 alone gives 6 such pairs; 8 distinct captions drawn at random give about 3.3
        assert same_colour >= 6 and same_shape >= 6, small


def test_large_batches_repeat_captions_evenly_and_curriculum():
    _, captions = S.sample_batch(1, 100)
    assert max(Counter(captions).values()) <= math.ceil(100 / len(S.PAIRS))
    assert len(set(captions)) == len(S.PAIRS)
    scenes, _ = S.sample_scenes(2, 24, max_objects=1)
    assert all(len(s.objects) == 1 for s in scenes)
    scenes, _ = S.sample_scenes(2, 24, size=96, max_objects=2)
    assert all(1 <= len(s.objects) <= 2 and s.image.size == (96, 96) for s in scenes)
    with pytest.raises(ValueError, match="max_objects"):
        S.sample_batch(0, 4, max_objects=5)
