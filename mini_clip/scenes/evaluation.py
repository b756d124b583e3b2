"""Does the model see the scene, and do its explanations point at what it sees? Measured on fresh scenes.

Scenes are fresh: scene i is drawn from `numpy.random.default_rng(seed + i)` with seed EVAL_SEED by default,
streams unrelated to training's single `default_rng(0)` stream. Even i: 2-4 objects of ONE colour (only shape
tells them apart); odd i: 2-4 objects of two or more colours (pairs drawn freely, so a colour or a shape may
repeat; a draw that places fewer than two objects, or only one colour, is redrawn from the same stream).

For every object, with caption "a {colour} {shape}", four measurements (defined in `metrics`): zero-shot
against its hard negatives, the pointing game (plain and strict), the mass on its mask, and deletion.

Maps compared (EXPLAINERS): Chefer's relevance from the last block and from all blocks, the last block's
attention, rollout through all blocks, Grad-CAM, LeGrad, and two floors: a seeded uniform-noise map, and a
text-blind map that knows where the objects are but not which one the text names (each cell's coverage by
the union of all masks). On a dark background any map drawn to bright pixels lands on SOME object, so
pointing at the named one by chance is ~1/objects, not ~area: an untrained model's maps score near the
text-blind floor, well above the random one. A text-specific map must beat the text-blind floor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..image import normalize, preprocess
from ..model import CLIP
from ..relevance import relevance
from ..tokenizer import tokenize
from .metrics import (
    DELETION_INTERVALS,
    STRICT_COVER,
    background_colour,
    cell_coverage,
    delete_cells,
    deletion_order,
    deletion_steps,
    mass_on_mask,
    pointing_hit,
    zero_shot_wins,
)
from .render import DEFAULT_WORLD, PAIRS, Scene, World, caption, make_scene

EVAL_SEED = 10_000_000  # first scene seed; training draws from one default_rng(0) stream
MIN_OBJECTS, MAX_OBJECTS = 2, 4  # per evaluation scene: with one object, nothing competes for the map
Explainer = tuple[str, Optional[str], Optional[int]]  # (label, relevance method, start layer)
# The maps compared; method None is the seeded random map; TEXT_BLIND the objects' coverage (both floors).
EXPLAINERS: tuple[Explainer, ...] = (
    ("chefer", "chefer", -1), ("chefer, all blocks", "chefer", 0), ("attention", "attention", -1),
    ("rollout", "rollout", 0), ("gradcam", "gradcam", -1), ("legrad", "legrad", None), ("random", None, None),
    ("objects, text-blind", "objects", None))
TEXT_BLIND = "objects"  # the map of every object's coverage, whatever the text: see the module docstring


def is_one_colour(scene: Scene) -> bool:
    """True when every object of the scene has the same colour."""
    return len({o.colour for o in scene.objects}) == 1


def evaluation_scenes(n: int, seed: int = EVAL_SEED, size: int = 64,
                      world: str | World = DEFAULT_WORLD) -> list[Scene]:
    """n scenes of `world`, alternately one-colour (even index) and multi-colour (odd), 2-4 objects each."""
    scenes = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        one_colour = i % 2 == 0
        while True:
            n_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
            scene = make_scene(rng, size, n_objects, one_colour=one_colour, world=world)
            if len(scene.objects) >= MIN_OBJECTS and is_one_colour(scene) == one_colour:
                break
        scenes.append(scene)
    return scenes


@dataclass
class ObjectResult:
    """Everything measured for one (scene, object) pair; dicts are keyed by explainer label."""
    scene: int  # index in the evaluated list
    one_colour: bool  # the scene's objects share one colour
    caption: str
    area: float  # the mask's share of the image: what a uniform map puts on it
    negatives: dict[str, tuple[int, int]]  # zero-shot: swap kind -> (won, compared)
    hit: dict[str, bool]
    elsewhere: dict[str, bool]  # a miss whose arg-max cell touches another object (the wrong one, not noise)
    strict_hit: dict[str, bool]
    mass: dict[str, float]
    deletion: dict[str, np.ndarray]  # the caption's logit after each deletion step; empty if not measured

    @property
    def beats_all(self) -> bool:
        return all(won == n for won, n in self.negatives.values())


@dataclass
class Report:
    """All results of one `evaluate` call, and the settings that produced them."""
    objects: list[ObjectResult]
    scenes: int
    explainers: tuple[str, ...]
    deletion_steps: tuple[int, ...]
    seed: int  # of the random maps


def _maps(model: CLIP, x: torch.Tensor, scene: Scene, explainers: Sequence[Explainer],
          rng: np.random.Generator) -> dict[str, np.ndarray]:
    """label -> (N, grid, grid) numpy maps, one relevance call per explainer for all of the scene's
    captions."""
    captions = scene.captions
    grid = model.config.grid
    maps = {}
    for label, method, start in explainers:
        if method is None:
            maps[label] = rng.random((len(captions), grid, grid))
        elif method == TEXT_BLIND:
            union = np.logical_or.reduce([o.mask for o in scene.objects])
            maps[label] = np.repeat(cell_coverage(union, grid)[None], len(captions), axis=0)
        else:
            maps[label] = relevance(model, x, captions, start_layer=start, method=method).image[0].numpy()
    return maps


@torch.no_grad()
def _deletion_curves(model: CLIP, x: torch.Tensor, scene: Scene, maps: dict, text_features: torch.Tensor,
                     steps: tuple[int, ...]) -> dict[str, list[np.ndarray]]:
    """label -> per object, its caption's logit after each step's deletions. Every distinct deleted set of the
    scene (all explainers, objects and steps; the first and last steps are shared) is encoded once."""
    grid = model.config.grid
    labels = list(maps)
    n = len(scene.objects)
    fill = normalize(torch.from_numpy(background_colour(scene)).view(3, 1, 1) / 255).view(3)
    deleted = torch.zeros(len(labels), n, len(steps), grid * grid, dtype=torch.bool)
    for a, label in enumerate(labels):
        for j in range(n):
            order = torch.from_numpy(deletion_order(maps[label][j]).copy())
            for s, k in enumerate(steps):
                deleted[a, j, s, order[:k]] = True
    unique, inverse = torch.unique(deleted.view(-1, grid * grid), dim=0, return_inverse=True)
    images = delete_cells(x, unique.view(-1, grid, grid), fill.float())
    features = torch.cat([model.encode_image(chunk) for chunk in images.split(128)])
    logits = model.logits(features, text_features)[inverse].view(len(labels), n, len(steps), n)
    return {label: [logits[a, j, :, j].numpy() for j in range(n)] for a, label in enumerate(labels)}


def evaluate(model: CLIP, scenes: Sequence[Scene], explainers: Sequence[Explainer] = EXPLAINERS,
             deletion_intervals: Optional[int] = DELETION_INTERVALS, seed: int = 0) -> Report:
    """Measure zero-shot recognition and every explainer's maps on the scenes.

    Args:
        model: a CLIP whose input resolution equals the scenes' size.
        scenes: e.g. `evaluation_scenes(200)`; every object is measured.
        explainers: (label, method, start layer) triples, as EXPLAINERS; method None is a random map,
            TEXT_BLIND the objects' coverage.
        deletion_intervals: steps of the deletion curve (see `deletion_steps`); None skips deletion (faster).
        seed: of the random maps.
    Returns:
        A Report with one ObjectResult per object.
    """
    R = model.config.image_resolution
    grid = model.config.grid
    steps = None if deletion_intervals is None else deletion_steps(grid * grid, deletion_intervals)
    rng = np.random.default_rng(seed)
    all_captions = [caption(c, s) for c, s in PAIRS]  # every caption zero-shot can ask about: encoded once
    with torch.no_grad():
        text_features = model.encode_text(tokenize(all_captions, model.context_length))
    index = {c: i for i, c in enumerate(all_captions)}
    results = []
    for i, scene in enumerate(scenes):
        if scene.image.size != (R, R):
            raise ValueError(f"scene {i} is {scene.image.size[0]} px; the model's input is {R} px "
                             f"(draw scenes with size={R})")
        x = preprocess(scene.image, R)  # already square at the model's size: resize and crop are the identity
        with torch.no_grad():
            logits = model.logits(model.encode_image(x[None]), text_features)[0]
        zero_shot = zero_shot_wins({c: float(logits[index[c]]) for c in all_captions}, scene)
        captions = scene.captions
        maps = _maps(model, x, scene, explainers, rng)
        curves = {}
        if steps is not None:
            own = text_features[[index[c] for c in captions]]
            curves = _deletion_curves(model, x, scene, maps, own, steps)
        for j, obj in enumerate(scene.objects):
            hit = {k: pointing_hit(m[j], obj.mask) for k, m in maps.items()}
            others = np.zeros_like(obj.mask)  # every other object's pixels
            for other in scene.objects:
                if other is not obj:
                    others |= other.mask
            results.append(ObjectResult(
                scene=i, one_colour=is_one_colour(scene), caption=obj.caption, area=float(obj.mask.mean()),
                negatives=zero_shot[j],
                hit=hit,
                elsewhere={k: not hit[k] and pointing_hit(m[j], others) for k, m in maps.items()},
                strict_hit={k: pointing_hit(m[j], obj.mask, STRICT_COVER) for k, m in maps.items()},
                mass={k: mass_on_mask(m[j], obj.mask) for k, m in maps.items()},
                deletion={k: c[j] for k, c in curves.items()}))
    return Report(results, len(scenes), tuple(label for label, _, _ in explainers),
                  steps or (), seed)


def pointing_rates(report: Report) -> dict[str, float]:
    """Pointing-game hits in % per explainer label, over every object of the report (nan where it has none):
    what model selection compares (see `recommend` and scripts/train_scenes.py)."""
    return {e: 100 * float(np.mean([o.hit[e] for o in report.objects])) if report.objects else float("nan")
            for e in report.explainers}
