"""python -m mini_clip.explain: what CLIP looked at, for each image and text.

Prints, per image, the texts' probabilities and logits (best first) and the words that mattered; writes,
per (image, text), the relevance map over the original photo, and one contact sheet per image.
Arguments, texts, device and weights are checked before any image is read, so a usage error writes nothing.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Optional

from .arguments import SIZE_FLAGS, START_FLAGS, UsageError, check_device, find_images, parse_args, read_texts
from .folder import check_sizes, explain_folder
from .image import ImageError
from .loading import load
from .model import CLIP
from .outputs import RESULTS, OutputError, RunSettings, write
from .relevance import METHODS, PreparedTexts, prepare_texts, settings
from .terminal import PROG, Progress, describe, error, report, warning
from .tokenizer import TextTooLong
from .torchrun import Records, gather, ranks, start_group
from .weights import WeightsError


@contextmanager
def usage_errors() -> Iterator[None]:
    """The library refusing a value given on the command line (a ValueError): a UsageError, exit status 2."""
    try:
        yield
    except ValueError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Check everything that needs no image, then explain the images; the exit status."""
    texts = read_texts(args)
    check_device(args.device)
    with usage_errors():
        check_sizes(args.batch_size, args.workers, args.max_size, SIZE_FLAGS)
    signs = " or ".join(name for name, m in METHODS.items() if m.signed)  # the methods with a signed variant
    if args.signed and args.method is not None and not METHODS[args.method].signed:
        raise UsageError(f"--signed works with --method {signs} only, not {args.method}")
    rank, world, device = ranks(args.device)
    model = load_model(args, device)
    given = (args.method, args.start_layer, args.start_layer_text)
    with usage_errors():  # what is given, else what the weights recommend, else the original's defaults
        method, start, start_text = settings(model, *given, START_FLAGS[1:])
    prepared = prepare(model, texts, method, start_text, args.truncate)
    if args.signed and not METHODS[method].signed:
        raise UsageError(f"--signed works with method {signs} only; the weights recommend {method}: add "
                         f"--method {signs.split(' or ')[0]}")
    resolved = RunSettings(method, start, start_text, args.signed, args.truncate, args.max_size, args.format)
    if not args.quiet and not args.json and rank == 0:
        print(describe(model, resolved, START_FLAGS, given) + "\n", flush=True)
    images = find_images(args.images)
    if not images:
        raise UsageError(f"no images found in {' '.join(args.images)}")
    created = not args.out.exists()
    check_writable(args.out)
    if world > 1:
        start_group(device)
    results, failures = explain_all(model, images, texts, prepared, resolved, args, rank, world)
    if world > 1:  # every process's records, in input order, for process 0 to write
        results, failures = gather(results, failures, world)
        if rank != 0:
            return 1 if failures else 0
    records = [record for _, record in sorted(results, key=lambda pair: pair[0])]
    used = {"weights": args.weights or "embedded scenes model", **asdict(resolved),
            "recommended_by_weights": model.recommended}
    document = json.dumps({"settings": used, "results": records}, indent=1)
    written = True
    if records:  # nothing explained: leave --out as it was
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


def prepare(model: CLIP, texts: list[str], method: str, start_text: int, truncate: bool) -> PreparedTexts:
    """The texts prepared for the whole run (tokenized once, here), each checked before any image is read:
    it fits the model's context (unless --truncate) and has words; a UsageError names the text otherwise."""
    try:
        prepared = prepare_texts(model, texts, method, start_text, truncate)
    except TextTooLong as e:  # the library's message, the text named as the CLI counts and shows texts
        raise UsageError(e.message(f"text {e.index + 1} ({texts[e.index][:30]!r}...)")) from None
    for k, row in enumerate(prepared.tokens):
        if not row[2:].any():  # start and end of text, then only padding: the tokenizer kept nothing
            raise UsageError(f"text {k + 1} ({texts[k][:30]!r}) has no words the tokenizer keeps (only "
                             "control characters?): give it some words")
    return prepared


def load_model(args: argparse.Namespace, device: str) -> CLIP:
    """The weights of --weights (and --arch) on `device`; the loader's warnings printed as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = load(args.weights, device=device, arch=args.arch)
    for w in caught:
        warning(str(w.message))
    return model


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OSError(f"--out {out}: cannot write there ({e.strerror or e}); choose another "
                      "directory") from None


def explain_all(model: CLIP, images: list[Path], texts: list[str], prepared: PreparedTexts,
                resolved: RunSettings, args: argparse.Namespace, rank: int, world: int
                ) -> tuple[Records, int]:
    """This process's share of the images, explained, printed as they finish: ((position, record)...,
    failures)."""
    positions = range(rank, len(images), world)
    mode = None if args.quiet else "terminal" if sys.stderr.isatty() else "log"
    progress = Progress(len(positions), mode if len(positions) > 1 else None)
    results = []
    failures = 0
    done = explain_folder(model, images, texts, args.out, method=resolved.method,
                          start_layer=resolved.start_layer, start_layer_text=resolved.start_layer_text,
                          signed=resolved.signed, truncate=resolved.truncate, batch_size=args.batch_size,
                          workers=args.workers, max_size=resolved.max_size, format=resolved.format,
                          resume=args.resume, weights=args.weights, shard=(rank, world), prepared=prepared)
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


def _terminate(signum, frame):
    raise KeyboardInterrupt  # so SIGTERM, like Ctrl-C, unwinds through the temp-file clean-up


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; its exit status: 0 done, 1 a runtime error (weights, an image, an output),
    2 a usage error (arguments), 130 interrupted. Each error is one line on stderr; --debug raises it."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    for stream in (sys.stdout, sys.stderr):  # a text or file name the terminal's encoding lacks: escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return run(parse_args(argv, __doc__))
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
        print(f"{PROG}: interrupted; finished outputs are complete; rerun with --resume to do the rest",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
