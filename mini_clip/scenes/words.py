"""The text side: how a caption's relevance spreads over its words, measured on scenes.

For every object, its caption "a {colour} {shape}": the share of its relevance on the colour and shape
words (against "a"), for each setting of TEXT_EXPLAINERS. For the Chefer settings, also its hard negatives
(`captions.hard_negatives`), with signed relevance: does the swapped word score lowest of the three, and
below 0 (evidence against the text)?
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..image import preprocess
from ..model import CLIP
from ..relevance import relevance
from ..tokenizer import default_tokenizer
from .captions import hard_negatives
from .evaluation import Explainer, is_one_colour
from .render import Scene

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
    R = model.config.image_resolution
    results = []
    for i, scene in enumerate(scenes):
        x = preprocess(scene.image, R)
        content = _content_shares(model, x, scene, explainers)
        # (object, negative caption, index of its swapped word among "a", colour, shape)
        negatives = [(j, text, wrong) for j, obj in enumerate(scene.objects)
                     for swap, wrong in (("shape", 2), ("colour", 1))
                     for text in hard_negatives(scene, obj, swap)]
        against = {label: [[] for _ in scene.objects]
                   for label, method, _ in explainers if method == "chefer"}
        for label, method, start in explainers:
            if method == "chefer":  # all the scene's negatives in one call
                rel = relevance(model, x, [t for _, t, _ in negatives], start_layer_text=start, signed=True)
                for k, (j, text, wrong) in enumerate(negatives):
                    words = word_scores(rel.text[k][0], text.split())
                    against[label][j].append(bool(np.argmin(words) == wrong and words[wrong] < 0))
        for j, obj in enumerate(scene.objects):
            results.append(TextResult(i, is_one_colour(scene), obj.caption,
                                      {k: v[j] for k, v in content.items()},
                                      {k: v[j] for k, v in against.items()}))
    return results


def evaluate_text_content(model: CLIP, scenes: Sequence[Scene],
                          explainers: Sequence[Explainer]) -> dict[str, float]:
    """label -> mean share of relevance on the colour and shape words over every object (no hard
    negatives)."""
    shares = {label: [] for label, _, _ in explainers}
    for scene in scenes:
        x = preprocess(scene.image, model.config.image_resolution)
        for label, values in _content_shares(model, x, scene, explainers).items():
            shares[label] += values
    return {label: float(np.mean(v)) for label, v in shares.items()}


def _content_shares(model: CLIP, x: torch.Tensor, scene: Scene,
                    explainers: Sequence[Explainer]) -> dict[str, list]:
    """label -> per object of the scene, the share of its caption's relevance on the colour and shape
    words."""
    shares = {}
    for label, method, start in explainers:
        rel = relevance(model, x, scene.captions, start_layer_text=start, method=method)
        shares[label] = [content_share(word_scores(rel.text[j][0], ["a", o.colour, o.shape]))
                         for j, o in enumerate(scene.objects)]
    return shares
