"""OpenAI's CLIP (ViT image tower + causal text transformer), written out to be read top to bottom.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021). Parameter
names are OpenAI's (`visual.conv1`, `transformer.resblocks.{i}.attn.in_proj_weight`, ...), so OpenAI and
OpenCLIP checkpoints load unchanged. Two departures from OpenAI's `model.py`, neither changing a number:
- tensors are batch-first, (B, T, C), as in open_clip, instead of (T, B, C);
- attention is written out instead of calling `nn.MultiheadAttention`, so each block can keep its attention
  probabilities in the autograd graph when asked (`recording`) — the relevance method needs them and their
  gradients, and this way it needs no hooks. When not recording, blocks take the fused
  `F.scaled_dot_product_attention` path and keep nothing.
One shortcut, in `Transformer.forward`: a tower's last block computes only the rows its caller reads (the
class token, end-of-text); no later block reads the others.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .image import OPENAI, Preprocessing

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


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with (exact GELU changes results)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# CLIPConfig.activation -> the MLP's nonlinearity. OpenCLIP's "gelu" is nn.GELU (erf), as Hugging Face's.
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


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


class SkipInitOnMeta:
    """Mixin: no random init on the meta device. weights.build constructs the model there and then assigns
    the checkpoint's tensors, so the init is thrown away; run through meta's Python decompositions, it cost
    about a third of loading ViT-B/32. On real devices the init (and the random numbers it draws) is
    unchanged."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Linear(SkipInitOnMeta, nn.Linear):
    pass


class Conv2d(SkipInitOnMeta, nn.Conv2d):
    pass


class Embedding(SkipInitOnMeta, nn.Embedding):
    pass


def randn_scaled(scale: float, *shape: int) -> torch.Tensor:
    """scale * N(0, 1) of `shape`: OpenAI's init of the image tower's embeddings and projection. On the meta
    device (loading, where every value is replaced) an empty tensor instead: the first arithmetic on meta
    tensors imports torch's decompositions, about 1 s of a fresh process's first load."""
    x = torch.empty(shape)
    return x if x.is_meta else scale * torch.randn(shape)


class LayerNorm(SkipInitOnMeta, nn.LayerNorm):
    """LayerNorm computed in fp32 and cast back, so fp16/bf16 models stay stable (as OpenAI's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(),
                            self.eps).to(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (fused in-projection)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: q, k, v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False, keep_probs: bool = False,
                rows: torch.Tensor | None = None):
        """Returns (output (B, Q, C), attention probabilities (B, nh, Q, T) or None). `rows` (B, Q) are the
        positions of the tokens that ask (all T by default); every token is still attended to."""
        B, T, C = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        hs = C // self.heads
        q, k, v = (t.view(B, T, self.heads, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if rows is not None:
            q = q.gather(2, rows[:, None, :, None].expand(B, self.heads, rows.shape[1], hs))  # (B, nh, Q, hs)
        future = None
        if causal:  # a text token sees itself and the tokens before it
            pos = torch.arange(T, device=x.device)
            future = pos > (pos[:, None] if rows is None else rows[:, None, :, None])  # (T, T), (B, 1, Q, T)
        if keep_probs:
            scores = (q * hs ** -0.5) @ k.transpose(-2, -1)  # (B, nh, Q, T)
            if future is not None:
                scores = scores.masked_fill(future, -math.inf)
            probs = scores.float().softmax(dim=-1).to(q.dtype)  # softmax in fp32, as torch's MHA
            y = probs @ v  # (B, nh, Q, hs)
        else:
            probs = None
            if causal and rows is None:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if future is None else ~future)
        y = y.transpose(1, 2).reshape(B, q.shape[2], C)
        return self.out_proj(y), probs


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block. With `record` set, `attn_probs` holds this block's last attention
    probabilities, (B, nh, T, T), as a tensor in the autograd graph (for relevance); otherwise None."""

    def __init__(self, width: int, heads: int, mlp_width: int = 0, activation: str = "quick_gelu",
                 eps: float = OPENAI_EPS):
        super().__init__()
        mlp_width = mlp_width or MLP_RATIO * width
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential()  # named children, so keys read mlp.c_fc.* and mlp.c_proj.* as OpenAI's
        self.mlp.add_module("c_fc", Linear(width, mlp_width))
        self.mlp.add_module("gelu", ACTIVATIONS[activation]())
        self.mlp.add_module("c_proj", Linear(mlp_width, width))
        self.ln_2 = LayerNorm(width, eps=eps)
        self.record = False
        self.attn_probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, causal: bool = False,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, Q, C): the tokens at positions `rows` (B, Q) updated (all T by default)."""
        y, self.attn_probs = self.attn(self.ln_1(x), causal=causal, keep_probs=self.record, rows=rows)
        if rows is not None:
            x = x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1]))  # (B, Q, C)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_width: int = 0,
                 activation: str = "quick_gelu", eps: float = OPENAI_EPS):
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_width, activation, eps)
                                       for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False, start: int = 0, stop: int | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Blocks start .. stop - 1 (all by default): tokens (B, T, C) -> (B, T, C), or (B, Q, C) with `rows`.

        The towers' one speed trick lives here: a caller that reads only some rows of the output (the class
        token, end-of-text) names them, `rows` (B, Q), and the last block computes those alone (queries,
        out-projection and MLP for Q rows, not T). Earlier blocks compute every row: the next one attends to
        all of them.
        """
        blocks = self.resblocks[start:stop]
        for block in blocks[:-1]:
            x = block(x, causal=causal)
        return blocks[-1](x, causal=causal, rows=rows) if len(blocks) else x


class VisionTransformer(nn.Module):
    def __init__(self, resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int,
                 mlp_width: int = 0, activation: str = "quick_gelu", eps: float = OPENAI_EPS):
        super().__init__()
        self.input_resolution = resolution
        self.conv1 = Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(randn_scaled(scale, width))
        tokens = (resolution // patch_size) ** 2 + 1  # the patches and the class token
        self.positional_embedding = nn.Parameter(randn_scaled(scale, tokens, width))
        self.ln_pre = LayerNorm(width, eps=eps)
        self.transformer = Transformer(width, layers, heads, mlp_width, activation, eps)
        self.ln_post = LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(randn_scaled(scale, width, output_dim))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) -> tokens (B, 1 + grid*grid, C): class token first, then patches row by row."""
        x = self.conv1(image.to(self.conv1.weight.dtype))  # (B, C, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, C)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, T, C)
        return self.ln_pre(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, C) -> image features (B, embed_dim), read from the class token."""
        return self.ln_post(x[:, 0, :]) @ self.proj

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.embed(image)
        # pool reads the class token alone, so the last block computes its row alone; a recording block
        # computes every row, to keep the full (T, T) probabilities it promises.
        cls = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)  # (B, 1): position 0
        return self.pool(self.transformer(x, rows=None if self.transformer.resblocks[-1].record else cls))


class CLIP(nn.Module):
    """Image and text towers and the learned temperature; `forward` returns OpenAI's two logit matrices."""

    def __init__(self, config: CLIPConfig, initialize: bool = True):
        super().__init__()
        c = self.config = config
        self.context_length = c.context_length
        self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width,
                                        c.vision_layers, c.vision_heads, c.embed_dim, c.vision_mlp_width,
                                        c.activation, c.layer_norm_eps)
        self.transformer = Transformer(c.transformer_width, c.transformer_layers, c.transformer_heads,
                                       c.transformer_mlp_width, c.activation, c.layer_norm_eps)
        self.token_embedding = Embedding(c.vocab_size, c.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.transformer_width))
        self.ln_final = LayerNorm(c.transformer_width, eps=c.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.empty(c.transformer_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature 0.07
        # Explanation settings the weights recommend ({"method", "start_layer", "start_layer_text"}), read
        # from and written to mini_clip's files; empty for OpenAI's, which keep the original's defaults.
        self.recommended: dict = {}
        self.preprocessing: Preprocessing = OPENAI  # how its input images are made; loading sets the file's
        if initialize:  # loading a checkpoint skips it: every value is about to be replaced
            self.initialize_parameters()

    def initialize_parameters(self) -> None:
        """OpenAI's initialisation of the text blocks, applied to both towers (training from scratch starts
        here; OpenAI left the image blocks at PyTorch's defaults)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for tower in (self.visual.transformer, self.transformer):
            layers = len(tower.resblocks)
            proj_std = tower.width ** -0.5 * (2 * layers) ** -0.5
            for block in tower.resblocks:
                nn.init.normal_(block.attn.in_proj_weight, std=tower.width ** -0.5)
                nn.init.zeros_(block.attn.out_proj.bias)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=(2 * tower.width) ** -0.5)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Preprocessed images (B, 3, H, W) -> features (B, embed_dim), not normalised."""
        return self.visual(image)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids (N, L) -> token embeddings plus positions (N, L, C); L may be below the context."""
        positions = self.positional_embedding[: text.shape[1]]
        return self.token_embedding(text).to(self.dtype) + positions.to(self.dtype)

    def pool_text(self, x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """Tokens (N, L, C) -> text features (N, embed_dim), read at positions `at` (N,): end-of-text."""
        return self.ln_final(x[torch.arange(x.shape[0], device=x.device), at]) @ self.text_projection

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids (N, context) -> features (N, embed_dim), not normalised."""
        eot = text.argmax(dim=-1)  # (N,) end-of-text, the largest id in each row
        # The mask is causal and features are read at end-of-text, so the zero padding after the last
        # end-of-text can never influence them: cut it off (77 positions -> often fewer than 10).
        x = self.embed_text(text[:, : int(eot.max()) + 1])
        # As in the image tower, the last block computes the rows read alone (end-of-text), unless recording.
        if self.transformer.resblocks[-1].record:
            return self.pool_text(self.transformer(x, causal=True), eot)
        return self.pool_text(self.transformer(x, causal=True, rows=eot[:, None]), torch.zeros_like(eot))

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """logits_per_image (B, N): exp(logit_scale) times the cosine similarity."""
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text_features.t()

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits_per_image (B, N), logits_per_text (N, B)), as OpenAI's CLIP."""
        logits_per_image = self.logits(self.encode_image(image), self.encode_text(text))
        return logits_per_image, logits_per_image.t()

    def recording(self, image: bool = True, text: bool = True) -> contextlib.AbstractContextManager:
        """Context in which the chosen towers' blocks keep their attention probabilities (`attn_probs`)."""
        return recording([*(self.visual.transformer.resblocks if image else []),
                          *(self.transformer.resblocks if text else [])])


@contextlib.contextmanager
def recording(blocks: Iterable[ResidualAttentionBlock]) -> Iterator[None]:
    """Within the context, each block's forward keeps `attn_probs` in the autograd graph, so
    `torch.autograd.grad(score, [b.attn_probs for b in blocks])` yields every gradient in one call.
    On exit the probabilities are dropped, so no graph outlives the context."""
    blocks = list(blocks)
    for block in blocks:
        block.record = True
    try:
        yield
    finally:
        for block in blocks:
            block.record, block.attn_probs = False, None
