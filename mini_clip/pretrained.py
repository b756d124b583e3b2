"""Public CLIP checkpoints by name (OpenAI's, and OpenCLIP's most used): download, verify, resume, and
convert once to mini_clip's format. The one table of model names: `mini_clip.load(name)` and the command
line `python -m mini_clip.download NAME` (download.py) both come here.

OpenCLIP's checkpoints (`ARCH/TAG`, open_clip's names) come from the Hugging Face repositories open_clip's
pretrained table names, as `<ARCH>-<TAG>.open_clip_model.safetensors`; neither open_clip nor the address
gives a hash or a size, so they are checked by structure instead: the conversion, made with the named
architecture, refuses a file in which any tensor is missing or has another shape. The converted file
states the architecture and the preprocessing (open_clip's for that tag).

The cache (`$MINI_CLIP_CACHE`, else `~/.cache/mini_clip`) holds, per model, OpenAI's TorchScript file
`ViT-B-32.pt` (kept, so the conversion can be redone and the file checked against OpenAI's hash) and the
converted `ViT-B-32.safetensors` that `mini_clip.load("ViT-B/32")` reads. A download goes to
`ViT-B-32.pt.part` first and is resumed with an HTTP Range request if it was cut off; it becomes `.pt`
only once its SHA-256 matches the one in OpenAI's URL. Only the standard library talks to the network.
With `MINI_CLIP_OFFLINE=1` (or `offline=True`) no connection is ever opened: copy a cache made on a
machine with internet instead.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

import torch

from .config import PRESETS
from .image import OPENAI, Preprocessing
from .weights import WeightsError, build, read_checkpoint, save

# OpenAI's models by config.PRESETS' names (which hold their architectures): name -> (SHA-256 of the file,
# file name); OpenAI puts the hash in the URL, so it is also the address.
MODELS = {
    "ViT-B/32": ("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt"),
    "ViT-B/16": ("5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt"),
    "ViT-L/14": ("b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt"),
    "ViT-L/14@336px": ("3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
                       "ViT-L-14-336px.pt"),
}
assert MODELS.keys() == PRESETS.keys(), "OpenAI's files (MODELS) and architectures (PRESETS) are named alike"
BASE_URL = "https://openaipublic.azureedge.net/clip/models/"

INCEPTION = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # open_clip's INCEPTION_MEAN/STD
# ARCH/TAG -> (Hugging Face repository, architecture (zoo.ARCHS), preprocessing), from open_clip 3.3's
# pretrained.py; the file is the repository's open_clip_model.safetensors (what open_clip itself prefers).
OPENCLIP_MODELS = {
    "ViT-B-32/laion2b_s34b_b79k": ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32", OPENAI),
    "ViT-B-16/laion2b_s34b_b88k": ("laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "ViT-B-16", OPENAI),
    "ViT-L-14/laion2b_s32b_b82k": ("laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "ViT-L-14", INCEPTION),
    "ViT-L-14/datacomp_xl_s13b_b90k": ("laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", "ViT-L-14", OPENAI),
    "ViT-H-14/laion2b_s32b_b79k": ("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "ViT-H-14", OPENAI),
}
HF_URL = "https://huggingface.co/"
OPENCLIP_FILE = "open_clip_model.safetensors"
CHUNK = 1 << 20  # bytes per read: small enough for a lively progress line, large enough to be cheap
TIMEOUT_S = 30.0  # per connect and per read; a stalled server fails instead of hanging forever
PathLike = Union[str, os.PathLike]


class DownloadError(WeightsError):
    """A checkpoint could not be fetched or verified; the message says what, where, and what to do."""


def cache_dir() -> Path:
    """`$MINI_CLIP_CACHE` if set, else `~/.cache/mini_clip`."""
    return Path(os.environ.get("MINI_CLIP_CACHE") or Path.home() / ".cache" / "mini_clip")


def names() -> list[str]:
    """Every model name: OpenAI's (MODELS), then OpenCLIP's ARCH/TAG (OPENCLIP_MODELS)."""
    return [*MODELS, *OPENCLIP_MODELS]


def check_name(name: str) -> tuple[Optional[str], str]:
    """(sha256 or None where none is published, file name) of a model name; WeightsError listing the valid
    names for anything else. The one check of a name: fetch, its command line and `mini_clip.load` use it."""
    if name in OPENCLIP_MODELS:
        return None, f"{name.replace('/', '-')}.{OPENCLIP_FILE}"
    if name not in MODELS:
        raise WeightsError(f"unknown model {name!r}; valid names: {', '.join(names())}")
    return MODELS[name]


def sha256_of(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks (the checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(functools.partial(f.read, CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress(name: str, done: int, total: Optional[int]) -> None:
    """One stderr line, rewritten in place with `\\r`."""
    mb = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
    pct = f"{100 * done // total:3d}% " if total else ""
    sys.stderr.write(f"\rdownloading {name}: {pct}{mb}")
    sys.stderr.flush()


def _download(url: str, part: Path, name: str, progress: bool) -> None:
    """Append the rest of `url` to `part` (all of it if `part` is absent); the caller verifies the hash.

    Raises:
        DownloadError: HTTP error, no connection, timeout, or a connection closed before the end.
    """
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    done = start  # bytes in `part`
    total = None  # bytes in the whole file, where the server says
    shown = False  # a progress line was written
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            if response.status == 200:  # a full answer: the server ignored Range (or none was sent)
                done = 0
            length = response.headers.get("Content-Length")
            total = done + int(length) if length else None
            with open(part, "ab" if done else "wb") as f:
                while block := response.read(CHUNK):
                    f.write(block)
                    done += len(block)
                    if progress:
                        _progress(name, done, total)
                        shown = True
    except urllib.error.HTTPError as e:
        if e.code == 416:  # nothing left after `start`: the part is complete, or too long; the hash decides
            return
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; check the name and --base-url, or download "
                            f"the file by other means and put it at {part.with_suffix('')}") from None
    except (urllib.error.URLError, OSError) as e:  # refused, unknown host, timeout (raw or in a URLError)
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"{url}: could not download ({reason}); check the internet connection or proxy "
                            f"and run again (it resumes from {part}), or copy a cache made "
                            "elsewhere") from None
    finally:
        if shown:
            sys.stderr.write("\n")
    # read() returns b"" when the server closes early; http.client does not raise for a short body
    if total is not None and done < total:
        raise DownloadError(f"{url}: connection closed after {done} of {total} bytes; "
                            f"run again to resume from {part}")


def fetch(name: str, cache: Optional[PathLike] = None, base_url: Optional[str] = None,
          offline: Optional[bool] = None, progress: bool = True) -> Path:
    """The converted mini_clip `.safetensors` of an OpenAI model, downloading and converting it if needed.

    Args:
        name: "ViT-B/32", "ViT-B/16", "ViT-L/14" or "ViT-L/14@336px" (MODELS), or an OpenCLIP ARCH/TAG
            (OPENCLIP_MODELS).
        cache: directory for the files; None uses `cache_dir()`.
        base_url: where the `<sha256>/<file>` paths (OpenAI's) or `<repository>/resolve/main/<file>` paths
            (OpenCLIP's) live: a mirror, or a test server; None: OpenAI's site, or Hugging Face.
        offline: never open a connection; None reads `MINI_CLIP_OFFLINE` (set and not "0" means offline).
        progress: print a progress line on stderr while downloading.
    Returns:
        Path of `<file>.safetensors` in the cache (e.g. ViT-B-32.safetensors beside ViT-B-32.pt).
    Raises:
        WeightsError: unknown name; DownloadError (a WeightsError) for network, hash and offline failures.
    """
    sha, filename = check_name(name)
    folder = Path(cache) if cache is not None else cache_dir()
    pt = folder / filename
    converted = folder / (filename.split(".")[0] + ".safetensors")  # ViT-B-32.pt -> ViT-B-32.safetensors
    part = pt.with_name(pt.name + ".part")
    if converted.exists():
        return converted
    if offline is None:
        offline = os.environ.get("MINI_CLIP_OFFLINE", "") not in ("", "0")
    if name in OPENCLIP_MODELS:
        url = f"{(base_url or HF_URL).rstrip('/')}/{OPENCLIP_MODELS[name][0]}/resolve/main/{OPENCLIP_FILE}"
    else:
        url = f"{(base_url or BASE_URL).rstrip('/')}/{sha}/{filename}"
    if pt.exists() and sha is not None:
        got = sha256_of(pt)  # a second or so: cheap insurance against a file damaged since it was verified
        if got != sha:
            raise DownloadError(f"{pt}: SHA-256 is {got}, expected {sha} for {name}; delete it and run again")
    elif pt.exists():
        pass  # no published hash: the conversion checks its structure
    elif offline:
        raise DownloadError(f"{pt}: missing, and offline mode is on (MINI_CLIP_OFFLINE); on a machine with "
                            f"internet run `python -m mini_clip.download {name}`, then copy its cache "
                            f"directory to {folder} (or point MINI_CLIP_CACHE at it)")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        _download(url, part, name, progress)
        got = sha256_of(part)
        if sha is not None and got != sha:
            part.unlink()  # a wrong file cannot be resumed into a right one: start afresh next time
            raise DownloadError(f"{url}: SHA-256 mismatch: expected {sha}, got {got}; the download was "
                                "deleted, run again (if it repeats, a proxy or mirror is serving another "
                                "file)")
        os.replace(part, pt)
    _convert(pt, converted, name, url, sha)
    return converted


def _convert(pt: Path, converted: Path, name: str, url: str, sha: str) -> None:
    """The downloaded file -> mini_clip's safetensors, loaded strictly, in the file's own precision; an
    OpenCLIP file read with its named architecture (every tensor's shape checked) and preprocessing."""
    _, arch, preprocessing = OPENCLIP_MODELS.get(name, (None, None, OPENAI))
    try:
        sd, config, _ = read_checkpoint(pt, arch)
        # the widest dtype among the tensors: lossless (OpenAI's files keep norms and embeddings in fp32)
        dtype = functools.reduce(torch.promote_types, {v.dtype for v in sd.values()})
        model = build(sd, config, str(pt), dtype=dtype)
    except WeightsError as e:
        if sha is not None:
            raise
        raise DownloadError(f"{e}; {pt} is not {name} (no hash is published for it, so this is how a wrong "
                            "file shows): delete it and run again") from None
    if name in PRESETS and model.config != PRESETS[name]:
        raise DownloadError(f"{pt}: holds a CLIP {model.config}, expected {name}'s {PRESETS[name]}")
    model.preprocessing = preprocessing
    save(model, converted, {"source": url, "sha256": sha256_of(pt) if sha is None else sha})

