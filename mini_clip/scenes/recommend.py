"""The Chefer settings a model is best explained with, chosen on validation scenes: its recommendation.

`choose_settings` returns the dict `mini_clip.save` writes into a weights file (`model.recommended`, read by
relevance.settings); scripts/train_scenes.py calls it on scenes of its own, never the evaluation's.
"""
from __future__ import annotations

from typing import Sequence

from ..model import CLIP
from .evaluation import evaluate, pointing_rates
from .render import Scene
from .words import evaluate_text_content


def choose_settings(model: CLIP, scenes: Sequence[Scene]) -> dict:
    """The Chefer settings this model is best explained with, chosen on `scenes` (validation scenes, never the
    evaluation's): the image start layer whose maps point best (ties: the later block, nearer the original's
    default), and the text start layer that puts most relevance on the content words. Returns the dict that
    `mini_clip.save` writes as the weights' recommendation (see relevance.settings)."""
    blocks, text_blocks = model.config.vision_layers, model.config.transformer_layers
    image = [(f"start {k}", "chefer", k) for k in range(blocks)]
    hits = pointing_rates(evaluate(model, scenes, image, deletion_intervals=None))
    best = max(range(blocks), key=lambda k: (hits[f"start {k}"], k))
    text = [(f"start {k}", "chefer", k) for k in range(text_blocks)]
    words = evaluate_text_content(model, scenes, text)
    best_text = max(range(text_blocks), key=lambda k: (words[f"start {k}"], k))

    def last(k: int, n: int) -> int:  # the last block written as the original writes it: -1
        return -1 if k == n - 1 else k

    return {"method": "chefer", "start_layer": last(best, blocks),
            "start_layer_text": last(best_text, text_blocks)}
