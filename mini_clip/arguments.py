"""The command line of python -m mini_clip.explain: its flags, and the checks that need no model.

Every check here raises UsageError (exit status 2) before any weights are loaded or image is read.
"""
from __future__ import annotations

import argparse
import stat
from pathlib import Path
from typing import Optional

import torch

from .folder import BATCH_SIZE, MAX_SIZE, WORKERS
from .heatmap import WORD_SCALE
from .outputs import FORMAT, FORMATS, NAME_BYTES
from .relevance import METHODS
from .terminal import PROG

MAX_TEXTS_FILE = 16 << 20  # bytes: a texts file is labels, not a corpus
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# The flags of the library's arguments, as `parse_args` spells them: for errors and the settings line.
START_FLAGS = ("--method", "--start-layer", "--start-layer-text")
SIZE_FLAGS = ("--batch-size", "--workers", "--max-size")
EXAMPLE = f"""example:
  python -m {PROG} photo.jpg --text "a dog" --text "a cat" --out explain-out
  python -m {PROG} a.jpg b.png --texts-file labels.txt --json --out results/

outputs: OUT/results.json, and per image a folder OUT/NAME/ with sheet.png, result.json and one overlay per
  text (01-a-dog.jpg, ... in --format), its long side at most --max-size pixels. \
NAME is the image's file name without its suffix, made safe (path separators,
  control characters and leading dots replaced or removed, at most {NAME_BYTES} bytes); when two inputs' \
names
  clash (ignoring case), or a name is reserved (results.json), each of those gets -HASH, the first 8 hex
  digits of the SHA-256 of its absolute path. The same inputs give the same folders on every run.
--resume skips an image only if its result.json records the same image file (absolute path, size,
  modification time), the same weights file (path, size, modification time), texts, --method,
  --start-layer(-text), --signed, --truncate, --max-size and --format, and every file it lists exists;
  otherwise it is redone.
  A (re)done image's folder keeps only the current outputs: the tool's own stale overlays are removed.
word scores (terminal and sheet): {WORD_SCALE}, in [-1, 1]; with --signed,
  negative scores (evidence against the text) get '-' bars in the terminal and blue shades on the sheet.
several processes or GPUs: torchrun --nproc-per-node K -m {PROG} DIR ... splits the images across
  the K processes (torch.distributed: gloo on CPU, NCCL with --device cuda, each process on GPU LOCAL_RANK);
  each writes its own images' folders and prints their tables; process 0 writes results.json for all.
  Several machines: torchrun --nnodes M --node-rank R --master-addr HOST ..., --out on a shared disk."""


class UsageError(Exception):
    """Bad arguments: exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see --help)")


def parse_args(argv: Optional[list[str]], description: str) -> argparse.Namespace:
    """The flags of `argv` (None: sys.argv); `description` heads --help."""
    p = Parser(prog=f"python -m {PROG}", description=description, epilog=EXAMPLE,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files; a directory means the images in it")
    p.add_argument("--text", action="append", default=[], help="a text to score and explain (repeatable)")
    p.add_argument("--texts-file", type=Path, help="a file with one text per line")
    p.add_argument("--weights", help="checkpoint file or Hugging Face directory, or a name such as ViT-B/32 "
                                     "(default: the embedded scenes model)")
    p.add_argument("--arch", help="OpenCLIP architecture of weights that do not state theirs, e.g. ViT-H-14 "
                                  "(names: mini_clip.zoo.ARCHS)")
    p.add_argument("--method", choices=METHODS,
                   help="chefer (Chefer et al.), attention, rollout, gradcam, or legrad (image maps only); "
                        "default: what the weights recommend, else chefer")
    p.add_argument("--start-layer", type=int,
                   help="first image block explained: -1 last only (default), 0 all")
    p.add_argument("--start-layer-text", type=int,
                   help="first text block explained: -1 last only (default), 0 all")
    p.add_argument("--signed", action="store_true",
                   help="keep negative evidence (chefer only; see word scores)")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model's context")
    p.add_argument("--out", type=Path, default=Path("explain-out"),
                   help="output directory (default: explain-out)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--resume", action="store_true", help="skip images finished before with the same image, "
                   "weights, texts and settings (see below)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, metavar="N",
                   help=f"images explained together (default: {BATCH_SIZE}); memory grows with N x texts")
    p.add_argument("--max-size", type=int, default=MAX_SIZE, metavar="PIXELS",
                   help=f"overlays' long side at most (default: {MAX_SIZE}: 40+ pixels for each of a map's "
                        "cells, and cheap to draw; 0: the photo's own size)")
    p.add_argument("--format", choices=tuple(FORMATS), default=FORMAT,
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
        raise UsageError(f"--device {name} is not available in this torch build or on this machine; "
                         f"{hint}") from None


def find_images(paths: list[str]) -> list[Path]:
    """Files as given (checked later, one by one), and the images inside directories, sorted; each file
    once (the same file twice, or via a directory and by name, would be explained twice into one folder)."""
    found = []
    seen = set()  # resolved paths
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
