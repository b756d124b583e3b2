"""Checkpoint formats: each recognised from what it is, never its name, and read by one reader.

Formats read:
- mini_clip `.safetensors`: OpenAI key names, the config as JSON in the metadata (what `weights.save` writes);
- OpenAI's TorchScript archives (`ViT-B-32.pt` etc.): tensors read without running the archive's code;
- plain state dicts saved with `torch.save` (OpenAI's names; OpenCLIP's `{"state_dict": ...}` and
  `module.` prefixes too), read with `torch.load(weights_only=True)`;
- Hugging Face `CLIPModel` directories (`config.json` + `model.safetensors` or `pytorch_model.bin`), and
  Hugging Face state dict files, mapped by the tables in `hf.py`;
- OpenCLIP hub folders (`open_clip_config.json` beside `open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin`), their configs read by `zoo.py`.

`detect` names a path's format once, and READERS holds one reader per format. Each returns a Checkpoint:
the tensors, the config the checkpoint states (or None), the preprocessing its folder states (or None) and
the file's own metadata. A folder's reader reads its config files, then its weights file with the reader of
that file's format. `read` then leaves out what is not a weight, bounds the tensors by the file's bytes and
maps Hugging Face's names onto OpenAI's. Untrusted torch files are checked before torch reads them
(archive.py: zip sizes, pickle globals).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Iterator, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open

from . import hf, zoo
from .archive import MAX_INFLATION, UnsafeArchiveError, check_pickles, check_zip, read_entry
from .config import CLIPConfig
from .image import Preprocessing
from .torchscript import is_torchscript, read_torchscript

EXPECTED = ("expected a mini_clip .safetensors file, an OpenAI/OpenCLIP .pt checkpoint (TorchScript or "
            "state dict), or a Hugging Face CLIPModel directory")
# Entries of OpenAI's TorchScript models that are not weights (OpenAI's build_model deletes them too).
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what a Hugging Face CLIPModel directory holds
HF_PREPROCESSOR = "preprocessor_config.json"
# What a damaged archive or pickle makes zipfile, the unpickler or torch raise.
DAMAGED = (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError,
           TypeError, AttributeError, OSError)


class WeightsError(ValueError):
    """A weights file that cannot be loaded; the message names the file, what was wrong and what was
    expected."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What every reader returns."""
    path: Path  # the weights file read (in a folder, the folder's file): what messages name
    tensors: dict[str, torch.Tensor]
    config: Optional[CLIPConfig] = None  # the architecture the checkpoint states; None where it states none
    preprocessing: Optional[Preprocessing] = None  # the images' preprocessing its folder states
    metadata: dict = dataclasses.field(default_factory=dict)  # a safetensors file's own
    format: str = ""  # the key of READERS it was read by (set by `read`)


@contextlib.contextmanager
def _untrusted(path: Path) -> Iterator[None]:
    """Errors of reading a torch file as one WeightsError: a crafted file is told from a damaged one by what
    it asks for (archive.py's checks), not by the wording of torch's errors."""
    try:
        yield
    except UnsafeArchiveError as e:
        raise WeightsError(f"{path}: refused: {e}; it may be crafted, so it was not loaded") from None
    except DAMAGED as e:
        raise WeightsError(f"{path}: damaged archive ({e.__class__.__name__}: {str(e)[:200]})") from None


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    header_length = int.from_bytes(head[:8], "little")
    return len(head) == 9 and head[8:9] == b"{" and header_length <= os.path.getsize(path)


def _is_torchscript(path: Path) -> bool:
    """A zip archive holding TorchScript's code (see torchscript.is_torchscript)."""
    with _untrusted(path):
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return is_torchscript(archive)


def _file_format(path: Path) -> str:
    """The format of a weights file (a key of READERS), from its content."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such file ({EXPECTED})")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file ({EXPECTED})")
    if _is_safetensors(path):
        return "safetensors"
    return "TorchScript" if _is_torchscript(path) else "state dict"


def detect(path: Path) -> str:
    """The format of `path` (a key of READERS): a folder's by the config file in it (or beside a weights
    file in it), a file's by its content."""
    if path.is_dir() and (path / "config.json").exists():
        return "Hugging Face folder"
    if zoo.find_hub_folder(path) is not None:
        return "OpenCLIP folder"
    if path.is_dir():
        raise WeightsError(f"{path}: a directory without config.json or {zoo.CONFIG_NAME} ({EXPECTED})")
    return _file_format(path)


def read_safetensors(path: Path) -> Checkpoint:
    """A safetensors file; mini_clip's state their config in the metadata."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: damaged safetensors file ({e})") from None
    if "config" not in metadata:
        return Checkpoint(path, tensors, metadata=metadata)
    try:
        config = CLIPConfig.from_dict(json.loads(metadata["config"]))
    except (ValueError, TypeError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise WeightsError(f"{path}: damaged config in the metadata ({str(e)[:300]})") from None
    return Checkpoint(path, tensors, config, metadata=metadata)


def read_torchscript_archive(path: Path) -> Checkpoint:
    """A TorchScript archive's tensors, its zip sizes bounded first; none of its code is run."""
    with _untrusted(path), zipfile.ZipFile(path) as archive:
        check_zip(archive, path.stat().st_size)
        return Checkpoint(path, read_torchscript(archive))


def read_state_dict(path: Path) -> Checkpoint:
    """A torch.save file, with torch.load(weights_only=True) once its zip sizes are bounded and its pickles
    scanned for globals (archive.py)."""
    with _untrusted(path):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                check_zip(archive, path.stat().st_size)
                for name in archive.namelist():  # torch.save's <name>/data.pkl
                    if name.endswith("data.pkl"):
                        check_pickles(read_entry(archive, name), count=1)
        else:
            with open(path, "rb") as f:
                check_pickles(f)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage bytes make the unpickler fail in many ways (IndexError, KeyError, ...)
        raise WeightsError(f"{path}: not a checkpoint or damaged ({EXPECTED}; torch said: "
                           f"{str(e)[:200]})") from None
    # OpenCLIP nests the weights under "state_dict" and, trained with DDP, prefixes keys with "module."
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no tensors ({EXPECTED})")
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return Checkpoint(path, tensors)


def _folder_weights(path: Path, config: CLIPConfig, preprocessing: Optional[Preprocessing]) -> Checkpoint:
    """A folder's weights file, read by its own format, with what the folder states: a config in the file's
    metadata (mini_clip's) comes before the folder's, the folder's preprocessing before the file's."""
    checkpoint = READERS[_file_format(path)](path)
    if checkpoint.config is not None:
        config = checkpoint.config
    return dataclasses.replace(checkpoint, config=config, preprocessing=preprocessing)


def read_hf_folder(path: Path) -> Checkpoint:
    """A Hugging Face CLIPModel directory: config.json, preprocessor_config.json where there is one, and
    the weights in Hugging Face's names."""
    files = [path / n for n in HF_WEIGHTS if (path / n).exists()]
    if not files:
        raise WeightsError(f"{path}: Hugging Face directory without {' or '.join(HF_WEIGHTS)}")
    preprocessor = path / HF_PREPROCESSOR
    try:
        config = hf.config_from_hf(path / "config.json")
    except (ValueError, OSError, RecursionError) as e:
        raise WeightsError(f"{path / 'config.json'}: {str(e)[:300]}") from None
    try:
        preprocessing = hf.preprocessing_from_hf(preprocessor) if preprocessor.exists() else None
    except (ValueError, TypeError, OSError, RecursionError) as e:
        raise WeightsError(f"{preprocessor}: {str(e)[:300]}") from None
    return _folder_weights(files[0], config, preprocessing)


def read_open_clip_folder(path: Path) -> Checkpoint:
    """An OpenCLIP hub folder (or a weights file in one): open_clip_config.json's model_cfg and
    preprocess_cfg, and the weights in OpenAI's names."""
    config_file, weights = zoo.find_hub_folder(path)
    if not weights.exists():
        raise WeightsError(f"{path}: OpenCLIP folder without {' or '.join(zoo.WEIGHTS_NAMES)}")
    try:
        config, preprocessing = zoo.read_hub_config(config_file)
    except (ValueError, TypeError, OSError, RecursionError) as e:
        raise WeightsError(f"{config_file}: {str(e)[:400]}") from None
    return _folder_weights(weights, config, preprocessing)


READERS = {
    "safetensors": read_safetensors,
    "TorchScript": read_torchscript_archive,
    "state dict": read_state_dict,
    "Hugging Face folder": read_hf_folder,
    "OpenCLIP folder": read_open_clip_folder,
}


def _check_bytes(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """The tensors of a file hold at most what its bytes can (MAX_INFLATION allows a compressed zip): a
    tensor that views more elements than it stores (strides of 0, shared storage) is refused before a
    copy of it (to another dtype or device) can make memory out of nothing."""
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    if total > MAX_INFLATION * path.stat().st_size:
        raise WeightsError(f"{path}: refused: its tensors hold {total} bytes, "
                           f"{total // path.stat().st_size}x the file's size; weights are stored, not "
                           "repeated, so it may be crafted")


def read(path: Path) -> Checkpoint:
    """The checkpoint at `path`, in any format of READERS, with its tensors in OpenAI's names.

    Raises:
        WeightsError: missing, unreadable, unsafe, or Hugging Face weights without their config.
    """
    fmt = detect(path)
    checkpoint = READERS[fmt](path)
    tensors = {k: v for k, v in checkpoint.tensors.items() if k not in NOT_WEIGHTS}
    _check_bytes(tensors, checkpoint.path)
    if hf.is_hf_state_dict(tensors):
        if checkpoint.config is None:
            raise WeightsError(f"{checkpoint.path}: Hugging Face weights need their config.json: pass the "
                               "model directory")
        try:
            converted, unused = hf.convert_hf_state_dict(tensors)
        except ValueError as e:
            raise WeightsError(f"{checkpoint.path}: {e}") from None
        # the unused ones stay, to be reported as unexpected by their names
        tensors = {**converted, **{k: tensors[k] for k in unused}}
    return dataclasses.replace(checkpoint, tensors=tensors, format=fmt)
