"""Checkpoints in, a CLIP out: format detection, strict loading, and mini_clip's own safetensors format.

Formats read (detected from the file, not its name):
- mini_clip `.safetensors`: OpenAI key names, the config as JSON in the metadata (what `save` writes);
- OpenAI's TorchScript archives (`ViT-B-32.pt` etc.): tensors read without running the archive's code;
- plain state dicts saved with `torch.save` (OpenAI's names; OpenCLIP's `{"state_dict": ...}` and
  `module.` prefixes too), read with `torch.load(weights_only=True)`;
- Hugging Face `CLIPModel` directories (`config.json` + `model.safetensors` or `pytorch_model.bin`), and
  Hugging Face state dict files, mapped by the tables in `hf.py`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes

from . import hf
from .image import preprocess
from .model import CLIP, CLIPConfig
from .torchscript import UnsafeArchiveError, is_torchscript, read_torchscript

PathLike = Union[str, os.PathLike]
# Entries of OpenAI's TorchScript models that are not weights (OpenAI's build_model deletes them too).
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
EXPECTED = ("expected a mini_clip .safetensors file, an OpenAI/OpenCLIP .pt checkpoint (TorchScript or state dict), "
            "or a Hugging Face CLIPModel directory")


# The embedded default: a tiny CLIP trained on mini_clip.scenes (see scripts/train_scenes.py). Its home is
# the repository's weights/ (a clone, `pip install -e .`); wheels and plain installs carry it in
# mini_clip/embedded/ (setup.cfg maps the package mini_clip.embedded to weights/), which is looked at first.
_PACKAGE = Path(__file__).resolve().parent
_EMBEDDED = [folder / "scenes-vit-t8.safetensors" for folder in (_PACKAGE / "embedded", _PACKAGE.parent / "weights")]
DEFAULT_WEIGHTS = next((path for path in _EMBEDDED if path.exists()), _EMBEDDED[0])


class WeightsError(ValueError):
    """A weights file that cannot be loaded; the message names the file, what was wrong and what was expected."""


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: damaged safetensors file ({e})") from None


def _read_torch_file(path: Path) -> dict:
    """A torch.save file or a TorchScript archive, without executing code from it."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                if is_torchscript(archive):
                    return read_torchscript(archive)
        except UnsafeArchiveError as e:
            raise WeightsError(f"{path}: refused: {e}; it may be crafted to run code, so it was not loaded") from None
        except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError,
                TypeError, AttributeError) as e:  # what a damaged archive or pickle makes the reader raise
            raise WeightsError(f"{path}: damaged TorchScript archive ({e.__class__.__name__}: {e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # the allow-list refused a callable
            raise WeightsError(f"{path}: refused: its pickle asks for more than tensors and plain containers, "
                               "so it may be crafted to run code; it was not loaded") from None
        raise WeightsError(f"{path}: not a checkpoint ({EXPECTED})") from None
    except Exception as e:  # garbage bytes make the unpickler fail in many ways (IndexError, KeyError, ...)
        raise WeightsError(f"{path}: not a checkpoint or damaged ({EXPECTED}; torch said: {str(e)[:200]})") from None


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= os.path.getsize(path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """OpenCLIP nests the weights under "state_dict" and, trained with DDP, prefixes keys with "module."."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no tensors ({EXPECTED})")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_checkpoint(path: PathLike) -> tuple[dict[str, torch.Tensor], Optional[CLIPConfig], dict]:
    """Read any supported checkpoint.

    Returns:
        (state dict with OpenAI's key names, the config if the file states one else None, metadata dict).
    Raises:
        WeightsError: missing, unreadable, unsafe or not a CLIP checkpoint.
    """
    path = Path(path)
    config, metadata = None, {}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise WeightsError(f"{path}: a directory without config.json ({EXPECTED})")
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
        if not files:
            raise WeightsError(f"{path}: Hugging Face directory without model.safetensors or pytorch_model.bin")
        try:
            config = hf.config_from_hf(path / "config.json")
        except (ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{path / 'config.json'}: {e}") from None
        path = files[0]
    if not path.exists():
        raise WeightsError(f"{path}: no such file ({EXPECTED})")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file ({EXPECTED})")
    if _is_safetensors(path):
        sd, metadata = _read_safetensors(path)
        if "config" in metadata:
            try:
                config = CLIPConfig(**json.loads(metadata["config"]))
            except (ValueError, TypeError) as e:
                raise WeightsError(f"{path}: damaged config in the metadata ({e})") from None
    else:
        sd = _unwrap(_read_torch_file(path), path)
    sd = {k: v for k, v in sd.items() if k not in NOT_WEIGHTS}
    if hf.is_hf_state_dict(sd):
        if config is None:
            raise WeightsError(f"{path}: Hugging Face weights need their config.json: pass the model directory")
        hf_sd = sd
        sd, unused = hf.convert_hf_state_dict(hf_sd, _shapes(config).keys())
        sd.update({k: hf_sd[k] for k in unused})  # reported as unexpected, under their Hugging Face names
    return sd, config, metadata


@functools.lru_cache(maxsize=8)
def _shapes(config: CLIPConfig) -> dict[str, tuple]:
    """Every key of a model with this config and its shape (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in CLIP(config).state_dict().items()}


def check_state_dict(sd: Mapping[str, torch.Tensor], config: CLIPConfig, source: str) -> None:
    """Raise one WeightsError listing every missing, unexpected and mis-shaped tensor."""
    expected = _shapes(config)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [f"{k} is {tuple(sd[k].shape)}, expected {s}" for k, s in expected.items()
                 if k in sd and tuple(sd[k].shape) != s]
    problems = [f"{label} ({len(items)}): {', '.join(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if items]
    if problems:
        raise WeightsError(f"{source}: does not fit a CLIP {config}: " + "; ".join(problems))


def build(sd: Mapping[str, torch.Tensor], config: Optional[CLIPConfig] = None, source: str = "state dict",
          device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> CLIP:
    """A CLIP in eval mode from a state dict in OpenAI's names, loaded strictly."""
    if config is None:
        try:
            config = CLIPConfig.from_state_dict(sd)
        except (KeyError, ValueError, IndexError) as e:
            raise WeightsError(f"{source}: not a CLIP ViT checkpoint ({e!s:.120}); {EXPECTED}") from None
    check_state_dict(sd, config, source)
    for k, v in sd.items():
        if not v.is_floating_point():
            raise WeightsError(f"{source}: tensor {k} has dtype {v.dtype}; weights must be floating point")
    with torch.device("meta"):  # no memory and no init: every parameter is about to be replaced
        model = CLIP(config, initialize=False)
    # check_state_dict has matched every key and shape, so assign directly (load_state_dict's generic checks
    # and hooks cost more than reading the file)
    modules = dict(model.named_modules())
    for key, value in sd.items():
        owner, _, name = key.rpartition(".")
        setattr(modules[owner], name, nn.Parameter(value.to(device=device, dtype=dtype)))
    return model.eval()


def load(path: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu",
         dtype: torch.dtype = torch.float32) -> tuple[CLIP, Callable]:
    """Load a CLIP checkpoint of any supported format, like `clip.load`.

    Args:
        path: a file or Hugging Face directory; a model name ("ViT-B/32", ...: see mini_clip.download) is
            downloaded once into the cache; None loads the embedded default model.
        device: where the model lives.
        dtype: parameter dtype; fp32 by default (exact), torch.float16/bfloat16 for speed on a GPU.
    Returns:
        (model in eval mode, preprocess: PIL image or path -> tensor (3, R, R) for the model's resolution R).
    """
    if path is None:
        path = DEFAULT_WEIGHTS
        if not path.exists():
            raise WeightsError(f"{path}: the embedded default model is missing (and not in "
                               f"{_EMBEDDED[1].parent}); reinstall mini_clip (pip install from its repository, "
                               "or a wheel built from it) or pass a weights file")
    elif isinstance(path, str) and "ViT" in path and "/" in path and not os.path.exists(path):
        from .download import fetch  # imported here: download imports this module
        from .model import PRESETS
        if path not in PRESETS:
            raise WeightsError(f"unknown model {path!r} (and no such file); valid names: {', '.join(PRESETS)}")
        path = fetch(path)  # downloaded, verified and converted once, then read from the cache
    sd, config, _ = read_checkpoint(path)
    model = build(sd, config, str(path), device, dtype)
    return model, functools.partial(preprocess, size=model.config.image_resolution)


def save(model: CLIP, path: PathLike, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write mini_clip's format: safetensors with OpenAI's key names and the config in the metadata.

    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    meta = {"format": "mini_clip", "config": json.dumps(dataclasses.asdict(model.config)), **(metadata or {})}
    data = save_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, meta)
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: PathLike, write: Callable) -> None:
    """Write through `write(binary file)` to a temporary file in the same directory, then rename it into
    place: a reader (or a run killed half-way) sees the file whole or not at all."""
    path = Path(path)
    # A name known before the file exists (one writer per process at a time), so the clean-up below can
    # remove it even when a signal lands between its creation and the first line of the `try`.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:  # open(), unlike safetensors' own writer, honours the umask
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
