"""Does the model see the scene, and do its explanations point at what it sees? Measured on mini_clip.scenes.

Scenes are fresh: scene i is drawn from `numpy.random.default_rng(seed + i)` with seed EVAL_SEED by default,
streams unrelated to training's single `default_rng(0)` stream. Even i: 2-4 objects of ONE colour (only shape
tells them apart); odd i: 2-4 objects of two or more colours (pairs drawn freely, so a colour or a shape may
repeat; a draw that places fewer than two objects, or only one colour, is redrawn from the same stream).

For every object, with caption "a {colour} {shape}", four measurements:

- zero-shot: its caption's logit against each hard negative (`scenes.hard_negatives`, all of them: the same
  colour with a shape the scene lacks in it, and the same shape in a colour the scene lacks); a comparison is
  won when the true caption scores strictly higher. Also: does it beat ALL its negatives.
- pointing game: the arg-max cell of the caption's image map is a hit when any pixel of the object's mask lies
  in that cell (cell (r, c) covers pixels [p r, p r + p) x [p c, p c + p), p the patch size; the input is the
  whole scene, so no crop intervenes). Strict: at least STRICT_COVER of the cell's pixels are on the mask. A
  flat map (max == min) points nowhere: a miss.
- mass on the mask: with m = max(map, 0) and cov(r, c) the fraction of cell (r, c)'s pixels on the mask,
  sum(m * cov) / sum(m): the map's mass spread evenly over each cell's pixels, and the share landing on the
  mask. A uniform (or all-zero) map gets the mask's share of the image's area, the floor to compare with.
- deletion (Petsiuk et al. 2018, RISE): cells are removed most relevant first (ties in row-major order) by
  painting their pixels with the scene's background colour (the per-channel median of the pixels off every
  object mask), and the caption's logit l_k is recorded after each step (k cells removed: DELETION_INTERVALS
  even steps from 0 to all). Normalised: (l_k - l_all) / (l_0 - l_all), 1 for the unperturbed scene, 0 for
  the blank background; the area under it (trapezoids over the fraction removed, 0..1) is reported, lower
  meaning the map found what the score depends on. Areas and the gap l_0 - l_all are averaged over objects before
  dividing (a ratio of means): a per-object ratio explodes where the model barely recognises the object
  (l_0 near l_all, or below it), and dividing by l_0 alone fails where l_0 is near zero or negative.

Maps compared (EXPLAINERS): Chefer's relevance from the last block and from all blocks, the last block's
attention, rollout through all blocks, Grad-CAM, and two floors: a seeded uniform-noise map, and a text-blind
map that knows where the objects are but not which one the text names (each cell's coverage by the union of
all masks). On a dark background any map drawn to bright pixels lands on SOME object, so pointing at the named
one by chance is ~1/objects, not ~area: an untrained model's maps score near the text-blind floor, well
above the random one. A text-specific map must beat the text-blind floor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from ..image import normalize, preprocess
from ..model import CLIP
from ..relevance import relevance
from ..tokenizer import default_tokenizer, tokenize
from .render import DEFAULT_WORLD, PAIRS, Scene, World, caption, hard_negatives, make_scene

EVAL_SEED = 10_000_000  # first scene seed; training draws from one default_rng(0) stream
MIN_OBJECTS, MAX_OBJECTS = 2, 4  # per evaluation scene: with one object, nothing competes for the map
Explainer = tuple[str, Optional[str], Optional[int]]  # (label, relevance method, start layer)
# The maps compared; method None is the seeded random map; TEXT_BLIND the objects' coverage (both floors).
EXPLAINERS: tuple[Explainer, ...] = (
    ("chefer", "chefer", -1), ("chefer, all blocks", "chefer", 0), ("attention", "attention", -1),
    ("rollout", "rollout", 0), ("gradcam", "gradcam", -1), ("legrad", "legrad", None), ("random", None, None),
    ("objects, text-blind", "objects", None))
TEXT_BLIND = "objects"  # the map of every object's coverage, whatever the text: see the module docstring
STRICT_COVER = 0.25  # strict pointing: at least a quarter of the arg-max cell lies on the mask
DELETION_INTERVALS = 8  # deletion steps: 0, 1/8, ..., 8/8 of the cells (0, 8, ..., 64 on the 8 x 8 grid)


def is_one_colour(scene: Scene) -> bool:
    """True when every object of the scene has the same colour."""
    return len({o.colour for o in scene.objects}) == 1


def evaluation_scenes(n: int, seed: int = EVAL_SEED, size: int = 64,
                      world: str | World = DEFAULT_WORLD) -> list[Scene]:
    """n scenes of `world`, alternately one-colour (even index) and multi-colour (odd), 2-4 objects each."""
    scenes = []
    for i in range(n):
        rng, one_colour = np.random.default_rng(seed + i), i % 2 == 0
        while True:
            n_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
            scene = make_scene(rng, size, n_objects, one_colour=one_colour, world=world)
            if len(scene.objects) >= MIN_OBJECTS and is_one_colour(scene) == one_colour:
                break
        scenes.append(scene)
    return scenes


def cell_coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """Fraction of each cell's pixels on the mask: bool (H, W) -> float (grid, grid); H = W = grid * patch."""
    h, w = mask.shape
    if h != w or h % grid:
        raise ValueError(f"mask is {h} x {w}; expected a square whose side is a multiple of the grid {grid}")
    p = h // grid
    return mask.reshape(grid, p, grid, p).mean(axis=(1, 3))


def pointing_hit(relevance_map: np.ndarray, mask: np.ndarray, min_cover: float = 0.0) -> bool:
    """Pointing game: is the map's arg-max cell on the mask? A flat map points nowhere: False.

    Args:
        relevance_map: (grid, grid) scores over the model's input.
        mask: bool (H, W) object mask over the same input.
        min_cover: 0 (the plain rule): any mask pixel in the cell is a hit; > 0 (e.g. STRICT_COVER): at
            least this fraction of the cell's pixels must be on the mask.
    Returns:
        Whether the arg-max cell (the first in row-major order on ties) hits.
    """
    if relevance_map.max() == relevance_map.min():
        return False
    cover = cell_coverage(mask, relevance_map.shape[0]).ravel()[int(np.argmax(relevance_map))]
    return bool(cover >= min_cover) if min_cover > 0 else bool(cover > 0)


def mass_on_mask(relevance_map: np.ndarray, mask: np.ndarray) -> float:
    """sum(max(map, 0) * coverage) / sum(max(map, 0)); an all-zero map counts as uniform (the mask's area share)."""
    cover = cell_coverage(mask, relevance_map.shape[0])
    m = np.clip(relevance_map, 0, None)
    return float(cover.mean() if m.sum() == 0 else (m * cover).sum() / m.sum())


def deletion_order(relevance_map: np.ndarray) -> np.ndarray:
    """Flat cell indices (row-major), most relevant first; ties keep row-major order."""
    return np.argsort(-relevance_map.ravel(), kind="stable")


def background_colour(scene: Scene) -> np.ndarray:
    """The per-channel median of the pixels off every object's mask: uint8-scale (3,) float."""
    pixels = np.asarray(scene.image, dtype=np.float32)
    off = ~np.logical_or.reduce([o.mask for o in scene.objects])
    return np.median(pixels[off], axis=0)


def delete_cells(image: torch.Tensor, deleted: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Images with the chosen cells painted over.

    Args:
        image: one preprocessed image (3, H, W).
        deleted: bool (M, grid, grid): which cells each of the M copies loses.
        fill: (3,) the value, in the model's normalised space, painted over a deleted cell.
    Returns:
        (M, 3, H, W).
    """
    p = image.shape[-1] // deleted.shape[-1]
    pixels = deleted.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)[:, None]  # (M, 1, H, W)
    return torch.where(pixels, fill.view(1, 3, 1, 1), image[None])


def area_under_curve(curve: np.ndarray, steps: Sequence[int]) -> float:
    """Trapezoidal area under `curve` (one value per step) over the fraction removed, steps / steps[-1]."""
    x = np.asarray(steps, dtype=np.float64) / steps[-1]
    return float(((curve[1:] + curve[:-1]) / 2 * np.diff(x)).sum())


def deletion_auc(curves: Sequence[np.ndarray], steps: Sequence[int]) -> float:
    """Ratio of means: mean area under (l_k - l_all) over mean (l_0 - l_all), for logit curves l (see above)."""
    if not curves:
        return float("nan")
    areas = [area_under_curve(c - c[-1], steps) for c in curves]
    return float(np.mean(areas) / np.mean([c[0] - c[-1] for c in curves]))


def zero_shot_wins(scores: dict[str, float], scene: Scene) -> list[dict[str, tuple[int, int]]]:
    """Per object: {"shape": (won, compared), "colour": (won, compared)} against its hard negatives.

    Args:
        scores: the logit of every caption the scene's objects and their hard negatives name.
        scene: the scene scored.
    """
    results = []
    for obj in scene.objects:
        true = scores[obj.caption]
        results.append({swap: (sum(true > scores[n] for n in negs), len(negs)) for swap, negs in
                        ((s, hard_negatives(scene, obj, swap=s)) for s in ("shape", "colour"))})
    return results


@dataclass
class ObjectResult:
    """Everything measured for one (scene, object) pair; dicts are keyed by explainer label."""
    scene: int  # index in the evaluated list
    one_colour: bool  # the scene's objects share one colour
    caption: str
    area: float  # the mask's share of the image: what a uniform map puts on it
    negatives: dict[str, tuple[int, int]]  # zero-shot: swap kind -> (won, compared)
    hit: dict[str, bool]
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
    """label -> (N, grid, grid) numpy maps, one relevance call per explainer for all of the scene's captions."""
    captions = scene.captions
    grid, maps = model.config.grid, {}
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
    grid, labels, n = model.config.grid, list(maps), len(scene.objects)
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


def deletion_steps(cells: int, intervals: int = DELETION_INTERVALS) -> tuple[int, ...]:
    """Cells removed at each step: `intervals` even steps from 0 to all `cells`."""
    if not 1 <= intervals <= cells:
        raise ValueError(f"deletion intervals {intervals}; expected 1 to {cells}, the number of cells")
    return tuple(i * cells // intervals for i in range(intervals + 1))


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
    R, grid = model.config.image_resolution, model.config.grid
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
            results.append(ObjectResult(
                scene=i, one_colour=is_one_colour(scene), caption=obj.caption, area=float(obj.mask.mean()),
                negatives=zero_shot[j],
                hit={k: pointing_hit(m[j], obj.mask) for k, m in maps.items()},
                strict_hit={k: pointing_hit(m[j], obj.mask, STRICT_COVER) for k, m in maps.items()},
                mass={k: mass_on_mask(m[j], obj.mask) for k, m in maps.items()},
                deletion={k: c[j] for k, c in curves.items()}))
    return Report(results, len(scenes), tuple(label for label, _, _ in explainers),
                  steps or (), seed)


# The text side: each setting is (label, method, text start layer). Chefer's text map does not depend on the
# image's start layer (the image blocks recorded change nothing in the text tower's gradients).
TEXT_EXPLAINERS: tuple[Explainer, ...] = (
    ("chefer, last text block", "chefer", -1), ("chefer, all text blocks", "chefer", 0),
    ("attention", "attention", -1), ("rollout", "rollout", 0), ("gradcam", "gradcam", -1))


@dataclass
class TextResult:
    """The text side for one (scene, object): the share of relevance on its caption's two content words
    (colour, shape; against "a"), and for its hard negatives, whether signed Chefer marks the wrong word."""
    scene: int
    one_colour: bool
    caption: str
    content: dict[str, float]  # label -> share of the (clamped) relevance on the colour and shape words
    against: dict[str, list[bool]]  # chefer label -> per hard negative: the wrong word scores lowest, below 0


def word_scores(scores: torch.Tensor, words: Sequence[str]) -> np.ndarray:
    """Token scores (tokens,) -> one score per word (the sum over its BPE pieces, e.g. 'hex' 'agon')."""
    sizes = [len(default_tokenizer().encode(w)) for w in words]
    if sum(sizes) != len(scores):
        raise ValueError(f"{len(scores)} token scores for words {list(words)} of {sum(sizes)} tokens")
    return np.add.reduceat(scores.double().numpy(), np.cumsum([0] + sizes[:-1]))


def content_share(words: np.ndarray) -> float:
    """(a, colour, shape) word scores -> the share of max(score, 0) on colour and shape; 2/3 if all are 0."""
    m = np.clip(words, 0, None)
    return float(m[1:].sum() / m.sum()) if m.sum() > 0 else 2 / 3


def evaluate_text(model: CLIP, scenes: Sequence[Scene],
                  explainers: Sequence[Explainer] = TEXT_EXPLAINERS) -> list[TextResult]:
    """Measure the words' relevance for every object of the scenes.

    Content: the caption "a {colour} {shape}" of each object; the share of its relevance on the colour and
    shape words. Against (Chefer settings only, signed=True): each object's hard negatives, "a {colour}
    {other shape}" and "a {other colour} {shape}" absent from the scene; a hit when the swapped word has the
    lowest signed score of the three words and it is negative (evidence against the text).
    """
    R, results = model.config.image_resolution, []
    for i, scene in enumerate(scenes):
        x = preprocess(scene.image, R)
        content = _content_shares(model, x, scene, explainers)
        negatives = [(j, text, wrong) for j, obj in enumerate(scene.objects)
                     for swap, wrong in (("shape", 2), ("colour", 1)) for text in hard_negatives(scene, obj, swap)]
        against = {label: [[] for _ in scene.objects] for label, method, _ in explainers if method == "chefer"}
        for label, method, start in explainers:
            if method == "chefer":  # all the scene's negatives in one call
                rel = relevance(model, x, [t for _, t, _ in negatives], start_layer_text=start, signed=True)
                for k, (j, text, wrong) in enumerate(negatives):
                    words = word_scores(rel.text[k][0], text.split())
                    against[label][j].append(bool(np.argmin(words) == wrong and words[wrong] < 0))
        for j, obj in enumerate(scene.objects):
            results.append(TextResult(i, is_one_colour(scene), obj.caption,
                                      {k: v[j] for k, v in content.items()}, {k: v[j] for k, v in against.items()}))
    return results


def text_summary(results: Sequence[TextResult]) -> list[tuple[str, list[float]]]:
    """(measure, [all, one-colour, multi-colour]) percentage rows for `evaluate_text`'s results."""
    groups = (list(results), [r for r in results if r.one_colour], [r for r in results if not r.one_colour])
    labels = list(results[0].content) if results else []
    rows = [(f"words: relevance on colour + shape %: {e}",
             [_percent(g, lambda r, e=e: r.content[e]) for g in groups]) for e in labels]
    for e in (results[0].against if results else {}):
        rows.append((f"words: hard negative's wrong word marked against (signed) %: {e}",
                     [100 * float(np.mean([a for r in g for a in r.against[e]])) if g else float("nan")
                      for g in groups]))
    return rows


def choose_settings(model: CLIP, scenes: Sequence[Scene]) -> dict:
    """The Chefer settings this model is best explained with, chosen on `scenes` (validation scenes, never the
    evaluation's): the image start layer whose maps point best (ties: the later block, nearer the original's
    default), and the text start layer that puts most relevance on the content words. Returns the dict that
    `mini_clip.save` writes as the weights' recommendation (see relevance.recommended)."""
    blocks, text_blocks = model.config.vision_layers, model.config.transformer_layers
    image = [(f"start {k}", "chefer", k) for k in range(blocks)]
    hits = dict(summary(evaluate(model, scenes, image, deletion_intervals=None)))
    best = max(range(blocks), key=lambda k: (hits[f"pointing %: start {k}"][0], k))
    text = [(f"start {k}", "chefer", k) for k in range(text_blocks)]
    words = evaluate_text_content(model, scenes, text)
    best_text = max(range(text_blocks), key=lambda k: (words[f"start {k}"], k))
    last = lambda k, n: -1 if k == n - 1 else k  # noqa: E731  the last block written as the original writes it
    return {"method": "chefer", "start_layer": last(best, blocks), "start_layer_text": last(best_text, text_blocks)}


def evaluate_text_content(model: CLIP, scenes: Sequence[Scene], explainers: Sequence[Explainer]) -> dict[str, float]:
    """label -> mean share of relevance on the colour and shape words over every object (no hard negatives)."""
    shares = {label: [] for label, _, _ in explainers}
    for scene in scenes:
        x = preprocess(scene.image, model.config.image_resolution)
        for label, values in _content_shares(model, x, scene, explainers).items():
            shares[label] += values
    return {label: float(np.mean(v)) for label, v in shares.items()}


def _content_shares(model: CLIP, x: torch.Tensor, scene: Scene, explainers: Sequence[Explainer]) -> dict[str, list]:
    """label -> per object of the scene, the share of its caption's relevance on the colour and shape words."""
    shares = {}
    for label, method, start in explainers:
        rel = relevance(model, x, scene.captions, start_layer_text=start, method=method)
        shares[label] = [content_share(word_scores(rel.text[j][0], ["a", o.colour, o.shape]))
                         for j, o in enumerate(scene.objects)]
    return shares


def _groups(report: Report) -> tuple[list[ObjectResult], ...]:
    """The objects of all scenes, of the one-colour scenes, and of the multi-colour scenes."""
    return (report.objects, [o for o in report.objects if o.one_colour],
            [o for o in report.objects if not o.one_colour])


def _percent(objects: list[ObjectResult], value) -> float:
    return 100 * float(np.mean([value(o) for o in objects])) if objects else float("nan")


def _won(objects: list[ObjectResult], swaps: tuple[str, ...] = ("shape", "colour")) -> float:
    """Percentage of (true caption, negative) comparisons won, pooled over the objects."""
    won, n = (sum(o.negatives[s][i] for o in objects for s in swaps) for i in (0, 1))
    return 100 * won / n if n else float("nan")


def summary(report: Report) -> list[tuple[str, list[float]]]:
    """(measure, [all, one-colour, multi-colour]) rows; percentages except the deletion rows."""
    groups = _groups(report)
    row = lambda name, f: (name, [f(g) for g in groups])  # noqa: E731
    rows = [row("zero-shot: comparisons won %", _won),
            row("zero-shot: shape swaps won %", lambda g: _won(g, ("shape",))),
            row("zero-shot: colour swaps won %", lambda g: _won(g, ("colour",))),
            row("zero-shot: objects beating all their negatives %", lambda g: _percent(g, lambda o: o.beats_all))]
    for e in report.explainers:
        rows.append(row(f"pointing %: {e}", lambda g, e=e: _percent(g, lambda o: o.hit[e])))
    for e in report.explainers:
        rows.append(row(f"strict pointing (>= {STRICT_COVER:.0%} of the cell on the mask) %: {e}",
                        lambda g, e=e: _percent(g, lambda o: o.strict_hit[e])))
    for e in report.explainers:
        rows.append(row(f"mass on mask %: {e}", lambda g, e=e: _percent(g, lambda o: o.mass[e])))
    rows.append(row("mass on mask %: uniform map (the mask's area share)", lambda g: _percent(g, lambda o: o.area)))
    if report.deletion_steps:
        steps = report.deletion_steps
        for e in report.explainers:
            rows.append(row(f"deletion AUC (lower is better): {e}",
                            lambda g, e=e: deletion_auc([o.deletion[e] for o in g], steps)))
        rows.append(row("deletion: mean logit gap, unperturbed - blank", lambda g: float(np.mean(
            [o.deletion[report.explainers[0]][0] - o.deletion[report.explainers[0]][-1] for o in g]))))
    return rows
