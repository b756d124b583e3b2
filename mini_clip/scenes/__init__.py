"""The synthetic world of flat coloured shapes, and the measurements of explanations on it.

- `render`: the worlds, and one scene drawn with a ground-truth mask for every object;
- `evaluation`: zero-shot recognition and every explanation method's maps measured on fresh scenes.
"""
from .evaluation import (DELETION_INTERVALS, EVAL_SEED, EXPLAINERS, STRICT_COVER, TEXT_BLIND, TEXT_EXPLAINERS,
                         Explainer, ObjectResult, Report, TextResult, area_under_curve, background_colour,
                         cell_coverage, choose_settings, content_share, delete_cells, deletion_auc,
                         deletion_order, deletion_steps, evaluate, evaluate_text, evaluate_text_content,
                         evaluation_scenes, is_one_colour, mass_on_mask, pointing_hit, summary, text_summary,
                         word_scores, zero_shot_wins)
from .render import (BACKGROUNDS, COLOURS, DEFAULT_WORLD, MAX_OBJECTS, MIN_SIZE, PAIRS, SHAPES, WORLDS, Obj,
                     Scene, World, caption, caption_matches, get_world, hard_negatives, make_scene,
                     sample_batch, sample_scenes)

__all__ = [
    "BACKGROUNDS", "COLOURS", "DEFAULT_WORLD", "MAX_OBJECTS", "MIN_SIZE", "PAIRS", "SHAPES", "WORLDS", "Obj",
    "Scene", "World", "caption", "caption_matches", "get_world", "hard_negatives", "make_scene",
    "sample_batch", "sample_scenes",
    "DELETION_INTERVALS", "EVAL_SEED", "EXPLAINERS", "STRICT_COVER", "TEXT_BLIND", "TEXT_EXPLAINERS",
    "Explainer", "ObjectResult", "Report", "TextResult", "area_under_curve", "background_colour",
    "cell_coverage", "choose_settings", "content_share", "delete_cells", "deletion_auc", "deletion_order",
    "deletion_steps", "evaluate", "evaluate_text", "evaluate_text_content", "evaluation_scenes",
    "is_one_colour", "mass_on_mask", "pointing_hit", "summary", "text_summary", "word_scores",
    "zero_shot_wins",
]
