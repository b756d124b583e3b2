"""A synthetic world of flat coloured shapes, and the measurements of explanations on it.

- `render`: the worlds, and one scene drawn with a ground-truth mask for every object;
- `captions`: hard negatives, and contrastive training batches that hold them;
- `metrics`: one map against one object's mask (pointing game, mass, deletion), zero-shot against negatives;
- `evaluation`: every explanation method's maps measured on fresh scenes (`evaluate`);
- `words`: the text side, how a caption's relevance spreads over its words (`evaluate_text`);
- `recommend`: the Chefer settings a model is best explained with (`choose_settings`).

The names callers use are imported here: `from mini_clip.scenes import make_scene, evaluate`.
"""
from .captions import caption_matches, hard_negatives, sample_batch, sample_scenes
from .evaluation import (
    EVAL_SEED,
    EXPLAINERS,
    TEXT_BLIND,
    Explainer,
    ObjectResult,
    Report,
    evaluate,
    evaluation_scenes,
    is_one_colour,
    pointing_rates,
)
from .metrics import (
    DELETION_INTERVALS,
    STRICT_COVER,
    area_under_curve,
    background_colour,
    cell_coverage,
    delete_cells,
    deletion_auc,
    deletion_order,
    deletion_steps,
    mass_on_mask,
    pointing_hit,
    zero_shot_wins,
)
from .recommend import choose_settings
from .render import (
    BACKGROUNDS,
    BRIGHTNESS_JITTER,
    COLOURS,
    DEFAULT_WORLD,
    MARGIN,
    MAX_OBJECTS,
    MIN_SIZE,
    PAIRS,
    PLACEMENT_TRIES,
    SHAPES,
    STAR_INNER,
    SUPERSAMPLE,
    WORLDS,
    Obj,
    Scene,
    World,
    caption,
    get_world,
    make_scene,
)
from .words import (
    TEXT_EXPLAINERS,
    TextResult,
    content_share,
    evaluate_text,
    evaluate_text_content,
    word_scores,
)

__all__ = [
    # render
    "BACKGROUNDS", "BRIGHTNESS_JITTER", "COLOURS", "DEFAULT_WORLD", "MARGIN", "MAX_OBJECTS", "MIN_SIZE",
    "PAIRS", "PLACEMENT_TRIES", "SHAPES", "STAR_INNER", "SUPERSAMPLE", "WORLDS", "Obj", "Scene", "World",
    "caption", "get_world", "make_scene",
    # captions
    "caption_matches", "hard_negatives", "sample_batch", "sample_scenes",
    # metrics
    "DELETION_INTERVALS", "STRICT_COVER", "area_under_curve", "background_colour", "cell_coverage",
    "delete_cells", "deletion_auc", "deletion_order", "deletion_steps", "mass_on_mask", "pointing_hit",
    "zero_shot_wins",
    # evaluation
    "EVAL_SEED", "EXPLAINERS", "TEXT_BLIND", "Explainer", "ObjectResult", "Report", "evaluate",
    "evaluation_scenes", "is_one_colour", "pointing_rates",
    # words
    "TEXT_EXPLAINERS", "TextResult", "content_share", "evaluate_text", "evaluate_text_content", "word_scores",
    # recommend
    "choose_settings",
]
