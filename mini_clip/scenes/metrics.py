"""The measurements of one relevance map against one object's mask, and of its caption against hard negatives.

The input is the whole scene at the model's resolution, so no crop intervenes; cell (r, c) of a (grid, grid)
map covers pixels [p r, p r + p) x [p c, p c + p), p the patch size.

- zero-shot: the caption's logit against each hard negative (`captions.hard_negatives`, all of them: the
  same colour with a shape the scene lacks in it, and the same shape in a colour the scene lacks); a
  comparison is won when the true caption scores strictly higher. Also: does it beat ALL its negatives.
- pointing game: the arg-max cell of the caption's image map is a hit when any pixel of the object's mask
  lies in that cell. Strict: at least STRICT_COVER of the cell's pixels are on the mask. A flat map
  (max == min) points nowhere: a miss.
- mass on the mask: with m = max(map, 0) and cov(r, c) the fraction of cell (r, c)'s pixels on the mask,
  sum(m * cov) / sum(m): the map's mass spread evenly over each cell's pixels, and the share landing on the
  mask. A uniform (or all-zero) map gets the mask's share of the image's area, the floor to compare with.
- deletion (Petsiuk et al. 2018, RISE): cells are removed most relevant first (ties in row-major order) by
  painting their pixels with the scene's background colour (the per-channel median of the pixels off every
  object mask), and the caption's logit l_k is recorded after each step (k cells removed: DELETION_INTERVALS
  even steps from 0 to all). Normalised: (l_k - l_all) / (l_0 - l_all), 1 for the unperturbed scene, 0 for
  the blank background; the area under it (trapezoids over the fraction removed, 0..1) is reported, lower
  meaning the map found what the score depends on. Areas and the gap l_0 - l_all are averaged over objects
  before dividing (a ratio of means): a per-object ratio explodes where the model barely recognises the
  object (l_0 near l_all, or below it), and dividing by l_0 alone fails where l_0 is near zero or negative.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .captions import hard_negatives
from .render import Scene

STRICT_COVER = 0.25  # strict pointing: at least a quarter of the arg-max cell lies on the mask
DELETION_INTERVALS = 8  # deletion steps: 0, 1/8, ..., 8/8 of the cells (0, 8, ..., 64 on the 8 x 8 grid)


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
    """sum(max(map, 0) * coverage) / sum(max(map, 0)); an all-zero map counts as uniform (the mask's area
    share)."""
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


def deletion_steps(cells: int, intervals: int = DELETION_INTERVALS) -> tuple[int, ...]:
    """Cells removed at each step: `intervals` even steps from 0 to all `cells`."""
    if not 1 <= intervals <= cells:
        raise ValueError(f"deletion intervals {intervals}; expected 1 to {cells}, the number of cells")
    return tuple(i * cells // intervals for i in range(intervals + 1))


def area_under_curve(curve: np.ndarray, steps: Sequence[int]) -> float:
    """Trapezoidal area under `curve` (one value per step) over the fraction removed, steps / steps[-1]."""
    x = np.asarray(steps, dtype=np.float64) / steps[-1]
    return float(((curve[1:] + curve[:-1]) / 2 * np.diff(x)).sum())


def deletion_auc(curves: Sequence[np.ndarray], steps: Sequence[int]) -> float:
    """Ratio of means: mean area under (l_k - l_all) over mean (l_0 - l_all), for logit curves l (see the
    module docstring)."""
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
