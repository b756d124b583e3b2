"""Real photos at dataset scale: the `scale` section of scripts/bench.py (also runnable alone).

    python scripts/bench_scale.py [--quick] [--photos 64]

Every figure compares two timings of the same run on the same machine (wall time: the pipeline's threads and
processes are the point), each run in a fresh process where it says so:

- end to end: `python -m mini_clip.explain` on three 4000 x 3000 JPEGs x 8 texts with ViT-B/32-shaped random
  weights (a .safetensors file), against the core work alone in a fresh process (import, load, decode and
  preprocess the photos, one `relevance` call on them); peak RSS (VmHWM) of the CLI, and of the CLI on one
  48 MP photo;
- folder throughput: images/s of `explain_folder` on N photos x 8 texts at batch sizes 1, 4, 16, with the
  threads (workers=2) and without (workers=0), against the model alone (`relevance` on the preprocessed
  batch);
- stage costs: CPU seconds per photo of each stage (decode, preprocess, drawing copy, model, drawing and
  writing), one after another on one thread: what the pipeline has to overlap;
- cold start: `import mini_clip`, then `mini_clip.load` of the ViT-B/32 .safetensors, timed inside a fresh
  process, and that process's whole wall time (interpreter start included);
- torchrun: `torchrun --nproc-per-node 2 -m mini_clip.explain` (1 torch thread each) against one process
  with 2 torch threads, on the same folder.
The photos are drawn here (smooth colour fields, shapes and noise, so JPEG has work to do) and saved as JPEGs.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import mini_clip
from mini_clip.config import PRESETS

PROMPTS = ["a photo of a dog", "a photo of a cat", "a diagram", "a red car parked on a busy street",
           "two children playing football on the beach", "a bowl of tomato soup with a spoon",
           "an old wooden house in the snow", "a close-up photo of a small bird on a branch"]
GIB = 1 << 30
PHOTOS = 64  # in the throughput runs


def draw_photo(path: Path, width: int, height: int, seed: int) -> Path:
    """A photo-like JPEG: a smooth gradient field, a few shapes, sensor-like noise (quality 92)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    small = coarse.resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(small)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(width // 30, width // 6))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=colour)
    pixels = np.asarray(small, dtype=np.int16)
    row_noise = rng.integers(-6, 7, (height, 1, 1), dtype=np.int16)
    noise = row_noise + rng.integers(-6, 7, (1, width, 3), dtype=np.int16)
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(path, quality=92)
    return path


def child_env(threads: int) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": root}


def run_child(args: list[str], threads: int) -> dict:
    """This file in a fresh process (--child MODE ...): its JSON answer, with the process's wall time."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=child_env(threads))
    wall = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"bench_scale: {' '.join(args[:2])} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": wall}


def peak_rss() -> int:
    """This process's peak resident set (VmHWM), in bytes: its own, not a parent's (see
    bench.memory_child)."""
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def child(mode: str, weights: str, paths: list[str], out: str) -> None:
    """Run one measured thing in this fresh process and print {"seconds": ..., "peak": ...} as JSON."""
    with open("/proc/self/clear_refs", "w") as f:  # the peak so far is the interpreter's: start from here
        f.write("5")
    start = time.perf_counter()
    if mode == "cli":
        import mini_clip.explain as explain
        texts = [a for t in PROMPTS for a in ("--text", t)]
        args = [*paths, "--weights", weights, "--out", out, "--quiet", *texts]
        rc = explain.main(args)
        assert rc == 0, rc
    elif mode == "core":
        import mini_clip as mc
        model, preprocess = mc.load(weights)
        images = torch.stack([preprocess(mc.load_image(p)) for p in paths])
        mc.relevance(model, images, PROMPTS)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak": peak_rss()}))


def save_b32(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "ViT-B-32.safetensors"
    mini_clip.save(mini_clip.CLIP(PRESETS["ViT-B/32"]).eval(), path)  # random: speed depends on shapes only
    return path


def median_of(k: int, fn):
    results = [fn() for _ in range(k)]
    return results[len(results) // 2] if k % 2 else results[0], results


def end_to_end(folder: Path, weights: Path, repeats: int, threads: int) -> list[tuple]:
    photos = [str(draw_photo(folder / f"phone{k}.jpg", 4000, 3000, k)) for k in range(3)]
    big = [str(draw_photo(folder / "big48mp.jpg", 8000, 6000, 9))]
    cli, core = [], []
    for r in range(repeats):  # interleaved: the machine's load moves both alike
        out = str(folder / f"out{r}")
        cli.append(run_child(["--child", "cli", str(weights), *photos, "--out", out], threads))
        core.append(run_child(["--child", "core", str(weights), *photos], threads))
    big_run = run_child(["--child", "cli", str(weights), *big, "--out", str(folder / "out-big")], threads)
    c = statistics.median(x["process_s"] for x in cli)
    k = statistics.median(x["process_s"] for x in core)
    peak = max(x["peak"] for x in cli)
    return [
        ("end to end: CLI, 3 photos 4000x3000 x 8 texts, B/32 shapes (whole process)", f"{c:.2f} s",
         f"core work alone (import, load, preprocess, relevance) {k:.2f} s", f"{c / k:.2f}x the core work",
         "<= 1.3x", "yes" if c / k <= 1.3 else "no"),
        ("peak RSS: CLI, 3 photos 4000x3000 x 8 texts", f"{peak / GIB:.2f} GiB",
         f"core work alone {max(x['peak'] for x in core) / GIB:.2f} GiB", "-", "<= 1 GiB",
         "yes" if peak <= GIB else "no"),
        ("peak RSS: CLI, 1 photo 8000x6000 (48 MP) x 8 texts", f"{big_run['peak'] / GIB:.2f} GiB", "-", "-",
         "<= 1.5 GiB", "yes" if big_run["peak"] <= 1.5 * GIB else "no"),
    ]


def throughput(folder: Path, weights: Path, n: int, batches: tuple[int, ...], threads: int) -> list[tuple]:
    from mini_clip.folder import explain_folder
    torch.set_num_threads(threads)
    photos = [draw_photo(folder / f"f{k:03d}.jpg", 4000, 3000, 100 + k) for k in range(n)]
    model, preprocess = mini_clip.load(weights)
    xs = torch.stack([preprocess(mini_clip.load_image(p)) for p in photos])
    rows = []
    for b in batches:
        mini_clip.relevance(model, xs[:b], PROMPTS)  # warm-up: the pipeline's runs below follow one too
        start = time.perf_counter()
        prepared = mini_clip.prepare_texts(model, PROMPTS)
        for k in range(0, n, b):
            mini_clip.relevance(model, xs[k: k + b], prepared)
        model_rate = n / (time.perf_counter() - start)
        rates = {}
        for workers in (2, 0):
            start = time.perf_counter()
            out = folder / f"out-b{b}-w{workers}"
            for result in explain_folder(model, photos, PROMPTS, out, batch_size=b, workers=workers):
                assert result.error is None, result.error
            rates[workers] = n / (time.perf_counter() - start)
        for workers, label in ((2, "threads on (workers=2)"), (0, "threads off (workers=0)")):
            ratio = rates[workers] / model_rate
            rows.append((f"folder, {n} photos 4000x3000 x 8 texts, batch {b}, {label}",
                         f"{rates[workers]:.2f} images/s", f"model alone {model_rate:.2f} images/s",
                         f"{ratio:.2f}x the model's rate", ">= 0.85x" if workers else "-",
                         ("yes" if ratio >= 0.85 else "no") if workers else "-"))
    return rows


def stage_costs(folder: Path, weights: Path, n: int) -> list[tuple]:
    """CPU seconds per 4000 x 3000 photo of each stage of explain_folder, one after another in this process on
    one torch thread (what the pipeline's threads overlap): the median over n photos, against the model's."""
    from mini_clip.folder import MAX_SIZE
    from mini_clip.heatmap import shrink
    from mini_clip.image import preprocess
    from mini_clip.outputs import write_outputs
    MODEL = "the model: relevance of the photo alone (batch 1), 8 texts prepared once"
    torch.set_num_threads(1)
    model, _ = mini_clip.load(weights)
    prepared = mini_clip.prepare_texts(model, PROMPTS)
    costs = {}

    def timed(stage: str, fn):
        start = time.process_time()
        result = fn()
        costs.setdefault(stage, []).append(time.process_time() - start)
        return result

    photos = [draw_photo(folder / f"s{k:02d}.jpg", 4000, 3000, 300 + k) for k in range(n)]
    mini_clip.relevance(model, preprocess(mini_clip.load_image(photos[0]), 224)[None], prepared)  # warm-up
    for k, path in enumerate(photos):
        original = timed("decode the JPEG (load_image)", lambda: mini_clip.load_image(path))
        x, geometry = timed("OpenAI's preprocessing of the full photo",
                            lambda: preprocess(original, 224, return_geometry=True))
        picture = timed(f"the drawing copy (long side {MAX_SIZE})", lambda: shrink(original, MAX_SIZE))
        rel = timed(MODEL, lambda: mini_clip.relevance(model, x[None], prepared))
        out = folder / f"stages-{k}"
        out.mkdir()
        timed("overlays, contact sheet, their files and result.json (write_outputs)",
              lambda: write_outputs(out, path, picture, geometry, rel, PROMPTS, "jpeg", None))
    model_s = statistics.median(costs[MODEL])
    rows = []
    for stage, times in costs.items():
        t = statistics.median(times)
        rows.append((f"per photo, 1 thread, CPU time: {stage}", f"{t:.3f} s", f"model {model_s:.3f} s",
                     f"{t / model_s:.2f}x the model's", "-", "-"))
    return rows


COLD = """import json, sys, time
start = time.perf_counter()
import mini_clip
imported = time.perf_counter()
mini_clip.load(sys.argv[1])
print(json.dumps({"import_s": imported - start, "load_s": time.perf_counter() - imported}))
"""


def cold_start(weights: Path, repeats: int) -> list[tuple]:
    """`import mini_clip` and `mini_clip.load` timed inside a fresh interpreter that imported nothing else."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", COLD, str(weights)], capture_output=True, text=True,
                             env=child_env(1), check=True)
        runs.append({**json.loads(out.stdout), "process_s": time.perf_counter() - start})
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    return [("cold start, fresh process: import mini_clip", f"{med('import_s'):.2f} s", "-", "-", "-", "-"),
            ("cold start, fresh process: mini_clip.load(ViT-B/32 .safetensors) after the import",
             f"{med('load_s'):.2f} s", "-", "-", "-", "-"),
            ("cold start, fresh process: the whole process (interpreter, import, load, exit)",
             f"{med('process_s'):.2f} s", "-", "-", "-", "-")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(folder: Path, weights: Path, n: int) -> list[tuple]:
    photos = [str(draw_photo(folder / f"t{k:02d}.jpg", 4000, 3000, 200 + k)) for k in range(n)]
    common = ["--weights", str(weights), "--quiet", *[a for t in PROMPTS for a in ("--text", t)]]
    one = [sys.executable, "-m", "mini_clip.explain", *photos, *common, "--out", str(folder / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "mini_clip.explain", *photos, *common,
           "--out", str(folder / "two")]
    times = {}
    for name, command, threads in (("one", one, 2), ("two", two, 1)):
        start = time.perf_counter()
        env = {**child_env(threads), "GLOO_SOCKET_IFNAME": "lo"}
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"bench_scale: {name} failed:\n{out.stderr[-3000:]}")
        times[name] = time.perf_counter() - start
    return [(f"torchrun: {n} photos x 8 texts, 2 processes x 1 thread", f"{times['two']:.2f} s",
             f"1 process x 2 threads {times['one']:.2f} s", f"{times['one'] / times['two']:.2f}x faster",
             "-", "-")]


def run(quick: bool, photos: int) -> list[tuple]:
    """All the section's rows: (what, mini_clip, reference, ratio, target, met)."""
    with tempfile.TemporaryDirectory(prefix="mini_clip_scale_") as tmp:
        folder = Path(tmp)
        weights = save_b32(folder)
        rows = end_to_end(folder, weights, 1 if quick else 3, 2)
        rows += stage_costs(folder, weights, 3 if quick else 8)
        rows += throughput(folder, weights, 4 if quick else photos, (1, 4) if quick else (1, 4, 16), 2)
        rows += cold_start(weights, 1 if quick else 3)
        rows += torchrun(folder, weights, 2 if quick else 8)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one repeat, 4 photos, batch sizes 1 and 4")
    p.add_argument("--photos", type=int, default=PHOTOS,
                   help=f"photos in the throughput runs (default {PHOTOS})")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, weights, *paths = args.child
        child(mode, weights, paths, args.out)
        return
    for row in run(args.quick, args.photos):
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
