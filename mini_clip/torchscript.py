"""Read the tensors of a TorchScript archive (how OpenAI publishes CLIP) without running any of its code.

`torch.jit.load` compiles and runs the Python-like code stored in the archive, and `torch.load` refuses
TorchScript archives when `weights_only=True`. But the weights themselves are ordinary: the zip holds
`<name>/data.pkl`, a pickle of the module tree whose tensors point at raw storages `<name>/data/<key>`.
This module unpickles `data.pkl` with an allow-list of three harmless callables (rebuild a tensor,
rebuild a parameter, make an OrderedDict); every scripted module class becomes an inert record, and
any other global in the pickle is refused. Nothing in the archive is executed. Every read is bounded
first by what the records declare (see archive.py): a storage entry must declare exactly the bytes its
record says, each storage is read once however often it is named, and no tensor may view more elements
than its storage holds.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import zipfile
from typing import Any

import torch

from .archive import UnsafeArchiveError, read_entry

# The legacy storage class names pickles use to say a storage's element type.
STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptedModule:
    """Inert stand-in for a scripted module class (`__torch__.*`): it only keeps the attribute dict."""

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 for a flat tensor standing in for the storage.

    A weights tensor never holds more elements than its storage: a larger one (strides of 0, overlapping
    rows) would make memory out of nothing when copied, so it is refused.
    """
    size, stride = tuple(size), tuple(stride)
    if not all(type(n) is int and n >= 0 for n in (offset, *size, *stride)) or len(size) != len(stride):
        raise UnsafeArchiveError(f"a tensor record has offset {offset!r:.20}, size {size!r:.40}, stride "
                                 f"{stride!r:.40}; expected whole numbers, one stride per dimension")
    if math.prod(size) > storage.numel():
        raise UnsafeArchiveError(f"a tensor of size {size!r:.60} views a storage of {storage.numel()} "
                                 "elements")
    return storage.as_strided(size, stride, offset)


def _rebuild_parameter(data: torch.Tensor, *_ignored) -> torch.Tensor:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive = archive
        self.prefix = prefix  # "<name>/": where data.pkl and data/<key> are
        self.storages: dict[str, torch.Tensor] = {}  # read once each, however many tensors name them

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptedModule,), {})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise UnsafeArchiveError(f"its pickle asks for {module}.{name}, which a weights file never needs")

    def persistent_load(self, pid):
        # ('storage', dtype, key, location, numel): a flat tensor over the bytes of data/<key>
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype)):
            raise UnsafeArchiveError(f"unexpected persistent id {pid!r:.80}")
        _, dtype, key, _, numel = pid
        if not (isinstance(key, str) and key.isdigit() and type(numel) is int and numel >= 0):
            raise UnsafeArchiveError(f"a storage record names {key!r:.40} with {numel!r:.40} elements; "
                                     "torch writes a number and a count")
        if key in self.storages and self.storages[key].dtype != dtype:
            raise UnsafeArchiveError(f"storage {key} is named with two element types")
        if key not in self.storages:
            size = numel * torch.empty(0, dtype=dtype).element_size()
            raw = bytearray(read_entry(self.archive, f"{self.prefix}data/{key}", size))
            self.storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def is_torchscript(archive: zipfile.ZipFile) -> bool:
    """TorchScript archives carry their code (`<name>/code/...`) and `constants.pkl`; torch.save zips do
    not."""
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def _flatten(node: Any, prefix: str, out: dict) -> None:
    attributes = node.attributes if isinstance(node, _ScriptedModule) else node
    for name, value in attributes.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, (_ScriptedModule, dict)):
            _flatten(value, f"{prefix}{name}.", out)


def read_torchscript(archive: zipfile.ZipFile) -> dict[str, torch.Tensor]:
    """All tensors (parameters and buffers) of a TorchScript archive, keyed by their dotted module path."""
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise ValueError("a TorchScript archive has exactly one <name>/data.pkl; this one has "
                         f"{len(pickles)}")
    prefix = pickles[0][: -len("data.pkl")]
    root = _RestrictedUnpickler(read_entry(archive, pickles[0]), archive, prefix).load()
    if not isinstance(root, (_ScriptedModule, dict)):
        raise ValueError(f"its data.pkl holds a {type(root).__name__}, not a module")
    state: dict[str, torch.Tensor] = {}
    _flatten(root, "", state)
    return state
