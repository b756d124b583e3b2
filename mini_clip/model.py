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
import math
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import MLP_RATIO, OPENAI_EPS, CLIPConfig
from .image import OPENAI, Preprocessing


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with (exact GELU changes results)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# CLIPConfig.activation -> the MLP's nonlinearity, one per config.ACTIVATIONS.
NONLINEARITIES = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


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
        self.mlp.add_module("gelu", NONLINEARITIES[activation]())
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
