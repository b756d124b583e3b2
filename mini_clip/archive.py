"""Checks on an untrusted torch archive made before any of it is read: sizes it declares, globals it names.

A zip entry declares its uncompressed size, and Python's zipfile never inflates an entry past it, so
bounding the declared sizes bounds the memory a read can take. A pickle names every callable it will call
(GLOBAL / STACK_GLOBAL / INST opcodes), so scanning its opcodes with `pickletools.genops` tells a crafted
file from a damaged one whatever torch's error messages say, in any torch version, without running it.
"""
from __future__ import annotations

import io
import pickletools
import warnings
import zipfile
from typing import BinaryIO, Iterator, Union

import torch

# torch.save and torch.jit.save store every entry uncompressed (64-byte aligned, for memory mapping), so a
# torch archive inflates to its own size. Someone may re-zip one with deflate, but trained floats deflate
# by a few percent; even a model that were 7/8 zeros stays below 8x. A zip bomb is ~1000x (deflate's best
# is 1032:1): refused before a byte is inflated.
MAX_INFLATION = 8

# What a checkpoint's pickle may name besides torch's storage classes and dtypes: tensors and plain
# containers (torch's own weights-only reader allows these too; anything else is what a crafted file asks
# for).
SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device"),
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    *((module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset", "bytearray",
                                                                           "complex", "slice")),
}
def is_safe(module: str, name: str) -> bool:
    """A global a weights pickle may name: SAFE_GLOBALS, a torch storage class (the element type of a
    tensor's bytes: torch.FloatStorage, torch.ComplexFloatStorage, ...) or a torch dtype."""
    if (module, name) in SAFE_GLOBALS:
        return True
    value = getattr(torch, name, None) if module == "torch" and not name.startswith("_") else None
    return isinstance(value, torch.dtype) or (isinstance(value, type) and name.endswith("Storage"))


STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
           "SHORT_BINSTRING"}


class UnsafeArchiveError(ValueError):
    """The archive asks for something other than tensors and plain containers, or declares sizes no weights
    file has."""


def check_zip(archive: zipfile.ZipFile, file_size: int) -> None:
    """Refuse an archive whose entries declare more than MAX_INFLATION times the file's size."""
    declared = sum(info.file_size for info in archive.infolist())
    if declared > MAX_INFLATION * file_size:
        raise UnsafeArchiveError(f"its entries declare {declared} bytes uncompressed, "
                                 f"{declared // file_size}x the file's {file_size} bytes (weights do not "
                                 f"compress past {MAX_INFLATION}x; a zip bomb does)")


def read_entry(archive: zipfile.ZipFile, name: str, size: Union[int, None] = None) -> bytes:
    """Read one entry, after checking that it exists and declares `size` bytes (when given)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise UnsafeArchiveError(f"it has no entry {name[:80]!r}") from None
    if size is not None and info.file_size != size:
        raise UnsafeArchiveError(f"{name[:80]} declares {info.file_size} bytes where its record says {size}")
    return archive.read(info)


def _globals(data: BinaryIO) -> Iterator[tuple[str, str]]:
    """(module, name) of every global one pickle names; ("?", "?") for a STACK_GLOBAL whose strings are
    not the two opcodes right before it (a crafted pickle can fetch them from the memo instead)."""
    recent: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            yield tuple(arg.split(" ", 1))
        elif op.name == "STACK_GLOBAL":
            yield tuple(recent[-2:]) if len(recent) >= 2 else ("?", "?")
        if op.name in STRINGS:
            recent.append(str(arg))
        elif op.name not in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"):
            recent.clear()


def check_pickles(data: Union[bytes, BinaryIO], count: int = 5) -> None:
    """Refuse the first pickle naming a global outside SAFE_GLOBALS, among the first `count` pickles of
    `data` (a legacy torch.save file is five pickles, then raw storages). Bytes that stop parsing as a
    pickle end the scan quietly: they are damage, for the reader to report, not a crafted call."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    for _ in range(count):
        try:
            with warnings.catch_warnings():  # pickletools decoding garbage warns about escapes: not ours
                warnings.simplefilter("ignore", DeprecationWarning)
                for module, name in _globals(stream):  # one by one: a global before garbage still counts
                    if not is_safe(module, name):
                        raise UnsafeArchiveError(f"its pickle asks for {module[:60]}.{name[:60]}, which a "
                                                 "weights file never needs")
        except UnsafeArchiveError:
            raise
        except Exception:  # genops' errors for bytes that are not (or no longer) a pickle
            return
