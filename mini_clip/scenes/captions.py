"""Captions and scenes: hard negatives, and contrastive training batches that hold them.

A caption names one object, "a {colour} {shape}" (`render.caption`). Its hard negatives change one word and
name no object of the scene; a training batch groups captions that share a colour or a shape, so each
caption's hard negatives are in the batch.
"""
from __future__ import annotations

import numpy as np

from .render import COLOURS, DEFAULT_WORLD, MAX_OBJECTS, PAIRS, SHAPES, Obj, Scene, World, caption, make_scene


def hard_negatives(scene: Scene, obj: Obj, swap: str = "shape") -> list[str]:
    """Captions that differ from `obj`'s in one attribute and name no object in the scene.

    Args:
        scene: the scene `obj` belongs to.
        obj: the object (colour c, shape s) the negatives are built from.
        swap: "shape" for (c, other shape), "colour" for (other colour, s).

    Returns:
        The captions, in SHAPES or COLOURS order. "Absent" means no object has that (colour, shape) pair; the
        other shape or colour may still appear on another object, a harder negative that tests binding.
    """
    present = {(o.colour, o.shape) for o in scene.objects}
    if swap == "shape":
        candidates = [(obj.colour, s) for s in SHAPES if s != obj.shape]
    elif swap == "colour":
        candidates = [(c, obj.shape) for c in COLOURS if c != obj.colour]
    else:
        raise ValueError(f"swap is {swap!r}; expected 'shape' or 'colour'")
    return [caption(c, s) for c, s in candidates if (c, s) not in present]


def _caption_plan(rng: np.random.Generator, n: int, group_size: int) -> list[tuple[str, str]]:
    """n (colour, shape) pairs in groups of up to group_size that share a colour (even groups) or a shape
    (odd groups). Pairs are drawn without replacement from all 35, refilled only when exhausted, so no pair
    repeats in the first 35 and none appears more than ceil(n / 35) times."""
    plan: list[tuple[str, str]] = []
    pool: list[tuple[str, str]] = []
    group = 0  # even groups share a colour, odd groups a shape
    while len(plan) < n:
        if not pool:
            pool = list(PAIRS)
        key = group % 2  # indexes (colour, shape)
        seed = pool[rng.integers(len(pool))]
        members = [p for p in pool if p[key] == seed[key]]
        members = [members[i] for i in rng.permutation(len(members))[:group_size]]
        plan += members
        pool = [p for p in pool if p not in members]
        group += 1
    return plan[:n]


def sample_scenes(rng: np.random.Generator | int | None, batch_size: int, size: int = 64,
                  max_objects: int = MAX_OBJECTS, one_colour_fraction: float = 0.25, group_size: int = 4,
                  world: str | World = DEFAULT_WORLD) -> tuple[list[Scene], list[str]]:
    """A contrastive training batch: scenes, each paired with a caption naming one of its objects.

    Captions come in groups of `group_size` that share a colour but differ in shape, alternating with groups
    that share a shape but differ in colour, so each caption's hard negatives are in the batch. About
    `one_colour_fraction` of the scenes have 2+ objects of one colour, so the captioned object must also be
    told apart by shape within its own image. Captions are distinct when batch_size <= 35 (the number of
    (colour, shape) pairs); beyond that each repeats at most ceil(batch_size / 35) times. A caption can still
    describe a distractor in another image: use `caption_matches` for multi-positive contrastive targets.

    Args:
        rng: a numpy Generator (advanced in place) or a seed.
        batch_size: number of (image, caption) pairs.
        size: image side in pixels.
        max_objects: curriculum knob, 1 to MAX_OBJECTS: each scene holds 1..max_objects objects.
        one_colour_fraction: probability that a scene is one-colour (ignored when max_objects is 1).
        group_size: captions per shared-colour or shared-shape group.
        world: how the scenes are drawn (see WORLDS).

    Returns:
        (scenes, captions); captions[i] names scenes[i].objects[0].
    """
    if not 1 <= max_objects <= MAX_OBJECTS or batch_size < 1:
        raise ValueError(f"max_objects is {max_objects} and batch_size {batch_size}; expected max_objects "
                         f"from 1 to {MAX_OBJECTS} and batch_size >= 1")
    rng = np.random.default_rng(rng)
    plan = _caption_plan(rng, batch_size, group_size)
    scenes = []
    for anchor in plan:
        one_colour = max_objects >= 2 and rng.random() < one_colour_fraction
        n = int(rng.integers(2 if one_colour else 1, max_objects + 1))
        scenes.append(make_scene(rng, size, n, one_colour=one_colour, anchor=anchor, world=world))
    return scenes, [caption(*a) for a in plan]


def sample_batch(rng: np.random.Generator | int | None, batch_size: int, size: int = 64,
                 max_objects: int = MAX_OBJECTS, one_colour_fraction: float = 0.25,
                 group_size: int = 4, world: str | World = DEFAULT_WORLD) -> tuple[np.ndarray, list[str]]:
    """`sample_scenes` with the images stacked: returns (uint8 array (B, H, W, 3), captions).

    Args and batch composition: see `sample_scenes`.
    """
    scenes, captions = sample_scenes(rng, batch_size, size, max_objects, one_colour_fraction, group_size,
                                     world)
    return np.stack([np.asarray(s.image) for s in scenes]), captions


def caption_matches(scenes: list[Scene], captions: list[str]) -> np.ndarray:
    """Which captions are true of which scenes: bool (len(scenes), len(captions)), True where captions[j]
    names an object of scenes[i]. For a batch from `sample_scenes` the diagonal is all True; off-diagonal
    Trues are false negatives for a plain CLIP loss and can be made extra positives."""
    return np.array([[c in set(s.captions) for c in captions] for s in scenes], dtype=bool)
