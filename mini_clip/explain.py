"""python -m mini_clip.explain: what CLIP looked at, for each image and text.

Prints, per image, the texts' probabilities and logits (best first) and the words that mattered; writes,
per (image, text), the relevance map over the original photo, and one contact sheet per image.
Arguments, texts, device and weights are checked before any image is read, so a usage error writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, TextIO

import torch

from .folder import BATCH_SIZE, MAX_SIZE, WORKERS, explain_folder
from .heatmap import word_scale
from .image import ImageError
from .outputs import FORMATS, RESULTS, OutputError, printable, write
from .relevance import METHODS, Relevance, settings
from .tokenizer import default_tokenizer
from .weights import WeightsError, load

MAX_TEXTS_FILE = 16 << 20  # bytes: a texts file is labels, not a corpus
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
EXAMPLE = """example:
  python -m mini_clip.explain photo.jpg --text "a dog" --text "a cat" --out explain-out
  python -m mini_clip.explain a.jpg b.png --texts-file labels.txt --json --out results/

outputs: OUT/results.json, and per image a folder OUT/NAME/ with sheet.png, result.json and one overlay per
  text (01-a-dog.jpg, ... in --format), its long side at most --max-size pixels. NAME is the image's file name without its suffix, made safe (path separators,
  control characters and leading dots replaced or removed, at most 120 bytes); when two inputs' names
  clash (ignoring case), or a name is reserved (results.json), each of those gets -HASH, the first 8 hex
  digits of the SHA-256 of its absolute path. The same inputs give the same folders on every run.
--resume skips an image only if its result.json records the same image file (absolute path, size,
  modification time), the same weights file (path, size, modification time), texts, --method,
  --start-layer(-text), --signed, --truncate, --max-size and --format, and every file it lists exists;
  otherwise it is redone.
  A (re)done image's folder keeps only the current outputs: the tool's own stale overlays are removed.
word scores (terminal and sheet): relevance / the text's largest |relevance|, in [-1, 1]; with --signed,
  negative scores (evidence against the text) get '-' bars in the terminal and blue shades on the sheet.
several processes or GPUs: torchrun --nproc-per-node K -m mini_clip.explain DIR ... splits the images across
  the K processes (torch.distributed: gloo on CPU, NCCL with --device cuda, each process on GPU LOCAL_RANK);
  each writes its own images' folders and prints their tables; process 0 writes results.json for all.
  Several machines: torchrun --nnodes M --node-rank R --master-addr HOST ..., --out on a shared disk."""


class UsageError(Exception):
    """Bad arguments: exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see --help)")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = Parser(prog="python -m mini_clip.explain", description=__doc__, epilog=EXAMPLE,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files; a directory means the images in it")
    p.add_argument("--text", action="append", default=[], help="a text to score and explain (repeatable)")
    p.add_argument("--texts-file", type=Path, help="a file with one text per line")
    p.add_argument("--weights", help="checkpoint file or Hugging Face directory, or a name such as ViT-B/32 "
                                     "(default: the embedded scenes model)")
    p.add_argument("--arch", help="OpenCLIP architecture of weights that do not state theirs, e.g. ViT-H-14 "
                                   "(names: mini_clip.zoo.ARCHS)")
    p.add_argument("--method", choices=METHODS, help="chefer (Chefer et al.), attention, rollout, gradcam, or "
                   "legrad (image maps only); default: what the weights recommend, else chefer")
    p.add_argument("--start-layer", type=int, help="first image block explained: -1 last only (default), 0 all")
    p.add_argument("--start-layer-text", type=int, help="first text block explained: -1 last only (default), 0 all")
    p.add_argument("--signed", action="store_true", help="keep negative evidence (chefer only; see word scores)")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model's context")
    p.add_argument("--out", type=Path, default=Path("explain-out"), help="output directory (default: explain-out)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--resume", action="store_true", help="skip images finished before with the same image, weights, texts and "
                                                        "settings (see below)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="N",
                   help=f"images explained together (default: {BATCH_SIZE}); memory grows with N x texts")
    p.add_argument("--max-size", type=int, default=MAX_SIZE, metavar="PIXELS",
                   help=f"overlays' long side at most (default: {MAX_SIZE}: 40+ pixels for each of a map's "
                        "cells, and cheap to draw; 0: the photo's own size)")
    p.add_argument("--format", choices=tuple(FORMATS), default="jpeg",
                   help="overlay format (default: jpeg, quality 90; png is lossless, webp smaller)")
    p.add_argument("--workers", type=int, default=WORKERS, metavar="N",
                   help=f"decoding and drawing threads beside the model (default: {WORKERS}; 0: none)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text)
    if args.texts_file is not None:
        texts += read_texts_file(args.texts_file)
    if not texts:
        raise UsageError("no text given: add --text \"a photo of a dog\" (repeatable) or --texts-file FILE")
    for k, text in enumerate(texts):
        if not text.strip():
            raise UsageError(f"text {k + 1} is empty or only whitespace: give it some words")
    return texts


def read_texts_file(path: Path) -> list[str]:
    """The file's non-blank lines. Only a regular file is read (a FIFO or device would block or never end),
    up to MAX_TEXTS_FILE bytes; a UTF-8 byte order mark, as some editors write, is not part of the text."""
    where = f"--texts-file {path}"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{where}: not a regular file; give a text file with one text per line")
        if info.st_size > MAX_TEXTS_FILE:
            raise UsageError(f"{where}: {info.st_size} bytes, more than the {MAX_TEXTS_FILE} allowed")
        with open(path, "rb") as f:
            data = f.read(MAX_TEXTS_FILE + 1)
        lines = data[:MAX_TEXTS_FILE].decode("utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{where}: cannot read it ({e.__class__.__name__}: {e})") from None
    return [line for line in lines if line.strip()]


def check_device(name: str) -> None:
    """A device this build of torch can hold tensors on, or a UsageError naming the ones it can."""
    available = ["cpu", *(f"cuda:{k}" for k in range(torch.cuda.device_count()))]
    available += ["mps"] if torch.backends.mps.is_available() else []
    hint = f"devices available here: {', '.join(available)}"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a torch device name; {hint}") from None
    if device.type == "meta":
        raise UsageError(f"--device meta holds no data, so nothing can be computed on it; {hint}")
    try:
        torch.empty(1, device=device)
    except Exception:  # "not compiled with CUDA" is an AssertionError, "invalid device" a RuntimeError, ...
        raise UsageError(f"--device {name} is not available in this torch build or on this machine; {hint}") \
            from None


def find_images(paths: list[str]) -> list[Path]:
    """Files as given (checked later, one by one), and the images inside directories, sorted; each file
    once (the same file twice, or via a directory and by name, would be explained twice into one folder)."""
    found, seen = [], set()
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            inside = [path]
        for p in inside:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                found.append(p)
    return found


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OSError(f"--out {out}: cannot write there ({e.strerror or e}); choose another directory") from None


def bar(value: float, width: int = 20) -> str:
    """|value| (in [-1, 1]) as a bar of `width`: '#' for evidence for the text, '-' for evidence against."""
    full = round(min(1.0, abs(value)) * width)
    return ("#" if value >= 0 else "-") * full + "." * (width - full)


def report(name: str, rel: Relevance, texts: list[str]) -> str:
    """The terminal table for one image: texts best first, then each text's words with bars."""
    order = sorted(range(len(texts)), key=lambda j: -float(rel.probs[0, j]))
    if len(texts) == 1:  # the probability says nothing: the logit first
        lines = [printable(name), f"  {'logit':>8}  {'prob':>7}  text",
                 f"  {float(rel.logits[0, 0]):8.3f}  {float(rel.probs[0, 0]):7.2%}  {printable(texts[0])}",
                 "  (one text: a softmax over the texts given is always 100 %; compare logits, or add texts)"]
    else:
        lines = [printable(name), f"  {'prob':>7}  {'logit':>8}  text"]
        lines += [f"  {float(rel.probs[0, j]):7.2%}  {float(rel.logits[0, j]):8.3f}  {printable(texts[j])}"
                  for j in order]
    if rel.text is None:
        lines.append(f"  words: none ({rel.method} explains the image only)")
        return "\n".join(lines)
    lines.append("  words: relevance / the text's largest |relevance| ('-' bars: evidence against the text)")
    for j in order:
        lines.append(f"  words for '{printable(texts[j])}':")
        lines += [f"    {printable(label):>14} {bar(v)} {v:5.2f}"
                  for label, v in zip(rel.labels[j], word_scale(rel.text[j][0].numpy()))]
    return "\n".join(lines)


class Progress:
    """How far a run is. On a terminal: '[n/N] images/s, time left  image' on one line of stderr, rewritten in
    place and erased before anything else is printed, so it never runs into a result or an error line. In a
    log (no terminal): a line every `every` seconds. Off: nothing.

    The rate counts the images explained in this run, not those resumed (they take no time)."""

    ERASE = "\r\033[K"  # carriage return, then erase to the end of the line
    EVERY = 30.0  # seconds between lines in a log

    def __init__(self, total: int, mode: Optional[str], stream: TextIO = sys.stderr, every: float = EVERY,
                 clock: Callable[[], float] = time.monotonic):
        assert mode in (None, "terminal", "log")
        self.total, self.mode, self.stream, self.every, self.clock = total, mode, stream, every, clock
        self.shown, self.start, self.last, self.worked = False, clock(), clock(), 0

    def done(self, n: int, path: Path, worked: bool) -> None:
        """Image `path`, the n-th of the total, is finished (worked: explained now, not resumed)."""
        self.worked += worked
        if self.mode == "terminal":
            self._line(f"[{n}/{self.total}] {self.rate(n)}", path)
        elif self.mode == "log" and self.clock() - self.last >= self.every and n < self.total:
            self.last = self.clock()
            print(f"mini_clip.explain: progress: {n}/{self.total} images, {self.rate(n)}", file=self.stream,
                  flush=True)

    def rate(self, n: int) -> str:
        seconds = self.clock() - self.start
        if not self.worked or seconds <= 0:
            return "-- images/s"
        per_second = self.worked / seconds
        return f"{per_second:.2f} images/s, {duration((self.total - n) / per_second)} left"

    def _line(self, text: str, path: Path) -> None:
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            columns = 80
        name = printable(str(path))
        room = columns - 1 - len(text) - 2  # a wrapped line could not be erased: cut the path's start
        line = f"{text}  {name if len(name) <= room else '…' + name[len(name) - room + 1:]}"[: columns - 1]
        print(self.ERASE + line, end="", file=self.stream, flush=True)
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            print(self.ERASE, end="", file=self.stream, flush=True)
            self.shown = False


def duration(seconds: float) -> str:
    """'42 s', '3 min 5 s', '2 h 7 min': what a person reads at a glance."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def error(message: str) -> None:
    print(f"mini_clip.explain: error: {printable(message)}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    texts = read_texts(args)
    check_device(args.device)
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--max-size", args.max_size, 0),
                               ("--workers", args.workers, 0)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    if args.signed and args.method not in (None, "chefer"):
        raise UsageError(f"--signed works with --method chefer only, not {args.method}")
    rank, world, device = ranks(args.device)
    with warnings.catch_warnings(record=True) as caught:  # the loader's warnings, as one line each
        warnings.simplefilter("always")
        model, _ = load(args.weights, device=device, arch=args.arch)
    for w in caught:
        print(f"mini_clip.explain: warning: {w.message}", file=sys.stderr)
    check_texts(texts, model.context_length, args.truncate)
    args.given = (args.method, args.start_layer, args.start_layer_text)
    try:  # what is given, else what the weights recommend, else the original's defaults
        method, start, start_text = settings(model, args.method, args.start_layer, args.start_layer_text,
                                             ("--start-layer", "--start-layer-text"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.signed and method != "chefer":
        raise UsageError(f"--signed works with method chefer only; the weights recommend {method}: add "
                         "--method chefer")
    args.method, args.start_layer, args.start_layer_text = method, start, start_text  # resolved, for all images
    if not args.quiet and not args.json and rank == 0:
        print(describe(model, args) + "\n", flush=True)
    images = find_images(args.images)
    if not images:
        raise UsageError(f"no images found in {' '.join(args.images)}")
    created = not args.out.exists()
    check_writable(args.out)
    if world > 1:
        start_group(device)
    results, failures = explain_all(model, images, texts, args, rank, world)
    if world > 1:  # every process's records, in input order, for process 0 to write
        results, failures = gather(results, failures, world)
        if rank != 0:
            return 1 if failures else 0
    results = [record for _, record in sorted(results, key=lambda pair: pair[0])]
    used = {"weights": args.weights or "embedded scenes model", **resume_settings(args),
            "recommended_by_weights": model.recommended}
    document = json.dumps({"settings": used, "results": results}, indent=1)
    written = True
    if results:  # nothing explained: leave --out as it was
        try:
            write(args.out / RESULTS, lambda f: f.write(document.encode()))
        except OutputError as e:
            written = False
            error(str(e))
    elif created and not any(args.out.iterdir()):
        args.out.rmdir()
    if args.json:
        print(document)
    if failures and len(images) > 1:  # for one image, its own error line says it all
        error(f"{failures} of {len(images)} images could not be explained (see above)")
    return 1 if failures or not written else 0


def check_texts(texts: list[str], context: int, truncate: bool) -> None:
    """Every text has words, and fits the context unless --truncate: a UsageError before any image is read."""
    for k, text in enumerate(texts):
        n = len(default_tokenizer().encode(text)) + 2  # + start and end of text
        if n == 2:
            raise UsageError(f"text {k + 1} ({text[:30]!r}) has no words the tokenizer keeps (only control "
                             "characters?): give it some words")
        if n > context and not truncate:
            raise UsageError(f"text {k + 1} ({text[:30]!r}...) has {n} tokens; the model's context is "
                             f"{context} (use --truncate to cut it)")


def explain_all(model, images: list[Path], texts: list[str], args: argparse.Namespace, rank: int, world: int
                ) -> tuple[list[tuple[int, dict]], int]:
    """This process's share of the images, explained, printed as they finish: ((position, record)...,
    failures)."""
    positions = range(rank, len(images), world)
    mode = None if args.quiet else "terminal" if sys.stderr.isatty() else "log"
    progress = Progress(len(positions), mode if len(positions) > 1 else None)
    results, failures = [], 0
    done = explain_folder(model, images, texts, args.out, method=args.method, start_layer=args.start_layer,
                          start_layer_text=args.start_layer_text, signed=args.signed, truncate=args.truncate,
                          batch_size=args.batch_size, workers=args.workers, max_size=args.max_size,
                          format=args.format, resume=args.resume, weights=args.weights, shard=(rank, world))
    for n, (position, result) in enumerate(zip(positions, done), 1):
        progress.clear()
        if result.error is not None:
            failures += 1
            error(result.error)
        else:
            results.append((position, result.record))
            if result.relevance is not None and not args.json and not args.quiet:
                print(report(str(result.path), result.relevance, texts) + "\n", flush=True)
        progress.done(n, result.path, worked=result.relevance is not None)
    progress.clear()
    return results, failures


def ranks(device: str) -> tuple[int, int, str]:
    """(rank, world size, device) of this process: under torchrun (WORLD_SIZE set), its place among the
    processes and, for CUDA, the GPU of its LOCAL_RANK; otherwise (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    rank = int(os.environ["RANK"])
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return rank, world, device


def start_group(device: str) -> None:
    """Join torchrun's process group: NCCL between GPUs, gloo on CPUs (torch.distributed reads MASTER_ADDR,
    MASTER_PORT, RANK and WORLD_SIZE from the environment torchrun sets)."""
    import torch.distributed as dist  # only under torchrun
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))  # NCCL's object exchange runs on this process's GPU
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def gather(results: list[tuple[int, dict]], failures: int, world: int) -> tuple[list[tuple[int, dict]], int]:
    """Every process's (position, record) pairs and failure count, in every process; then the group ends."""
    import torch.distributed as dist
    shares = [None] * world
    dist.all_gather_object(shares, (results, failures))
    dist.destroy_process_group()
    return [pair for share, _ in shares for pair in share], sum(count for _, count in shares)


def resume_settings(args: argparse.Namespace) -> dict:
    """The settings an image's outputs depend on, as recorded for --resume (and in results.json)."""
    return {"method": args.method, "start_layer": args.start_layer, "start_layer_text": args.start_layer_text,
            "signed": args.signed, "truncate": args.truncate, "max_size": args.max_size, "format": args.format}


def describe(model, args: argparse.Namespace) -> str:
    """One line: the method and the blocks explained, and where the settings came from."""
    blocks = (model.config.vision_layers, model.config.transformer_layers)
    flags = ("--method", "--start-layer", "--start-layer-text")[: 2 if args.method == "legrad" else 3]
    given = [flag for flag, value in zip(flags, args.given) if value is not None]
    advised = model.recommended and model.recommended.get("method", "chefer") == args.method
    rest = "as the weights recommend" if advised else "the method's defaults"
    source = "; ".join([f"given: {', '.join(given)}"] * bool(given) + [f"the rest {rest}"] * (len(given) < len(flags)))
    towers = f"image blocks {args.start_layer}..{blocks[0] - 1}"
    if args.method != "legrad":
        towers += f", text blocks {args.start_layer_text}..{blocks[1] - 1}"
    return f"settings: {args.method}{' (signed)' if args.signed else ''}, {towers} ({source})"


def _terminate(signum, frame):
    raise KeyboardInterrupt  # so SIGTERM, like Ctrl-C, unwinds through the temp-file clean-up


def main(argv: Optional[list[str]] = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    for stream in (sys.stdout, sys.stderr):  # a text or file name the terminal's encoding lacks: escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return run(parse_args(argv))
    except UsageError as e:
        if debug:
            raise
        error(str(e))
        return 2
    except (WeightsError, ImageError, OutputError, OSError, ValueError) as e:
        if debug:
            raise
        error(str(e))
        return 1
    except KeyboardInterrupt:
        print("mini_clip.explain: interrupted; finished outputs are complete; rerun with --resume to do the rest",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
