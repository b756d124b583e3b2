"""`load`, like OpenAI's `clip.load`: a CLIP and its images' preprocessing from a checkpoint, a model name
(downloaded once, by pretrained.py) or nothing (the embedded model).

The top of the loading modules: it imports pretrained.py and weights.py, and neither imports it.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Callable, Optional, Union

import torch

from . import pretrained
from .image import Preprocessing, preprocess
from .model import CLIP
from .relevance import check_recommended
from .weights import DEFAULT_WEIGHTS, EMBEDDED, PathLike, WeightsError, build, read_checkpoint


def load(path: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu",
         dtype: torch.dtype = torch.float32, arch: Optional[str] = None) -> tuple[CLIP, Callable]:
    """Load a CLIP checkpoint of any supported format, like `clip.load`.

    Args:
        path: a file or Hugging Face directory; a model name ("ViT-B/32", ...: mini_clip.pretrained) is
            downloaded once into the cache; None loads the embedded default model.
        device: where the model lives.
        dtype: parameter dtype; fp32 by default (exact), torch.float16/bfloat16 for speed on a GPU.
        arch: the OpenCLIP architecture (a name of mini_clip.zoo.ARCHS, e.g. "ViT-H-14") of a file that
            does not state its own; a file that does is read by its own.
    Returns:
        (model in eval mode, preprocess: PIL image or path -> tensor (3, R, R) for the model's resolution R,
        made as the model's images were: `model.preprocessing`).
    Raises:
        WeightsError: an unknown model name, or a checkpoint that cannot be loaded (the message says why);
            DownloadError (a WeightsError) where a named model cannot be downloaded.
    """
    if path is None:
        path = DEFAULT_WEIGHTS
        if not path.exists():
            raise WeightsError(f"{path}: the embedded default model is missing (and not in "
                               f"{EMBEDDED[1].parent}); reinstall mini_clip (pip install from its "
                               "repository, or a wheel built from it) or pass a weights file")
    elif isinstance(path, str) and "ViT" in path and "/" in path:
        # A name means the model, as in clip.load, even where a folder of that name exists ("./ViT-B/32" is
        # the folder); fetch refuses what looks like a name and is neither a name nor a file.
        if path in pretrained.names() or not os.path.exists(path):
            path = pretrained.fetch(path)  # downloaded, verified and converted once, then read from the cache
    sd, config, metadata = read_checkpoint(path, arch)
    model = build(sd, config, str(path), device, dtype)
    read_metadata(model, metadata, path)
    return model, functools.partial(preprocess, size=config.image_resolution,
                                    preprocessing=model.preprocessing)


def read_metadata(model: CLIP, metadata: dict, path: PathLike) -> None:
    """Set what a file's metadata says of its model beyond the tensors, validated (a file is untrusted): how
    its images are made (`model.preprocessing`) and the explanation settings it recommends
    (`model.recommended`, see relevance.settings). Raises WeightsError naming `path` and what is damaged."""
    try:
        model.preprocessing = Preprocessing.from_json(metadata.get("preprocess"))
    except (ValueError, TypeError, RecursionError) as e:
        raise WeightsError(f"{path}: damaged preprocessing in the metadata ({str(e)[:300]})") from None
    if "explain" in metadata:  # the settings its model is best explained with (see relevance.settings)
        try:
            model.recommended = check_recommended(json.loads(metadata["explain"]), model)
        except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
            raise WeightsError(f"{path}: damaged explanation settings in the metadata "
                               f"({str(e)[:300]})") from None
