"""Train the tiny CLIP that ships as mini_clip's default model, on the synthetic world of mini_clip.scenes.

    python scripts/train_scenes.py --world dark --out stage1.safetensors  # the shipped model's first stage
    python scripts/train_scenes.py --init stage1.safetensors --steps 3000 --lr 3e-4 --out stage2.safetensors
    python scripts/train_scenes.py --steps 20 --micro --select-every 0 --out /tmp/m.safetensors  # a smoke run

(The third stage, and which step each stage kept: README, "The embedded model".)

Recipe: OpenAI's architecture at 64 px with 8 px patches, OpenAI's tokenizer and normalisation; the
symmetric contrastive loss with a learnable temperature; batches whose captions come in groups sharing a
colour or a shape (hard negatives), plus, per image, two captions that name an absent object of the same
colour or the same shape (text-only hard negatives); a curriculum from 1 object to 4; AdamW with warm-up
and a cosine schedule. A caption true of several images is a positive for all of them.

With --select-every N (250 by default), every N steps of the second half the model is measured on VALIDATION
scenes (seeds of their own, apart from training's stream and from the evaluation's EVAL_SEED range) and the
file keeps the step whose Chefer maps point best: pointing peaks before the loss stops falling, and the
held-out evaluation (scripts/evaluate_scenes.py) then measures the chosen model on scenes the choice never
saw.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mini_clip import CLIP, CLIPConfig, WeightsError, save
from mini_clip.image import normalize
from mini_clip.scenes import (
    DEFAULT_WORLD,
    WORLDS,
    caption_matches,
    choose_settings,
    evaluate,
    evaluation_scenes,
    hard_negatives,
    pointing_rates,
    sample_scenes,
)
from mini_clip.tokenizer import tokenize
from mini_clip.weights import build, read_checkpoint

SHIPPED = CLIPConfig(embed_dim=128, image_resolution=64, vision_layers=5, vision_width=128,
                     vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=128,
                     transformer_heads=4, transformer_layers=2, vision_heads=4)
MICRO = CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=8,
                   context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=2,
                   transformer_layers=1, vision_heads=2)
VALIDATION_SEED = 20_000_000  # model selection's scenes: disjoint from training and from evaluate.EVAL_SEED
SELECTED_BY = (("chefer", "chefer", -1), ("chefer, all blocks", "chefer", 0))


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W): mini_clip.preprocess for images already square
    and at the model's resolution, where resize and crop are the identity."""
    return normalize(torch.from_numpy(images).float().div_(255).permute(0, 3, 1, 2))


def make_batch(rng: np.random.Generator, batch_size: int, size: int, max_objects: int, one_colour: float,
               world: str = DEFAULT_WORLD):
    """Images, texts (the B paired captions, then 2 text-only hard negatives per image) and the (B, texts)
    matrix of which texts are true of which image."""
    scenes, captions = sample_scenes(rng, batch_size, size, max_objects, one_colour_fraction=one_colour,
                                     world=world)
    negatives = []
    for scene in scenes:
        for swap in ("shape", "colour"):
            options = hard_negatives(scene, scene.objects[0], swap=swap)
            negatives.append(options[rng.integers(len(options))])
    texts = captions + negatives
    images = np.stack([np.asarray(s.image) for s in scenes])
    return to_input(images), tokenize(texts), torch.from_numpy(caption_matches(scenes, texts)).float()


def contrastive_loss(logits: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with several positives: each image's target spreads over its true texts; each
    paired text's target over its true images (text-only negatives have no image to find)."""
    B = logits.shape[0]
    image_loss = -(matches / matches.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    paired = logits[:, :B].t()  # (B texts, B images)
    text_matches = matches[:, :B].t()  # (B texts, B images)
    text_loss = -(text_matches / text_matches.sum(1, keepdim=True) * paired.log_softmax(dim=1)).sum(1).mean()
    return (image_loss + text_loss) / 2


def train(config: CLIPConfig, steps: int, batch_size: int = 96, lr: float = 1e-3, warmup: int = 500,
          seed: int = 0, one_colour: float = 0.4, log_every: int = 100, checkpoint=None, out=None,
          init=None, curriculum: bool = True, select_every: int = 0, select_scenes: int = 100,
          world: str = DEFAULT_WORLD) -> list[float]:
    """Train from OpenAI's initialisation, or continue from the weights file `init`; returns every step's
    loss. With select_every, `out` holds the best-pointing step on the validation scenes (see the module
    docstring)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    settings = dict(steps=0, planned_steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                    one_colour_fraction=one_colour, continued_from=None, world=world,
                    data="mini_clip.scenes.sample_scenes + 2 text-only hard negatives per image",
                    loss="symmetric multi-positive InfoNCE", schedule="linear warm-up, cosine")
    if init is None:
        model = CLIP(config)
    else:  # its weights, its architecture, and the settings that trained it (kept in the new file's metadata)
        sd, init_config, metadata = read_checkpoint(init)
        model = build(sd, init_config, str(init))
        config = model.config
        settings["continued_from"] = json.loads(metadata.get("training", "null"))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embedding" not in n)]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / steps))))
    losses = []
    start = time.time()
    validation = (evaluation_scenes(select_scenes, VALIDATION_SEED, config.image_resolution, world)
                  if select_every else [])
    best = -1.0
    for step in range(steps):
        max_objects = min(4, 1 + 4 * step // max(1, int(0.4 * steps))) if curriculum else 4  # 1 -> 4 objects
        R = config.image_resolution
        images, tokens, matches = make_batch(rng, batch_size, R, max_objects, one_colour, world)
        logits_per_image, _ = model(images, tokens)
        loss = contrastive_loss(logits_per_image, matches)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:6d}  loss {np.mean(losses[-log_every:]):.4f}  objects<={max_objects}  "
                  f"scale {model.logit_scale.exp().item():.1f}  lr {schedule.get_last_lr()[0]:.2e}  "
                  f"{time.time() - start:.0f}s", flush=True)
        done = step + 1
        if select_every and done >= steps // 2 and (done % select_every == 0 or done == steps):
            scores = validation_pointing(model, validation)
            improved = sum(scores.values()) > best
            pointing = "  ".join(f"{k} {v:.1f}" for k, v in scores.items())
            best_so_far = "  (best so far)" if improved else ""
            print(f"step {done:6d}  validation pointing {pointing}{best_so_far}", flush=True)
            if improved:
                best = sum(scores.values())
                selected_by = dict(validation_pointing=scores,
                                   scenes=f"evaluation_scenes(seed={VALIDATION_SEED})")
                if out:
                    _save(model, out, dict(settings, steps=done, selected_by=selected_by))
        elif out and not select_every and checkpoint and (done % checkpoint == 0 or done == steps):
            _save(model, out, dict(settings, steps=done))
    if out:
        recommend(out, world, select_scenes)
    return losses


def recommend(path, world: str = DEFAULT_WORLD, scenes: int = 100) -> dict:
    """Choose the explanation settings of the model in `path` on validation scenes (never the evaluation's)
    and write them into the file's metadata (see mini_clip.scenes.choose_settings); returns them."""
    sd, config, metadata = read_checkpoint(path)
    model = build(sd, config, str(path))
    validation = evaluation_scenes(scenes, VALIDATION_SEED, config.image_resolution, world)
    model.recommended = choose_settings(model, validation)
    print(f"recommended explanation settings (on {scenes} validation scenes of {world!r}): "
          f"{model.recommended}", flush=True)
    save(model.half(), path, {k: v for k, v in metadata.items() if k == "training"})  # fp16 again: exact
    return model.recommended


def validation_pointing(model: CLIP, scenes) -> dict[str, float]:
    """Pointing % of each SELECTED_BY map on the validation scenes (the model is left in training mode)."""
    model.eval()
    rates = pointing_rates(evaluate(model, scenes, SELECTED_BY, deletion_intervals=None))
    model.train()
    return {label: rates[label] for label, _, _ in SELECTED_BY}


def _save(model: CLIP, out, settings: dict) -> None:
    """An fp16 copy of the model, its training settings in the metadata; training goes on in fp32."""
    save(copy.deepcopy(model).eval().half(), out, {"training": json.dumps(settings)})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="where to write the .safetensors (fp16)")
    p.add_argument("--steps", type=int, default=7000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--checkpoint", type=int, default=1000, help="save every N steps (without --select-every)")
    p.add_argument("--select-every", type=int, default=250, help="in the second half, measure pointing on "
                   "validation scenes every N steps and keep the best (0: keep the last step, saved every "
                   "--checkpoint)")
    p.add_argument("--select-scenes", type=int, default=100, help="validation scenes for --select-every")
    p.add_argument("--micro", action="store_true", help="a micro model for smoke runs")
    p.add_argument("--vision-layers", type=int, default=SHIPPED.vision_layers, help="image tower depth")
    p.add_argument("--init", help="continue from this weights file (its architecture; no curriculum)")
    p.add_argument("--one-colour", type=float, default=0.4, help="fraction of one-colour scenes per batch")
    trainable = [name for name, world in WORLDS.items() if not world.held_out]
    p.add_argument("--world", choices=trainable, default=DEFAULT_WORLD,
                   help="the scenes trained and validated on (the held-out worlds are never trained on)")
    p.add_argument("--recommend-only", action="store_true", help="train nothing: choose the explanation "
                   "settings of the model already in --out on validation scenes and write them into it")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args()
    problem = bad_flag(args)
    if problem:
        print(f"train_scenes: error: {problem}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    config = MICRO if args.micro else dataclasses.replace(SHIPPED, vision_layers=args.vision_layers)
    try:
        if args.recommend_only:
            recommend(args.out, args.world, args.select_scenes)
            return 0
        train(config, args.steps, args.batch_size, args.lr, warmup=min(500, args.steps // 10 + 1),
              seed=args.seed, one_colour=args.one_colour, checkpoint=args.checkpoint, out=args.out,
              init=args.init, curriculum=args.init is None, select_every=args.select_every,
              select_scenes=args.select_scenes, world=args.world)
    except (WeightsError, OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"train_scenes: error: {e}", file=sys.stderr)
        return 1
    return 0


def bad_flag(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, checked before an hour of training rather than at its first save."""
    out = Path(args.out).resolve()
    checks = (
        (args.steps >= 1, f"--steps is {args.steps}; need at least 1"),
        (args.batch_size >= 2, f"--batch-size is {args.batch_size}; need at least 2 (a contrastive batch)"),
        (args.lr > 0, f"--lr is {args.lr}; need a positive learning rate"),
        (args.threads >= 0, f"--threads is {args.threads}; need 0 (torch's default) or more"),
        (args.checkpoint >= 0, f"--checkpoint is {args.checkpoint}; need 0 (only at the end) or more"),
        (args.select_every >= 0, f"--select-every is {args.select_every}; need 0 (off) or more"),
        (args.select_scenes >= 2, f"--select-scenes is {args.select_scenes}; need at least 2"),
        (args.vision_layers >= 1, f"--vision-layers is {args.vision_layers}; need at least 1"),
        (0 <= args.one_colour <= 1, f"--one-colour is {args.one_colour}; need a fraction from 0 to 1"),
        (out.parent.is_dir() and os.access(out.parent, os.W_OK),
         f"--out {args.out}: its folder {out.parent} is missing or not writable"),
    )
    for ok, why in checks:
        if not ok:
            return why
    return None


if __name__ == "__main__":
    sys.exit(main())
