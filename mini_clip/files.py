"""Writing a file whole: what `save` and the command line's pictures and records have in common."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union


def atomic_write(path: Union[str, os.PathLike], write: Callable) -> None:
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
