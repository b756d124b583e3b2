"""python -m mini_clip.explain: what CLIP looked at, for each image and text.

Prints, per image, the texts' probabilities and logits (best first) and the words that mattered; writes,
per (image, text), the relevance map over the original photo, and one contact sheet per image.
Arguments, texts and weights are checked before any image is read, so a usage error writes nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional

from .heatmap import contact_sheet, overlay
from .image import ImageError, load_image, preprocess
from .relevance import METHODS, Relevance, relevance
from .tokenizer import default_tokenizer, tokenize
from .weights import WeightsError, atomic_write, load

DONE = "result.json"  # per-image record, written after its pictures
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
EXAMPLE = """example:
  python -m mini_clip.explain photo.jpg --text "a dog" --text "a cat" --out explain-out
  python -m mini_clip.explain a.jpg b.png --texts-file labels.txt --json --out results/"""


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
    p.add_argument("--method", choices=METHODS, default="chefer")
    p.add_argument("--start-layer", type=int, help="first image block explained: -1 last only (default), 0 all")
    p.add_argument("--start-layer-text", type=int, help="first text block explained: -1 last only (default), 0 all")
    p.add_argument("--signed", action="store_true", help="keep negative evidence (chefer only)")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model's context")
    p.add_argument("--out", type=Path, default=Path("explain-out"), help="output directory (default: explain-out)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--resume", action="store_true", help="skip images whose outputs are all there already")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p.parse_args(argv)


def read_texts(args: argparse.Namespace) -> list[str]:
    texts = list(args.text)
    if args.texts_file is not None:
        try:
            texts += [line.rstrip("\r\n") for line in args.texts_file.read_text(encoding="utf-8").splitlines()
                      if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--texts-file {args.texts_file}: cannot read it ({e.__class__.__name__}: {e})") from None
    if not texts:
        raise UsageError("no text given: add --text \"a photo of a dog\" (repeatable) or --texts-file FILE")
    for k, text in enumerate(texts):
        if not text.strip():
            raise UsageError(f"text {k + 1} is empty or only whitespace: give it some words")
    return texts


def find_images(paths: list[str]) -> list[Path]:
    """Files as given (checked later, one by one), and the images inside directories, sorted."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            found.append(path)
    return found


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "text"


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise OSError(f"--out {out}: cannot write there ({e.strerror or e}); choose another directory") from None


def bar(value: float, width: int = 20) -> str:
    full = round(max(0.0, min(1.0, value)) * width)
    return "#" * full + "." * (width - full)


def report(name: str, rel: Relevance, texts: list[str]) -> str:
    """The terminal table for one image: texts best first, then each text's tokens with bars."""
    lines = [f"{name}", f"  {'prob':>7}  {'logit':>8}  text"]
    order = sorted(range(len(texts)), key=lambda j: -float(rel.probs[0, j]))
    for j in order:
        lines.append(f"  {float(rel.probs[0, j]):7.2%}  {float(rel.logits[0, j]):8.3f}  {texts[j]}")
    for j in order:
        scores = rel.text[j][0]
        total = float(scores.sum()) or 1.0  # shown divided by their sum, as the original notebook
        lines.append(f"  words for {texts[j]!r}:")
        lines += [f"    {label:>14} {bar(float(s) / total)} {float(s) / total:5.2f}"
                  for label, s in zip(rel.labels[j], scores)]
    return "\n".join(lines)


def explain_one(path: Path, folder: Path, model, texts, tokens, args) -> tuple[dict, Relevance]:
    """Explain one image; write its overlays and sheet; return its JSON record and its Relevance."""
    original = load_image(path)
    x, geometry = preprocess(original, model.config.image_resolution, return_geometry=True)
    rel = relevance(model, x[None], tokens, args.start_layer, args.start_layer_text, args.method, args.signed)
    folder.mkdir(parents=True, exist_ok=True)
    records, overlays, titles, words = [], [], [], []
    for j, text in enumerate(texts):
        grid = rel.image[0, j].numpy()
        picture = overlay(original, grid, geometry)
        target = folder / f"{j + 1:02d}-{slug(text)}.png"
        atomic_write(target, lambda f: picture.save(f, format="PNG"))
        pairs = [(label, float(s)) for label, s in zip(rel.labels[j], rel.text[j][0])]
        overlays.append(picture)
        titles.append(f"{text}  p={float(rel.probs[0, j]):.2f}")
        words.append(pairs)
        records.append({"text": text, "logit": float(rel.logits[0, j]), "prob": float(rel.probs[0, j]),
                        "grid": grid.tolist(), "tokens": [{"token": t, "relevance": s} for t, s in pairs],
                        "overlay": str(target)})
    sheet = folder / "sheet.png"
    picture = contact_sheet(original, overlays, titles, words)
    atomic_write(sheet, lambda f: picture.save(f, format="PNG"))
    record = {"image": str(path), "width": original.width, "height": original.height,
              "crop_box": list(geometry.crop_box()), "texts": records, "sheet": str(sheet)}
    atomic_write(folder / DONE, lambda f: f.write(json.dumps(record).encode()))  # written last: marks the image as finished for --resume
    return record, rel


def run(args: argparse.Namespace) -> int:
    texts = read_texts(args)
    if args.signed and args.method != "chefer":
        raise UsageError(f"--signed works with --method chefer only, not {args.method}")
    with warnings.catch_warnings(record=True) as caught:  # the loader's warnings, as one line each
        warnings.simplefilter("always")
        model, _ = load(args.weights, device=args.device, arch=args.arch)
    for w in caught:
        print(f"mini_clip.explain: warning: {w.message}", file=sys.stderr)
    for k, text in enumerate(texts):
        n = len(default_tokenizer().encode(text)) + 2  # + start and end of text
        if n > model.context_length and not args.truncate:
            raise UsageError(f"text {k + 1} ({text[:30]!r}...) has {n} tokens; the model's context is "
                             f"{model.context_length} (use --truncate to cut it)")
    tokens = tokenize(texts, model.context_length, truncate=args.truncate)
    for flag, value, blocks in (("--start-layer", args.start_layer, len(model.visual.transformer.resblocks)),
                                ("--start-layer-text", args.start_layer_text, len(model.transformer.resblocks))):
        if value is not None and not -blocks <= value < blocks:
            raise UsageError(f"{flag} {value} is out of range: this model has {blocks} blocks, so use 0 .. "
                             f"{blocks - 1} (0: all blocks) or -{blocks} .. -1 from the end (-1: the last block only)")
    images = find_images(args.images)
    if not images:
        raise UsageError(f"no images found in {' '.join(args.images)}")
    created = not args.out.exists()
    check_writable(args.out)
    results, failures, used = [], 0, set()
    progress = len(images) > 1 and sys.stderr.isatty() and not args.quiet
    for n, path in enumerate(images, 1):
        name = path.stem if path.stem not in used else f"{path.stem}-{n}"
        used.add(name)
        folder = args.out / name
        if progress:
            print(f"\r[{n}/{len(images)}] {path}", end="", file=sys.stderr, flush=True)
        if args.resume and (folder / DONE).exists():
            record = json.loads((folder / DONE).read_text(encoding="utf-8"))
            if [t["text"] for t in record["texts"]] == texts:  # finished with other texts: do it again
                results.append(record)
                continue
        try:
            record, rel = explain_one(path, folder, model, texts, tokens, args)
        except ImageError as e:
            failures += 1
            print(f"{chr(10) if progress else ''}mini_clip.explain: error: {e}", file=sys.stderr)
            continue
        results.append(record)
        if not args.json and not args.quiet:
            print(report(str(path), rel, texts) + "\n", flush=True)
    if progress:
        print(file=sys.stderr)
    settings = {"weights": args.weights or "embedded scenes model", "method": args.method,
                "start_layer": rel_setting(args.start_layer), "start_layer_text": rel_setting(args.start_layer_text),
                "signed": args.signed, "truncate": args.truncate}
    document = json.dumps({"settings": settings, "results": results}, indent=1)
    if results:  # nothing explained: leave --out as it was
        atomic_write(args.out / "results.json", lambda f: f.write(document.encode()))
    elif created:
        args.out.rmdir()
    if args.json:
        print(document)
    if failures and len(images) > 1:  # for one image, its own error line says it all
        print(f"mini_clip.explain: error: {failures} of {len(images)} images could not be explained (see above)",
              file=sys.stderr)
    return 1 if failures else 0


def rel_setting(value: Optional[int]) -> str | int:
    return "default" if value is None else value


def _terminate(signum, frame):
    raise KeyboardInterrupt  # so SIGTERM, like Ctrl-C, unwinds through the temp-file clean-up


def main(argv: Optional[list[str]] = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(parse_args(argv))
    except UsageError as e:
        if debug:
            raise
        print(f"mini_clip.explain: error: {e}", file=sys.stderr)
        return 2
    except (WeightsError, ImageError, OSError, ValueError) as e:
        if debug:
            raise
        print(f"mini_clip.explain: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mini_clip.explain: interrupted; finished outputs are complete; rerun with --resume to do the rest",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
