"""Measure a scenes-trained CLIP on fresh scenes of its training world and of a renderer variant it never saw:
zero-shot recognition against hard negatives, how well each explanation method points at, covers and explains
the named object, and how the words' relevance reads (see mini_clip/scenes/).

    python scripts/evaluate_scenes.py                               # the shipped model, 200 scenes a world
    python scripts/evaluate_scenes.py --scenes 100 --weights /work/train/scenes.safetensors --world dark

Prints one markdown table (a column group per world: all scenes, one-colour, multi-colour), then whether each
of the project's targets is met. It reports; it never fails on a missed target.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import numpy as np
import torch

from mini_clip import WeightsError
from mini_clip.loading import read_metadata
from mini_clip.relevance import settings
from mini_clip.scenes import (
    DEFAULT_WORLD,
    DELETION_INTERVALS,
    EVAL_SEED,
    EXPLAINERS,
    STRICT_COVER,
    TEXT_EXPLAINERS,
    WORLDS,
    ObjectResult,
    Report,
    TextResult,
    deletion_auc,
    evaluate,
    evaluate_text,
    evaluation_scenes,
    get_world,
)
from mini_clip.weights import DEFAULT_WEIGHTS, build, read_checkpoint

CLEARLY_BELOW = 0.8  # "deletion AUC clearly below random": at most this fraction of random's
HELD_OUT_GAP = 5  # points the renderer variant may lose against the training world
VARIANT = "held-out"  # the renderer variant no training and no choice of model ever saw


def with_recommended(model) -> tuple[list, list, str, str]:
    """EXPLAINERS and TEXT_EXPLAINERS, plus the Chefer settings the weights recommend where those are not
    already measured, and the labels of the recommended rows (the original's, last blocks, if none)."""
    _, image, text = settings(model, "chefer")  # the recommendation (or the defaults), as block indices
    blocks, text_blocks = model.config.vision_layers, model.config.transformer_layers
    image_label = {0: "chefer, all blocks", blocks - 1: "chefer"}.get(image, f"chefer, blocks {image}..")
    text_label = {0: "chefer, all text blocks", text_blocks - 1: "chefer, last text block"}.get(
        text, f"chefer, text blocks {text}..")
    explainers, text_explainers = list(EXPLAINERS), list(TEXT_EXPLAINERS)
    if image_label not in {label for label, _, _ in explainers}:
        explainers.insert(2, (image_label, "chefer", image))
    if text_label not in {label for label, _, _ in text_explainers}:
        text_explainers.insert(2, (text_label, "chefer", text))
    return explainers, text_explainers, image_label, text_label


# ---------------------------------------------------------------------------------------------------------
# The report: rows of measures over all scenes, the one-colour ones and the multi-colour ones


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

    def row(name: str, f) -> tuple[str, list[float]]:
        return name, [f(g) for g in groups]

    rows = [row("zero-shot: comparisons won %", _won),
            row("zero-shot: shape swaps won %", lambda g: _won(g, ("shape",))),
            row("zero-shot: colour swaps won %", lambda g: _won(g, ("colour",))),
            row("zero-shot: objects beating all their negatives %",
                lambda g: _percent(g, lambda o: o.beats_all))]
    for e in report.explainers:
        rows.append(row(f"pointing %: {e}", lambda g, e=e: _percent(g, lambda o: o.hit[e])))
    for e in report.explainers:
        rows.append(row(f"pointing: misses on another object %: {e}",
                        lambda g, e=e: _percent(g, lambda o: o.elsewhere[e])))
    for e in report.explainers:
        rows.append(row(f"strict pointing (>= {STRICT_COVER:.0%} of the cell on the mask) %: {e}",
                        lambda g, e=e: _percent(g, lambda o: o.strict_hit[e])))
    for e in report.explainers:
        rows.append(row(f"mass on mask %: {e}", lambda g, e=e: _percent(g, lambda o: o.mass[e])))
    rows.append(row("mass on mask %: uniform map (the mask's area share)",
                    lambda g: _percent(g, lambda o: o.area)))
    if report.deletion_steps:
        steps = report.deletion_steps
        for e in report.explainers:
            rows.append(row(f"deletion AUC (lower is better): {e}",
                            lambda g, e=e: deletion_auc([o.deletion[e] for o in g], steps)))
        rows.append(row("deletion: mean logit gap, unperturbed - blank", lambda g: float(np.mean(
            [o.deletion[report.explainers[0]][0] - o.deletion[report.explainers[0]][-1] for o in g]))))
    return rows


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


# ---------------------------------------------------------------------------------------------------------
# The project's targets, and the table


def targets(rows: dict[str, dict[str, list[float]]], image_label: str, text_label: str,
            training_world: str = DEFAULT_WORLD) -> list[tuple[str, bool]]:
    """Each target with whether it is met; `rows` is world -> measure -> [all, one-colour, multi-colour]; the
    targets are read on the model's training world, and the variant against it."""
    nan = [float("nan")] * 3

    def get(name: str, world: str = training_world, group: int = 0) -> float:
        return rows.get(world, {}).get(name, nan)[group]

    point = {e: get(f"pointing %: {e}") for e in ("chefer", "chefer, all blocks", "attention", "rollout")}
    auc = get("deletion AUC (lower is better): chefer")
    random_auc = get("deletion AUC (lower is better): random")
    won = "zero-shot: comparisons won %"
    recommended = f"pointing %: {image_label}"
    content = f"words: relevance on colour + shape %: {text_label}"
    return [(f"pointing with the recommended setting ({image_label}) >= 90 %", get(recommended) >= 90),
            ("pointing with the last block only (chefer) >= 85 %", point["chefer"] >= 85),
            *[(f"pointing: {e} ahead of attention and rollout",
               point[e] > point["attention"] and point[e] > point["rollout"])
              for e in ("chefer", "chefer, all blocks")],
            ("zero-shot comparisons won >= 95 % on multi-colour scenes", get(won, group=2) >= 95),
            ("zero-shot comparisons won >= 90 % on one-colour scenes", get(won, group=1) >= 90),
            (f"deletion AUC (chefer) <= {CLEARLY_BELOW} x random's", auc <= CLEARLY_BELOW * random_auc),
            (f"words: relevance on colour + shape with the recommended setting ({text_label}) >= 90 %",
             get(content) >= 90),
            *[(f"{VARIANT} world: {name} at most {HELD_OUT_GAP} points below {training_world}",
               get(measure, VARIANT) >= get(measure) - HELD_OUT_GAP)
              for name, measure in (("pointing (recommended)", recommended), ("zero-shot", won))]]


def format_table(rows: dict[str, dict[str, list[float]]], counts: dict[str, list[int]]) -> str:
    """One markdown table: a row per measure, three columns (all, one-colour, multi-colour) per world."""
    worlds = list(rows)
    head = " | ".join(f"{w}: all ({counts[w][0]}) | one-colour ({counts[w][1]}) | "
                      f"multi-colour ({counts[w][2]})" for w in worlds)
    lines = [f"| measure | {head} |", "| --- |" + " ---: |" * (3 * len(worlds))]
    for name in rows[worlds[0]]:
        fmt = "{:.3f}" if name.startswith("deletion AUC") else "{:.1f}"
        values = [fmt.format(v) for w in worlds for v in rows[w].get(name, [float("nan")] * 3)]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=200, help="scenes per world, half one-colour (default 200)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="checkpoint (default: the shipped model)")
    p.add_argument("--world", action="append", choices=list(WORLDS),
                   help=f"world(s) to measure (repeatable; default: the training world and {VARIANT})")
    p.add_argument("--seed", type=int, default=EVAL_SEED,
                   help=f"seed of the first scene (default {EVAL_SEED})")
    p.add_argument("--map-seed", type=int, default=0, help="seed of the random maps (default 0)")
    p.add_argument("--no-deletion", action="store_true", help="skip the deletion curves (about 3x faster)")
    p.add_argument("--no-words", action="store_true", help="skip the words' measures (about 2x faster)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args()
    if args.scenes < 2:
        print(f"evaluate_scenes: error: --scenes is {args.scenes}; need at least 2 (one of each kind)",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {}
    counts = {}
    try:
        # One read of the file: the tensors, the settings it recommends and the training step it was saved at
        sd, config, metadata = read_checkpoint(args.weights)
        model = build(sd, config, args.weights)
        read_metadata(model, metadata, args.weights)  # as mini_clip.load: preprocessing, recommended settings
        training = json.loads(metadata.get("training", "{}"))
        training = training if isinstance(training, dict) else {}  # a file's own words: untrusted
        step = training.get("steps", "unknown")
        training_world = get_world(training.get("world", DEFAULT_WORLD)).name  # unknown: refused in one line
        worlds = args.world or [training_world, VARIANT]
        explainers, text_explainers, *labels = with_recommended(model)
        start = time.time()
        for world in worlds:
            scenes = evaluation_scenes(args.scenes, args.seed, model.config.image_resolution, world)
            report = evaluate(model, scenes, explainers, None if args.no_deletion else DELETION_INTERVALS,
                              seed=args.map_seed)
            rows[world] = dict(summary(report))
            if not args.no_words:
                rows[world].update(text_summary(evaluate_text(model, scenes, text_explainers)))
            one = [o for o in report.objects if o.one_colour]
            counts[world] = [len(report.objects), len(one), len(report.objects) - len(one)]
    except (WeightsError, OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"evaluate_scenes: error: {e}", file=sys.stderr)
        return 1
    last_seed = args.seed + args.scenes - 1
    print(f"{args.scenes} scenes per world (half one-colour), seeds {args.seed}..{last_seed}; "
          f"weights {args.weights} (training step {step}); recommended settings: image {labels[0]!r}, words "
          f"{labels[1]!r}; random maps seed {args.map_seed}; {time.time() - start:.0f} s on "
          f"{torch.get_num_threads()} thread(s)\n")
    print(format_table(rows, counts) + "\n")
    if training_world not in rows:  # the targets are read on the training world (and the variant beside it)
        print(f"- targets: not judged; they are read on the {training_world!r} world (run without --world)")
    for name, ok in targets(rows, *labels, training_world) if training_world in rows else []:
        print(f"- target {name}: {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
