"""CLIP's architecture as data: the config a checkpoint's shapes (or its stated metadata) give, checked before
anything is built from it, and OpenAI's published presets.

A config is untrusted input (a file's metadata, a Hugging Face config.json, tensor shapes): every field is
validated here, so `model.CLIP` can build whatever a valid config states without checking again.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

HEAD_WIDTH = 64  # OpenAI's build_model: heads = width // 64 for both towers
MLP_RATIO = 4  # OpenAI's blocks: c_fc widens each token 4x
OPENAI_EPS = 1e-5  # torch's LayerNorm default, which OpenAI's model uses
# What a file that states no architecture is told: the ways to state it.
STATE_IT = ("state it: mini_clip.load(path, arch=NAME) or --arch NAME (names: mini_clip.zoo.ARCHS), or "
            "convert once with scripts/convert.py --arch NAME to a .safetensors whose config states it")
# The largest size a config may state: far above any CLIP (widths <= 2048, vocabularies < 300k), and small
# enough that the product of two sizes (a weight matrix's element count) stays well inside int64.
MAX_SIZE = 2 ** 24


def check_size(name: str, value: object, low: int = 1) -> None:
    """Raise ValueError unless `value` is a whole number (an int, not a bool or float) from low to MAX_SIZE.

    A config is untrusted input (a file's metadata, a Hugging Face config.json): this is its first check.
    """
    if type(value) is not int:
        raise ValueError(f"{name} is {value!r:.40} ({type(value).__name__}); expected a whole number")
    if not low <= value <= MAX_SIZE:
        raise ValueError(f"{name} is {value!r:.40}; expected a whole number from {low} to {MAX_SIZE}")


# CLIPConfig.activation: the MLP's nonlinearity (model.NONLINEARITIES builds each). OpenAI trained with
# QuickGELU; OpenCLIP's "gelu" is nn.GELU (erf), as Hugging Face's.
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int  # width of the joint image-text embedding space
    image_resolution: int  # input side in pixels; a multiple of the patch size
    vision_layers: int  # residual attention blocks in the image tower
    vision_width: int  # image token width
    vision_patch_size: int  # conv1 kernel = stride: the image is cut into (resolution/patch)^2 patches
    context_length: int = 77  # text positions (OpenAI: 77 = 75 BPE tokens + start + end)
    vocab_size: int = 49408  # 256 bytes + 256 bytes</w> + 48894 merges + 2 specials
    transformer_width: int = 512  # text token width
    transformer_heads: int = 8  # text attention heads
    transformer_layers: int = 12  # text residual attention blocks
    vision_heads: int = 0  # 0 means OpenAI's rule, vision_width // 64 (Hugging Face configs may differ)
    # What OpenCLIP and Hugging Face models change; defaults are OpenAI's, so older files keep their meaning.
    vision_mlp_width: int = 0  # 0 means 4 x vision_width; OpenCLIP's ViT-g/bigG differ (read from c_fc)
    transformer_mlp_width: int = 0  # 0 means 4 x transformer_width
    activation: str = "quick_gelu"  # OpenAI trained with QuickGELU, OpenCLIP's LAION/DataComp ViTs with GELU
    layer_norm_eps: float = OPENAI_EPS  # every LayerNorm's eps; some Hugging Face configs state 1e-6

    def __post_init__(self):
        """Validate every field before anything is built from them: types, bounds, then how they fit."""
        for field in dataclasses.fields(self):
            if field.type == "int":
                check_size(field.name, getattr(self, field.name), low=0 if field.default == 0 else 1)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation is {self.activation!r:.40}; expected one of "
                             f"{', '.join(ACTIVATIONS)}")
        eps = self.layer_norm_eps
        if type(eps) is not float or not 0 < eps < 1:  # a LayerNorm eps is small and positive (1e-5, 1e-6)
            raise ValueError(f"layer_norm_eps is {eps!r:.40}; expected a number between 0 and 1, such as "
                             "1e-05")
        # 0 means OpenAI's rule; frozen, so set through object.__setattr__, as dataclasses do
        if self.vision_heads == 0:
            object.__setattr__(self, "vision_heads", openai_heads("vision_width", self.vision_width))
        for tower in ("vision", "transformer"):
            if getattr(self, f"{tower}_mlp_width") == 0:
                object.__setattr__(self, f"{tower}_mlp_width", MLP_RATIO * getattr(self, f"{tower}_width"))
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(f"image_resolution {self.image_resolution} is not a multiple of the patch size "
                             f"{self.vision_patch_size}")
        for tower, width, heads in (("vision", self.vision_width, self.vision_heads),
                                    ("transformer", self.transformer_width, self.transformer_heads)):
            if width % heads:
                raise ValueError(f"{tower}_width {width} is not divisible by {tower}_heads {heads}")

    @classmethod
    def from_dict(cls, fields: object) -> "CLIPConfig":
        """A config from a JSON object (a file's metadata): unknown and missing fields are named."""
        if not isinstance(fields, dict):
            raise ValueError(f"the config is a JSON {type(fields).__name__}, not an object")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in fields if k not in names]
        if unknown:
            raise ValueError(f"the config has unknown fields {summary(unknown)}; valid: {', '.join(names)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in fields and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"the config lacks {', '.join(missing)}")
        return cls(**fields)

    @property
    def grid(self) -> int:
        """Patches per side of the image: 7 for ViT-B/32 at 224 px."""
        return self.image_resolution // self.vision_patch_size

    @staticmethod
    def sizes_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Every field that tensor shapes tell (all but the heads, the activation and the LayerNorm eps), read
        as OpenAI's `build_model` reads them, and the MLP widths from the first block's c_fc.

        Raises ValueError naming the tensor that is missing or has the wrong number of dimensions.
        """
        def size(key: str, axis: int, ndim: int) -> int:
            if key not in sd:
                raise ValueError(f"not a CLIP ViT state dict: {key!r} is missing"
                                 + (" (ResNet CLIPs are not supported)" if key == "visual.proj" else ""))
            shape = tuple(sd[key].shape)
            if len(shape) != ndim:
                raise ValueError(f"{key} has shape {shape}; a CLIP's has {ndim} dimensions")
            return shape[axis]

        def count_blocks(prefix: str) -> int:
            return len({k.split(".")[prefix.count(".")] for k in sd if k.startswith(prefix)})

        size("visual.proj", 1, 2)  # first: a ResNet CLIP has none, and is told so
        patch = size("visual.conv1.weight", -1, 4)
        grid = round((size("visual.positional_embedding", 0, 2) - 1) ** 0.5)
        return dict(
            embed_dim=size("text_projection", 1, 2),
            image_resolution=patch * grid,
            vision_layers=count_blocks("visual.transformer.resblocks."),
            vision_width=size("visual.conv1.weight", 0, 4),
            vision_patch_size=patch,
            context_length=size("positional_embedding", 0, 2),
            vocab_size=size("token_embedding.weight", 0, 2),
            transformer_width=size("ln_final.weight", 0, 1),
            transformer_layers=count_blocks("transformer.resblocks."),
            vision_mlp_width=size("visual.transformer.resblocks.0.mlp.c_fc.weight", 0, 2),
            transformer_mlp_width=size("transformer.resblocks.0.mlp.c_fc.weight", 0, 2),
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "CLIPConfig":
        """Infer the architecture from tensor shapes, as OpenAI's `build_model` does.

        Heads, activation and LayerNorm eps cannot be read from shapes: OpenAI's rules apply (heads = width
        // 64, QuickGELU, eps 1e-5), and where they cannot (a width that is not a multiple of 64, an MLP that
        is not 4x) the checkpoint is refused.
        """
        sizes = cls.sizes_from_state_dict(sd)
        for tower in ("vision", "transformer"):
            width, mlp = sizes[f"{tower}_width"], sizes[f"{tower}_mlp_width"]
            if mlp != MLP_RATIO * width:
                raise ValueError(f"{tower} MLP width {mlp} is not {MLP_RATIO} x {tower}_width {width}, so "
                                 f"OpenAI's rules cannot read this checkpoint: {STATE_IT}")
        return cls(**sizes, transformer_heads=openai_heads("transformer_width", sizes["transformer_width"]))


def openai_heads(name: str, width: int) -> int:
    """OpenAI's rule for a tower's heads (width // 64), refused where it cannot apply."""
    if width % HEAD_WIDTH:
        raise ValueError(f"{name} {width} is not a multiple of {HEAD_WIDTH}, so OpenAI's rule (heads = "
                         f"width // {HEAD_WIDTH}) cannot give its heads: {STATE_IT}")
    return width // HEAD_WIDTH


def summary(names: Iterable[str], first: int = 3) -> str:
    """A few names, then how many more: error messages stay one short line however long the list."""
    names = list(names)
    more = f", and {len(names) - first} more" if len(names) > first else ""
    return ", ".join(str(n)[:80] for n in names[:first]) + more


# OpenAI's published ViT models (clip.available_models()); from_state_dict must reproduce these exactly.
PRESETS = {
    "ViT-B/32": CLIPConfig(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                           vision_patch_size=32, context_length=77, vocab_size=49408, transformer_width=512,
                           transformer_heads=8, transformer_layers=12),
    "ViT-B/16": CLIPConfig(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                           vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=512,
                           transformer_heads=8, transformer_layers=12),
    "ViT-L/14": CLIPConfig(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                           vision_patch_size=14, context_length=77, vocab_size=49408, transformer_width=768,
                           transformer_heads=12, transformer_layers=12),
    "ViT-L/14@336px": CLIPConfig(embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
                                 vision_patch_size=14, context_length=77, vocab_size=49408,
                                 transformer_width=768, transformer_heads=12, transformer_layers=12),
}
