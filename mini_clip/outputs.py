"""Where python -m mini_clip.explain writes, and when an earlier run's outputs can be reused (--resume).

Every name derived from an input stays one plain entry of --out, distinct from every other input's and
from the tool's own files, and is the same on every run with the same inputs. An image's outputs are
reused only if its record says they were made from the same image file, weights, texts and settings, and
all of them are still there. Only files in the tool's own naming pattern are ever removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

from .files import atomic_write
from .weights import DEFAULT_WEIGHTS

DONE = "result.json"  # per-image record, written after its pictures
RESULTS = "results.json"  # the run's record, in --out beside the image folders
SHEET = "sheet.png"
# The files this tool writes in an image folder besides DONE and SHEET: overlays (`overlay_name`) and the
# temporary files of `atomic_write` that a killed run may leave. Only these are ever removed as stale.
OWN_FILES = re.compile(r"\d{2,}-[a-z0-9-]+\.(png|jpg|webp)|\..+\.\d+\.tmp")
# Overlay formats: (suffix, PIL format, encoder options). The overlays are photos: JPEG at quality 90 is the
# default, about 10x smaller and 30x faster to encode than PNG, its artefacts below the heat scale's steps.
# PNG (lossless) at zlib level 1: level 6, PIL's default, takes twice as long for 10 % less on photos.
# WebP at quality 85: smaller than JPEG, slower to encode.
FORMATS = {"jpeg": (".jpg", "JPEG", {"quality": 90}), "png": (".png", "PNG", {"compress_level": 1}),
           "webp": (".webp", "WEBP", {"quality": 85})}
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


def overlay_name(j: int, text: str, format: str = "jpeg") -> str:
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


def stamp(path: Path, texts: list[str], weights: dict, settings: dict) -> dict:
    """Everything an image's outputs depend on; --resume reuses them only if all of it is unchanged.

    Args:
        path: the image file; texts: the texts explained; weights: `weights_stamp`'s answer;
        settings: the method and its options (JSON types), e.g. {"method": "chefer", "signed": False, ...}.
    """
    return {"image": file_stamp(path), "weights": weights, "texts": texts, **settings}


def finished(folder: Path, expected: dict, outputs: list[Path]) -> Optional[dict]:
    """The folder's record if it is complete for exactly this stamp and its outputs are all there; None for
    anything else (no record; another image, settings or weights; a missing file; a foreign or broken record)."""
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
