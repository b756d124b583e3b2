"""What `relevance` accepts as images and texts, turned into checked tensors: a preprocessed float batch and
token ids. Each refusal says what was given and how to make what is expected."""
from __future__ import annotations

import os
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .image import OPENAI, ImageLike, Preprocessing, preprocess
from .model import CLIP
from .tokenizer import EOT, tokenize

# How to fix images given as raw pixels.
PREPROCESS_HINT = ("pass a PIL image or a path (preprocessed here at the model's resolution), or "
                   "preprocess it with the preprocess that mini_clip.load returns")
# OpenAI's normalisation maps pixels in [0, 1] into about [-1.8, 2.3]: values above this, with none below
# zero, are pixels in [0, 255] that were not normalised.
MAX_NORMALISED = 10.0

Images = Union[torch.Tensor, ImageLike, Sequence[Union[torch.Tensor, ImageLike]]]
Texts = Union[str, Sequence[str], torch.Tensor, np.ndarray, Sequence[Sequence[int]]]


def _dtype(x: torch.Tensor) -> str:
    return str(x.dtype).removeprefix("torch.")


def as_images(image: Images, size: int, preprocessing: Preprocessing = OPENAI) -> torch.Tensor:
    """Whatever `relevance` accepts as images -> a float batch (B, 3, size, size), checked."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("no images given: pass at least one (PIL images, paths, or a tensor)")
        # each checked alone, then one batch
        return torch.cat([as_images(one, size, preprocessing) for one in image])
    if not isinstance(image, torch.Tensor):
        if not isinstance(image, (Image.Image, str, os.PathLike, np.ndarray)):
            raise TypeError(f"image must be a preprocessed tensor (B, 3, {size}, {size}), a PIL image, a "
                            f"path, a uint8 numpy array, or a list of these; got {type(image).__name__}")
        return preprocess(image, size, preprocessing=preprocessing)[None]  # (1, 3, size, size)
    if not image.is_floating_point():
        raise ValueError(f"image is a {_dtype(image)} tensor of raw pixels: {PREPROCESS_HINT}")
    image = image[None] if image.dim() == 3 else image
    if image.dim() != 4 or tuple(image.shape[1:]) != (3, size, size) or image.shape[0] == 0:
        raise ValueError(f"expected preprocessed images of shape (B, 3, {size}, {size}), B >= 1, got "
                         f"{tuple(image.shape)}: use the preprocess that mini_clip.load returns "
                         f"(size {size})")
    if not torch.isfinite(image).all():
        raise ValueError("the image tensor holds NaN or inf values: preprocess the image again")
    if image.min() >= 0 and image.max() > MAX_NORMALISED:
        raise ValueError(f"image values lie in [0, {float(image.max()):g}]: raw pixels, not normalised; "
                         f"{PREPROCESS_HINT}")
    return image


def as_tokens(model: CLIP, texts: Texts, truncate: bool) -> torch.Tensor:
    """Strings or token ids (a tensor, an array, rows of ints) -> ids (N, <= context), checked row by row."""
    strings = isinstance(texts, (list, tuple)) and all(isinstance(text, str) for text in texts)
    if isinstance(texts, str) or strings:
        if not texts:
            raise ValueError("no texts given: pass at least one string")
        return tokenize(texts, model.context_length, truncate)
    if isinstance(texts, np.ndarray):
        texts = torch.from_numpy(texts)
    elif isinstance(texts, (list, tuple)):  # rows of ids, or a mistake such as a string beside a row
        if any(isinstance(row, (str, bytes)) or not hasattr(row, "__len__") for row in texts):
            kinds = ", ".join(sorted({type(row).__name__ for row in texts}))
            raise TypeError("texts must be strings, or rows of token ids (a LongTensor (N, <= context) as "
                            f"mini_clip.tokenize makes, or lists of ints), not a mix; got {kinds}")
        try:
            texts = torch.tensor([[int(i) for i in row] for row in texts])
        except (TypeError, ValueError) as e:
            raise ValueError(f"rows of token ids must be ints, all of one length (pad with 0): {e}") from None
    if not isinstance(texts, torch.Tensor):
        raise TypeError(f"texts must be a string, a list of strings or token ids; got {type(texts).__name__}")
    if texts.is_floating_point() or texts.is_complex() or texts.dtype == torch.bool:
        raise ValueError(f"token ids must be integers, got a {_dtype(texts)} tensor: pass the LongTensor "
                         "that mini_clip.tokenize returns (or ids.long())")
    tokens = texts.long()
    context = model.context_length
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] > context:
        raise ValueError(f"expected token ids of shape (texts, <= {context}), at least one text, "
                         f"got {tuple(tokens.shape)}")
    vocab_size = model.token_embedding.num_embeddings
    for j, row in enumerate(tokens):
        outside = row[(row < 0) | (row >= vocab_size)]
        if len(outside):
            raise ValueError(f"text {j} has token id {int(outside[0])}, outside the model's vocabulary "
                             f"[0, {vocab_size}): make ids with mini_clip.tokenize")
        if not (row == EOT).any():
            raise ValueError(f"text {j} has no end-of-text token ({EOT}); every row of token ids needs one, "
                             "as mini_clip.tokenize makes")
    return tokens
