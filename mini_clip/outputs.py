"""What python -m mini_clip.explain writes for an image, where, and when an earlier run's outputs can be
reused (--resume).

An image's folder holds one overlay per text, a contact sheet and its record (result.json, written last: it
marks the image finished). Every name derived from an input stays one plain entry of --out, distinct from
every other input's and from the tool's own files, and is the same on every run with the same inputs. An
image's outputs are reused only if its record says they were made from the same image file, weights, texts
and settings, and all of them are still there. Only files in the tool's own naming pattern are ever removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from PIL import Image

from .files import atomic_write
from .heatmap import SHEET_TEXTS, contact_sheet, fit, overlays
from .image import CropGeometry
from .relevance import Relevance
from .weights import DEFAULT_WEIGHTS

DONE = "result.json"  # per-image record, written after its pictures
RESULTS = "results.json"  # the run's record, in --out beside the image folders
SHEET = "sheet.png"
# The files this tool writes in an image folder besides DONE and SHEET: overlays (`overlay_name`) and the
# temporary files of `atomic_write` that a killed run may leave. Only these are ever removed as stale.
OWN_FILES = re.compile(r"\d{2,}-[a-z0-9-]+\.(png|jpg|webp)|\..+\.\d+\.tmp")
# Overlay formats: (suffix, PIL format, encoder options). The overlays are photos: JPEG at quality 90 is the
# default, about 10x smaller and 30x faster to encode than PNG, its artefacts below the heat scale's steps.
# PNG (lossless) at zlib level 1: level 6, PIL's default, takes twice as long for 10 % less on photos, and
# 3.4x as long on a contact sheet (0.12 s for 9 panels, as long as ViT-B/32's explanation of the photo with
# 8 texts; level 1: 0.035 s, 27 % more bytes). The sheet (text on a flat background) is always PNG, at this
# level.
# WebP at quality 85: smaller than JPEG, slower to encode.
FORMATS = {"jpeg": (".jpg", "JPEG", {"quality": 90}), "png": (".png", "PNG", {"compress_level": 1}),
           "webp": (".webp", "WEBP", {"quality": 85})}
FORMAT = "jpeg"  # the default
RESERVED = {RESULTS.casefold()}  # names in --out that the tool writes itself: no image folder may take one
WINDOWS_DEVICES = {"con", "prn", "aux", "nul", *(f"{d}{k}" for d in ("com", "lpt") for k in range(1, 10))}
NAME_BYTES = 120  # an image folder's name before its hash, in UTF-8 bytes: the whole fits the usual 255


class OutputError(Exception):
    """An output of one image could not be written: that image fails, the others go on."""


def safe_name(stem: str) -> str:
    """A file name derived from an image's stem that stays one plain entry of --out on any filesystem: no
    path separators or characters Windows refuses, no control characters, no leading dots ('.', '..',
    hidden files) nor trailing dots and spaces, at most NAME_BYTES bytes of UTF-8 (cut between characters)."""
    name = "".join("_" if unicodedata.category(c)[0] == "C" or c in '/\\:*?"<>|' else c for c in stem)
    name = name.encode("utf-8")[:NAME_BYTES].decode("utf-8", "ignore").strip(" .")
    if name.split(".")[0].casefold() in WINDOWS_DEVICES:
        name += "_"
    return name or "image"


def folder_names(images: list[Path]) -> list[str]:
    """Each image's folder name: its safe stem, or, where stems clash (ignoring case, as some filesystems
    do) or a name is reserved, the stem plus '-' and a hash of the absolute path. Decided from the whole
    input list and the paths alone, so the same inputs get the same folders on every run (--resume)."""
    stems = [safe_name(path.stem) for path in images]
    digests = [hashlib.sha256(os.fsencode(path.resolve())).hexdigest() for path in images]
    names = list(stems)
    for length in (8, 16, 64):  # longer hashes only if a file is named like another's hashed name
        counts = Counter(name.casefold() for name in names)
        clashes = [k for k, name in enumerate(names)
                   if counts[name.casefold()] > 1 or name.casefold() in RESERVED]
        if not clashes:
            break
        for k in clashes:
            names[k] = f"{stems[k]}-{digests[k][:length]}"
    assert len({name.casefold() for name in names}) == len(names)
    return names


def image_folder(out: Path, name: str) -> Path:
    """out / name, refused if it is a link or does not resolve to a direct child of --out."""
    folder = out / name
    if folder.is_symlink() or folder.resolve().parent != out.resolve():
        raise OutputError(f"{folder}: is a link (or leads outside --out); remove it or choose another --out")
    return folder


def overlay_name(j: int, text: str, format: str = FORMAT) -> str:
    """The overlay file of text j (from 0) in one of FORMATS, in OWN_FILES' pattern."""
    return f"{j + 1:02d}-{slug(text)}{FORMATS[format][0]}"


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "text"


def file_stamp(path: Path) -> dict:
    """What identifies a file's content cheaply: its absolute path, size and modification time."""
    info = path.stat()
    return {"path": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def weights_stamp(weights: Optional[str]) -> dict:
    """The weights' identity for --resume: the file (the embedded default's too), each file of a Hugging Face
    directory, or a model name (downloaded files are verified against their published hash)."""
    path = DEFAULT_WEIGHTS if weights is None else Path(weights)
    if path.is_file():
        return file_stamp(path)
    if path.is_dir():
        return {"directory": str(path.resolve()),
                "files": [file_stamp(p) for p in sorted(path.iterdir()) if p.is_file()]}
    return {"name": weights}


@dataclass(frozen=True)
class RunSettings:
    """The method and the options an image's outputs depend on besides the image, weights and texts: each
    image's stamp records them for --resume, and results.json records the run's, in this order."""
    method: str
    start_layer: int  # resolved: an index from 0, as `relevance.settings` gives it
    start_layer_text: int
    signed: bool
    truncate: bool
    max_size: int
    format: str


def stamp(path: Path, texts: list[str], weights: dict, settings: RunSettings) -> dict:
    """Everything an image's outputs depend on; --resume reuses them only if all of it is unchanged.

    Args:
        path: the image file; texts: the texts explained; weights: `weights_stamp`'s answer;
        settings: the method and its options.
    """
    return {"image": file_stamp(path), "weights": weights, "texts": texts, **asdict(settings)}


def finished(folder: Path, expected: dict, outputs: list[Path]) -> Optional[dict]:
    """The folder's record if it is complete for exactly this stamp and its outputs are all there; None for
    anything else (no record; another image, settings or weights; a missing file; a foreign or broken
    record)."""
    done = folder / DONE
    try:
        if not done.is_file():
            return None
        record = json.loads(done.read_text(encoding="utf-8"))
        listed = [record["sheet"], *(entry["overlay"] for entry in record["texts"])]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # RecursionError: '[[[[...' nested
        return None
    if record.get("stamp") != expected or listed != [str(p) for p in outputs]:
        return None
    return record if all(p.is_file() for p in outputs) else None


def output_paths(folder: Path, texts: Sequence[str], format: str) -> list[Path]:
    """The files of an image's folder besides its record: the sheet, then one overlay per text."""
    names = (overlay_name(j, text, format) for j, text in enumerate(texts))
    return [folder / SHEET, *(folder / name for name in names)]


def write_outputs(folder: Path, image: Path, picture: Image.Image, geometry: CropGeometry, rel: Relevance,
                  texts: Sequence[str], format: str, stamp: Optional[dict]) -> dict:
    """Write one image's overlays, sheet and record (last: it marks the image finished); the record.

    Args:
        folder: the image's folder (`image_folder`); image: the image file, as given.
        picture: the drawing copy of the photo; geometry: the photo's CropGeometry.
        rel: the image's Relevance (one image, every text); texts: the texts, as given.
        format: the overlays' (one of FORMATS); stamp: what the outputs were made from (`stamp`).
    Raises:
        OutputError: an output could not be written.
    """
    try:
        folder.mkdir(exist_ok=True)
        (folder / DONE).unlink(missing_ok=True)  # unfinished from here on, until the new record is written
    except OSError as e:
        raise OutputError(f"{folder}: cannot use it for this image's outputs ({e.strerror or e})") from None
    _, kind, options = FORMATS[format]
    entries = []  # per text: its entry of the record
    titles = []
    words = []
    outputs = output_paths(folder, texts, format)
    grids = [rel.image[0, j].numpy() for j in range(len(texts))]
    for j, (text, grid, overlay) in enumerate(zip(texts, grids, overlays(picture, grids, geometry))):
        write(outputs[j + 1], lambda f: overlay.save(f, format=kind, **options))
        scores = [] if rel.text is None else rel.text[j][0]  # None: the method explains the image only
        pairs = [(label, float(s)) for label, s in zip(rel.labels[j], scores)]
        logit, prob = float(rel.logits[0, j]), float(rel.probs[0, j])
        one_text = len(texts) == 1  # its probability is always 1: its logit says more
        titles.append((printable(text), f"  logit={logit:.2f}" if one_text else f"  p={prob:.2f}"))
        words.append([(printable(label), s) for label, s in pairs])
        entries.append({"text": text, "logit": logit, "prob": prob,
                        "grid": grid.tolist(), "tokens": [{"token": t, "relevance": s} for t, s in pairs],
                        "overlay": str(outputs[j + 1])})
    # The sheet's panels are drawn at their own size (the same map and blend, on the photo fitted to a panel):
    # cheaper than fitting the large overlays (a quarter of this function's time), which need not be kept.
    small = fit(picture)  # the photo's panel too: contact_sheet's own fit of it is then a copy
    panels = overlays(small, grids[:SHEET_TEXTS], geometry)
    sheet = contact_sheet(small, list(panels), titles, words)
    write(outputs[0], lambda f: sheet.save(f, format="PNG", **FORMATS["png"][2]))
    remove_stale(folder, set(outputs[1:]))
    record = {"image": str(image), "width": geometry.width, "height": geometry.height,
              "crop_box": list(geometry.crop_box()), "texts": entries, "sheet": str(outputs[0]),
              "stamp": stamp}
    write(folder / DONE, lambda f: f.write(json.dumps(record).encode()))
    return record


def write(path: Path, save: Callable) -> None:
    """atomic_write, failing as one image's OutputError that names the output, not the temporary file."""
    try:
        atomic_write(path, save)
    except OSError as e:
        raise OutputError(f"{path}: cannot write it ({e.strerror or e})") from None


def remove_stale(folder: Path, keep: set[Path]) -> None:
    """Remove the tool's own files left in the folder by earlier runs (other texts), never anything else."""
    try:
        for p in folder.iterdir():
            if OWN_FILES.fullmatch(p.name) and p not in keep and (p.is_file() or p.is_symlink()):
                p.unlink()
    except OSError as e:
        raise OutputError(f"{folder}: cannot remove an old output ({e.strerror or e})") from None


def printable(text: str) -> str:
    """One line with nothing a terminal acts on: control, format and lone surrogate characters (a newline,
    an escape sequence, a right-to-left override, an undecodable byte of a file name) escaped as Python
    writes them ('\\n', '\\x1b', '\\u202e', '\\udcff')."""
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c)[0] == "C" else c
                   for c in text)
