"""Measure a scenes-trained CLIP on fresh scenes: zero-shot recognition against hard negatives, and how well
each explanation method points at, covers and explains the named object (see mini_clip/evaluate.py).

    python scripts/evaluate_scenes.py                                   # the shipped model, 200 scenes
    python scripts/evaluate_scenes.py --scenes 100 --weights /work/train/scenes.safetensors

Prints one markdown table, then whether each target of the issue is met. It reports; it never fails on a
missed target.
"""
import argparse
import json
import sys
import time

import torch

from mini_clip import WeightsError
from mini_clip.evaluate import DELETION_INTERVALS, EVAL_SEED, evaluate, evaluation_scenes, format_report
from mini_clip.weights import DEFAULT_WEIGHTS, build, read_checkpoint


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=200, help="number of scenes, half one-colour (default 200)")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="checkpoint (default: the shipped model)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"seed of the first scene (default {EVAL_SEED})")
    p.add_argument("--map-seed", type=int, default=0, help="seed of the random maps (default 0)")
    p.add_argument("--no-deletion", action="store_true", help="skip the deletion curves (about 3x faster)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args()
    if args.scenes < 2:
        print(f"evaluate_scenes: error: --scenes is {args.scenes}; need at least 2 (one of each kind)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sd, config, metadata = read_checkpoint(args.weights)
        model = build(sd, config, args.weights)
        step = json.loads(metadata.get("training", "{}")).get("steps", "unknown")
        start = time.time()
        scenes = evaluation_scenes(args.scenes, args.seed, model.config.image_resolution)
        report = evaluate(model, scenes, deletion_intervals=None if args.no_deletion else DELETION_INTERVALS,
                          seed=args.map_seed)
    except (WeightsError, OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"evaluate_scenes: error: {e}", file=sys.stderr)
        return 1
    settings = (f"scene seeds {args.seed}..{args.seed + args.scenes - 1}; weights {args.weights} "
                f"(training step {step}); {time.time() - start:.0f} s on {torch.get_num_threads()} thread(s)")
    print(format_report(report, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
