"""Does a long `python -m mini_clip.explain` run hold its memory steady? Resident memory at image 100 and at
N.

    python scripts/long_run.py                          # 1000 scenes x 5 texts, a small random model
    python scripts/long_run.py -n 300 --weights weights/scenes-vit-t8.safetensors
    python scripts/long_run.py -n 300 --per-call        # main() once per image: setup and teardown too

Draws N scenes (mini_clip.scenes.make_scene(seed, size=96)) into a temporary folder as PNGs, then runs the
CLI's own entry point, `mini_clip.explain.main`, in this process: by default ONE call over the whole folder,
as a user would, with `mini_clip.folder._draw` wrapped here (nothing is added to the library) to read this
process's resident set size (VmRSS) as each image finishes; with --per-call, one `main([...])` per image,
which also repeats loading the weights. Prints RSS every 100 images, at image 100 and at N, and the growth in
% (target: < 10 %). The run's own results list grows by design: results.json is written at the end.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import mini_clip
import mini_clip.explain as explain
import mini_clip.folder as folder
from mini_clip.scenes import make_scene

TEXTS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a white hexagon"]
SMALL = mini_clip.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64,
                             vision_patch_size=8, transformer_width=64, transformer_heads=1,
                             transformer_layers=2)
TARGET = 10.0  # % growth from image 100 to image N that still counts as steady


def rss_mb() -> float:
    """This process's resident set size now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=1000, help="images (default 1000; at least 100)")
    p.add_argument("--weights", help="weights file (default: a small random model saved to a temporary file)")
    p.add_argument("--per-call", action="store_true", help="call explain.main once per image")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    if args.n < 100:
        p.error("-n must be at least 100: memory is compared between image 100 and image N")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="long_run.") as tmp:
        root = Path(tmp)
        weights = args.weights
        if weights is None:
            torch.manual_seed(0)
            weights = str(root / "small.safetensors")
            mini_clip.save(mini_clip.CLIP(SMALL), weights)
        images = root / "images"
        images.mkdir()
        for seed in range(args.n):
            make_scene(seed, size=96).image.save(images / f"scene-{seed:05d}.png")
        out = root / "out"
        texts = [a for t in TEXTS for a in ("--text", t)]
        common = texts + ["--weights", weights, "--out", str(out), "--quiet"]

        samples: dict[int, float] = {}
        start = time.perf_counter()

        def sample(done: int) -> None:
            if done == 1 or done % 100 == 0 or done == args.n:
                samples[done] = rss_mb()
                rate = (time.perf_counter() - start) / done
                print(f"image {done:5d}: RSS {samples[done]:7.1f} MiB  ({rate * 1000:.0f} ms/image)",
                      flush=True)

        if args.per_call:
            status = 0
            for k, path in enumerate(sorted(images.iterdir()), 1):
                status |= explain.main([str(path), *common])
                sample(k)
        else:
            inner, done, lock = folder._draw, [0], threading.Lock()

            def counted(*a, **kw):
                result = inner(*a, **kw)
                with lock:  # drawn in worker threads
                    done[0] += 1
                    sample(done[0])
                return result

            folder._draw = counted  # the pipeline looks it up at each call
            try:
                status = explain.main([str(images), *common])
            finally:
                folder._draw = inner
        seconds = time.perf_counter() - start

    if status != 0 or 100 not in samples or args.n not in samples:
        print(f"the run failed (status {status})", file=sys.stderr)
        return 1
    growth = 100 * (samples[args.n] / samples[100] - 1)
    print(f"RSS at image 100: {samples[100]:.1f} MiB; at image {args.n}: {samples[args.n]:.1f} MiB; "
          f"growth {growth:+.2f} % (target < {TARGET:g} %)")
    print(f"{args.n} images x {len(TEXTS)} texts in {seconds:.0f} s ({1000 * seconds / args.n:.0f} ms/image; "
          f"1000 images would take about {seconds / args.n * 1000 / 60:.1f} min)")
    return 0 if growth < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
