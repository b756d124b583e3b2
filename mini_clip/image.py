"""OpenAI's image preprocessing with PIL and numpy only, and the crop geometry it implies.

OpenAI's `clip._transform(n_px)` is torchvision's Resize(n_px, bicubic) -> CenterCrop(n_px) -> RGB ->
ToTensor -> Normalize. The same arithmetic is written out here (torchvision is not a dependency), and the
geometry of the resize and crop is kept so a relevance grid can be mapped back onto the original photo.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from PIL import __version__ as PILLOW_VERSION

MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI's per-channel statistics of its training images
STD = (0.26862954, 0.26130258, 0.27577711)
# Above this many pixels the short-side resize is not made in full: a 1 x 10000 sliver at 224 would become
# 224 x 2,240,000 pixels (1.5 GB) to keep 224 x 224 of them. Below it (every aspect ratio up to about 1:80
# at 224) the resize is OpenAI's, bit for bit; above it see `_resize_window`.
MAX_RESIZED_PIXELS = 1 << 22
PILLOW_MAJOR = int(PILLOW_VERSION.split(".")[0])


class ImageError(ValueError):
    """An image that cannot be read; the message names the file and says what was wrong."""


# Preprocessing.interpolation -> PIL's filter (torchvision's Resize on a PIL image calls PIL with these).
INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
RESIZES = ("shortest", "squash")  # OpenCLIP's names: short side + centre crop (OpenAI's), or both sides


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input images were made: it travels with the weights (OpenCLIP's `preprocess_cfg`, a
    Hugging Face `preprocessor_config.json`, mini_clip's metadata). The defaults are OpenAI's."""
    mean: tuple[float, float, float] = MEAN
    std: tuple[float, float, float] = STD
    resize: str = "shortest"  # "shortest": short side to R, centre crop R x R; "squash": whole image to R x R
    interpolation: str = "bicubic"

    def __post_init__(self):
        """Validate every field (a file's metadata is untrusted) and keep mean and std as tuples of floats."""
        for name in ("mean", "std"):
            value = getattr(self, name)
            if (not isinstance(value, (tuple, list)) or len(value) != 3
                    or not all(type(v) in (int, float) and math.isfinite(v) for v in value)):
                raise ValueError(f"preprocessing {name} is {value!r:.60}; expected three numbers, one per "
                                 "channel")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if min(self.std) <= 0:
            raise ValueError(f"preprocessing std is {self.std}; each channel's must be positive")
        if self.resize not in RESIZES:
            raise ValueError(f"preprocessing resize is {self.resize!r:.40}; mini_clip implements "
                             f"{' and '.join(RESIZES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocessing interpolation is {self.interpolation!r:.40}; mini_clip "
                             f"implements {', '.join(INTERPOLATIONS)}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> "Preprocessing":
        """From `to_json`'s text (a file's metadata); None (older files) means OpenAI's."""
        if text is None:
            return cls()
        fields = json.loads(text)
        if not isinstance(fields, dict) or set(fields) - {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"preprocessing {text[:80]!r} is not an object of "
                             f"{', '.join(cls.__annotations__)}")
        return cls(**fields)


OPENAI = Preprocessing()


@dataclass(frozen=True)
class CropGeometry:
    """Where the model's square input came from: the original (width, height) was resized to
    (resized_width, resized_height), then the square [left, left+size) x [top, top+size) was cut out."""
    width: int
    height: int
    resized_width: int
    resized_height: int
    left: int
    top: int
    size: int

    def crop_box(self) -> tuple[float, float, float, float]:
        """The crop as (x0, y0, x1, y1) in original-image pixel coordinates (edges, not centres)."""
        sx, sy = self.width / self.resized_width, self.height / self.resized_height
        return (self.left * sx, self.top * sy, (self.left + self.size) * sx, (self.top + self.size) * sy)


def crop_geometry(width: int, height: int, size: int, resize: str = "shortest") -> CropGeometry:
    """The resize-then-centre-crop that torchvision's Resize(size) + CenterCrop(size) apply; for a "squash"
    resize (Resize((size, size))), the whole image scaled to size x size on each axis, and no crop.

    The short side becomes `size`, the long side `int(size * long / short)` (truncated, as torchvision);
    the crop offsets are `int(round((side - size) / 2.0))` (Python's round: halves go to even).
    """
    if resize == "squash":
        return CropGeometry(width, height, size, size, 0, 0, size)
    if width <= height:
        rw, rh = size, int(size * height / width)
    else:
        rw, rh = int(size * width / height), size
    left = int(round((rw - size) / 2.0))
    top = int(round((rh - size) / 2.0))
    return CropGeometry(width, height, rw, rh, left, top, size)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16-bit greyscale ("I;16*", "I") is scaled by 1/257 (65535 -> 255) instead of clipped at 255 as
    `convert("RGB")` would, which turns most 16-bit photos white. Palette images with a transparent
    colour go through RGBA first, which PIL asks for; the alpha channel is then dropped, as OpenAI does.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        grey = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open an image file fully, honour its EXIF orientation (OpenAI's pipeline does not; a phone photo
    would otherwise be seen on its side), and return it in RGB. Animated images give their first frame.

    Raises:
        ImageError: the file is missing, not an image, truncated, or too large to decode safely.
    """
    try:
        with warnings.catch_warnings():
            # PIL's decoders warn about what they skip ("Corrupt EXIF data", "Truncated File Read"); the
            # image loads or ImageError says why not, so the warnings would only add lines to a CLI's output.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # too many pixels: refuse
            # The file is opened here, not by PIL, so closing it leaves the decoded pixels in place: PIL's own
            # close would free them, and exif_transpose's copy of a photo that needs no turn (22 ms for 12 MP)
            # was what kept them.
            with open(path, "rb") as f:
                image = Image.open(f)
                image.load()  # decode now, so a truncated file fails here and not halfway through
                ImageOps.exif_transpose(image, in_place=True)  # turns the pixels only where the tag says so
                return to_rgb(image)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image file") from None
    except Image.UnidentifiedImageError:  # PIL's own text names the file object, not the path
        raise ImageError(f"{path}: not a readable image (not a format PIL recognises)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused, too many pixels to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unknown, corrupt and truncated files
        raise ImageError(f"{path}: not a readable image ({e})") from None


def resize_and_crop(image: Image.Image, size: int, preprocessing: Preprocessing = OPENAI
                    ) -> tuple[Image.Image, CropGeometry]:
    """Resize (OpenAI's: bicubic, short side) and centre crop to size x size, with the geometry used."""
    g = crop_geometry(image.width, image.height, size, preprocessing.resize)
    if g.resized_width * g.resized_height > MAX_RESIZED_PIXELS and preprocessing == OPENAI:
        return _resize_window(image, g), g  # written for OpenAI's bicubic filter; see its docstring
    if g.resized_width * g.resized_height > MAX_RESIZED_PIXELS:
        raise ValueError(f"the image ({image.width} x {image.height}) would resize to {g.resized_width} x "
                         f"{g.resized_height} pixels, too many; crop it to a less extreme aspect ratio")
    resized = image.resize((g.resized_width, g.resized_height), INTERPOLATIONS[preprocessing.interpolation])
    return resized.crop((g.left, g.top, g.left + size, g.top + size)), g


def _resize_window(image: Image.Image, g: CropGeometry) -> Image.Image:
    """The crop of `resize_and_crop` without making the whole resized image, for extreme aspect ratios.

    PIL resizes in two separable passes, each output pixel a bicubic sum over the source pixels within
    2 * max(scale, 1) of its centre. So: keep only the source rows the crop's rows read, then run the two
    passes one call each, in the order PIL would for the full resize, each onto the crop's columns or rows
    only. The long axis needs a fractional `box`, which PIL takes as float32: a few pixels in a thousand
    may differ by a level or two (of 255) from the full resize, which every image below
    MAX_RESIZED_PIXELS still gets.
    """
    sx, sy = image.width / g.resized_width, image.height / g.resized_height
    margin = 2 * max(sy, 1.0) + 1  # bicubic support in source rows, and one for PIL's rounding of bounds
    y0 = max(0, int(g.top * sy - margin))
    y1 = min(image.height, math.ceil((g.top + g.size) * sy + margin))
    rows = image.crop((0, y0, image.width, y1))
    x0, x1 = g.left * sx, min(image.width, (g.left + g.size) * sx)  # min(): rounding may pass the edge
    ya, yb = g.top * sy - y0, min(y1 - y0, (g.top + g.size) * sy - y0)
    if _vertical_first(image.width, image.height, g.resized_width, g.resized_height):
        tall = rows.resize((rows.width, g.size), Image.BICUBIC, box=(0, ya, rows.width, yb))  # vertical only
        return tall.resize((g.size, g.size), Image.BICUBIC, box=(x0, 0, x1, g.size))  # horizontal only
    wide = rows.resize((g.size, rows.height), Image.BICUBIC, box=(x0, 0, x1, rows.height))  # horizontal only
    return wide.resize((g.size, g.size), Image.BICUBIC, box=(0, ya, g.size, yb))  # vertical only


def _vertical_first(width: int, height: int, new_width: int, new_height: int) -> bool:
    """Which pass PIL runs first when both axes change. Pillow 13 runs the vertical one first when the height
    loses more than twice as many pixels as the width (libImaging/Resample.c); earlier versions always
    start with the horizontal one. The order changes the result: each pass rounds to 8 bits."""
    if PILLOW_MAJOR < 13:
        return False
    return height - new_height > 0 and height - new_height > 2 * (width - new_width)


ImageLike = Union[Image.Image, str, os.PathLike, np.ndarray]


def preprocess(image: ImageLike, size: int = 224, return_geometry: bool = False,
               preprocessing: Preprocessing = OPENAI):
    """An image (PIL, path, uint8 array) -> normalised float tensor (3, size, size), as OpenAI's `preprocess`.

    Args:
        image: a PIL image in any mode, a path to an image file, or a uint8 numpy array of pixels,
            (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped), as `np.asarray(pil_image)` gives.
        size: the model's input resolution (`model.visual.input_resolution`), a positive int.
        return_geometry: also return the CropGeometry that maps the input back onto the original.
        preprocessing: resize, interpolation, mean and std (the model's: `model.preprocessing`); OpenAI's
            by default.
    Returns:
        The tensor, or (tensor, geometry) when `return_geometry` is set.
    Raises:
        TypeError: `image` or `size` is of another type (a tensor is taken to be preprocessed already).
        ValueError: `size` < 1, an array of another shape or dtype, or an image without pixels.
        ImageError: a path that is not a readable image.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"size must be an int, the model's input resolution; got {size!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, the model's input resolution; got {size}")
    image = _as_image(image)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image has no pixels ({image.width} x {image.height})")
    crop, geometry = resize_and_crop(to_rgb(image), int(size), preprocessing)
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, size, size)
    x = normalize(x, preprocessing)
    return (x, geometry) if return_geometry else x


def _as_image(image: ImageLike) -> Image.Image:
    """A PIL image as given, an image file opened with `load_image`, or a uint8 array made a PIL image.

    Raises:
        TypeError: anything else; ValueError: an array that is not (H, W), (H, W, 3) or (H, W, 4) uint8.
    """
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, np.ndarray):
        # Only uint8 says its scale: floats could be in [0, 1] or [0, 255], or normalised already.
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(f"a numpy image must be uint8 pixels of shape (H, W), (H, W, 3) or (H, W, 4); "
                             f"got {image.dtype} {image.shape}: convert it, e.g. np.clip(x * 255, 0, 255)"
                             ".astype(np.uint8) for floats in [0, 1], or pass a PIL image or a path")
        return Image.fromarray(np.ascontiguousarray(image))
    if isinstance(image, torch.Tensor):
        raise TypeError("preprocess takes a PIL image, a path or a uint8 numpy array, not a tensor: a tensor "
                        "is taken to be preprocessed already (pass it to the model as it is)")
    raise TypeError(f"expected a PIL image, a path (str or os.PathLike) or a uint8 numpy array; got "
                    f"{type(image).__name__}")


def normalize(x: torch.Tensor, preprocessing: Preprocessing = OPENAI) -> torch.Tensor:
    """Pixels in [0, 1], channels in dimension -3 ((3, H, W) or (B, 3, H, W)) -> normalised (OpenAI's mean
    and std by default)."""
    mean, std = torch.tensor(preprocessing.mean), torch.tensor(preprocessing.std)
    return (x - mean.view(3, 1, 1)) / std.view(3, 1, 1)
