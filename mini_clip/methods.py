"""The explanation methods: what a recorded forward gives (`Tower`, one per tower), and one short function
per method that turns it into maps (`Maps`), picked from the table METHODS. `relevance.py` runs the forward
and the gradients a method's row asks for; a new method touches this module only.

Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers", ICCV 2021. For the score s = logits_per_image[i, j] and each explained block b of a tower:

    cam_b = mean over heads of clamp(ds/dA_b * A_b, min=0)         (A_b: attention probabilities)
    R = I;  for b = start .. last:  R = R + cam_b @ R

The image map is the class token's row of R over the patches; the text map is the end-of-text row over
the prompt's tokens (`chefer`; the two lines are `_chefer`'s loop).

Baselines (same API, `method=`):
- "attention": one block's attention (the start layer's: the last block by default), mean over heads,
  class (or end-of-text) row;
- "rollout": Abnar & Zuidema 2020, R = prod over blocks of (0.5 I + 0.5 mean_h A_b), rows renormalised;
- "gradcam": Selvaraju et al. 2017 on the tokens entering the start layer's block (the last by default):
  relu(sum_c w_c x_tc), with w_c the mean gradient over the tokens (patches; for text, the prompt's
  tokens). This is Grad-CAM on token features, as pytorch-grad-cam applies it to ViTs; the "GradCAM" of
  Chefer et al.'s own code weights the last block's attention map instead.

And a newer gradient method made for CLIP-like ViTs, "legrad" (Bousselham et al., "LeGrad: An Explainability
Method for Vision Transformers via Feature Formation Sensitivity", ICCV 2025), with a forward of its own
(`legrad_forward`): for each block l from the start layer (the authors' default: the last two), the image
embedding that block's tokens would give (ln_post of their MEAN, then proj, normalised) is scored against
the normalised text embedding, s_l; then

    map = sum over l of  mean over heads and query rows of clamp(ds_l/dA_l, min=0)   (patch columns)

It explains the image only (`text` is None). Each block's input is detached, so ds_l/dA_l is the only
gradient reaching A_l and one batched backward of sum_l s_l gives every layer's term at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch

from .model import CLIP, recording

# Pairs p = i * N + j: image i, text j (`split_pairs`).


@dataclass
class Tower:
    """One tower's record from its start block on: inputs and probs per image (or text), grads per pair."""
    inputs: torch.Tensor  # (B, T, C) the tokens entering the start block, where the graph starts
    probs: list[torch.Tensor]  # per block, (B, nh, Q, T) attention probabilities: Q = T, or the rows read
    grads: list[torch.Tensor]  # per pair, d score[i, j] of each probs (or of inputs), (P, ...); [] if none
    of_pair: torch.Tensor  # (P,) the image (or text) of each pair
    read: torch.Tensor  # (P,) the row each pair reads: the class token (0), end-of-text


# What a forward gives: logits_per_image (B, N), the image tower's record, the text tower's (None where a
# method explains the image only).
Recorded = tuple[torch.Tensor, Tower, Optional[Tower]]


class Maps(NamedTuple):
    """What a method gives, per pair: its maps, and the relevance matrices they are rows of (or None)."""
    image: torch.Tensor  # (P, T - 1) over the patches
    text: Optional[torch.Tensor]  # (P, L) over the text's token columns
    image_matrix: Optional[torch.Tensor]  # (P, T, T)
    text_matrix: Optional[torch.Tensor]  # (P, L, L)


def chefer(image: Tower, text: Tower, signed: bool) -> Maps:
    """Chefer et al.: R in each tower; the maps are its class-token and end-of-text rows."""
    R_img, R_txt = _chefer(image, signed), _chefer(text, signed)
    return Maps(*_rows_read(R_img, R_txt, text), R_img, R_txt)


def _chefer(t: Tower, signed: bool) -> torch.Tensor:
    """Chefer et al. in one tower: (P, T, T). Unsigned (the original): the mean over heads of clamp(grad * A,
    min=0). Signed: no clamp, so evidence against the text (negative) survives and heads can cancel."""
    size = t.inputs.shape[1]
    R = _identity(size, len(t.of_pair), t.inputs.device)
    for A, grad in zip(t.probs, t.grads):
        cam = grad.float() * A[t.of_pair].detach().float()  # (P, nh, Q, T); detached: R holds no graph
        cam = (cam if signed else cam.clamp(min=0)).mean(dim=1)  # (P, Q, T)
        if cam.shape[1] == size:
            R = R + cam @ R
        else:  # a last block computed where it is read alone: cam holds the read row, the others are zero
            R = R.scatter_add(1, t.read[:, None, None].expand(-1, -1, size), cam @ R)
    return R


def _identity(size: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(size, device=device).expand(n, size, size).clone()


def _rows_read(R_img: torch.Tensor, R_txt: torch.Tensor, text: Tower) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps in two matrices: the class token's row over the patches, end-of-text's over the tokens."""
    return R_img[:, 0, 1:], R_txt[torch.arange(len(text.read), device=R_txt.device), text.read]


def attention(image: Tower, text: Tower, signed: bool) -> Maps:
    """The start block's attention probabilities, mean over heads."""
    R_img, R_txt = (t.probs[0].detach().float().mean(dim=1)[t.of_pair] for t in (image, text))
    return Maps(*_rows_read(R_img, R_txt, text), R_img, None)


def rollout(image: Tower, text: Tower, signed: bool) -> Maps:
    """Abnar & Zuidema: R = A'_last ... A'_start with A' = 0.5 I + 0.5 mean_h A, rows renormalised."""
    R_img, R_txt = _rollout(image), _rollout(text)
    return Maps(*_rows_read(R_img, R_txt, text), R_img, None)


def _rollout(t: Tower) -> torch.Tensor:
    size = t.inputs.shape[1]
    R = _identity(size, t.inputs.shape[0], t.inputs.device)  # per image (or text), then per pair
    for A in t.probs:
        A = 0.5 * torch.eye(size, device=A.device)[: A.shape[2]] + 0.5 * A.detach().float().mean(dim=1)
        A = A / A.sum(dim=-1, keepdim=True)  # (B, Q, T)
        R = A @ R
    return R[t.of_pair]


def gradcam(image: Tower, text: Tower, signed: bool) -> Maps:
    """Grad-CAM over the tokens entering the start blocks, each tower's map over its own tokens: the
    patches; the prompt's tokens, strictly between start and end-of-text."""
    P, T = len(image.of_pair), image.inputs.shape[1]
    patches = torch.arange(T, device=image.read.device).expand(P, T) > 0
    pos = torch.arange(text.inputs.shape[1], device=text.read.device)
    prompt = (pos > 0) & (pos < text.read[:, None])  # (P, L)
    return Maps(_gradcam(image, patches)[:, 1:], _gradcam(text, prompt), None, None)


def _gradcam(t: Tower, mask: torch.Tensor) -> torch.Tensor:
    """relu(sum_c w_c x_tc), w_c the mean gradient over the tokens `mask` (P, T) marks: (P, T)."""
    x, grad = t.inputs.detach()[t.of_pair], t.grads[0]  # (P, T, C) each
    mask = mask.to(x.dtype).unsqueeze(-1)  # (P, T, 1)
    weights = (grad * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True)  # (P, 1, C)
    return ((weights * x).sum(dim=-1) * mask.squeeze(-1)).clamp(min=0)  # (P, T)


def split_pairs(B: int, N: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(P,) the image and (P,) the text of each pair p = i * N + j."""
    return (torch.arange(B, device=device).repeat_interleave(N), torch.arange(N, device=device).repeat(B))


def grads_per_pair(score: torch.Tensor, image_inputs: list[torch.Tensor],
                   text_inputs: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """For each pair, the gradient of its own score[i, j] (score: (B, N)) with respect to inputs of its
    image (B, ...) and of its text (N, ...): one backward per pair, batched (vmap) in ONE call, pair p's
    grad_output one-hot at score[i, j]. Returns ([(P, ...) per image input], [(P, ...) per text input])."""
    B, N = score.shape
    one_hot = torch.eye(B * N, device=score.device, dtype=score.dtype).view(B * N, B, N)
    grads = torch.autograd.grad(score, [*image_inputs, *text_inputs], one_hot, is_grads_batched=True)
    pairs = torch.arange(B * N, device=score.device)
    of_image, of_text = split_pairs(B, N, score.device)
    n = len(image_inputs)
    return [G[pairs, of_image] for G in grads[:n]], [G[pairs, of_text] for G in grads[n:]]


def legrad(image: Tower, text: None, signed: bool) -> Maps:
    """LeGrad: the sum over blocks of the mean over heads and query rows of clamp(ds_l/dA_l, min=0)."""
    maps = sum(G.float().clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:] for G in image.grads)
    return Maps(maps, None, None, None)


def legrad_forward(model: CLIP, x: torch.Tensor, features: torch.Tensor, start: int) -> Recorded:
    """LeGrad's own forward from block `start` on. x: the tokens entering it (B, T, C); features: the
    texts' (N, D), a constant as in the authors' code. The record's grads are ds_l/dA_l for every pair."""
    visual, blocks = model.visual, model.visual.transformer.resblocks[start:]
    unit = features / features.norm(dim=-1, keepdim=True)
    x_in = x
    with torch.enable_grad(), recording(blocks):
        score = 0
        for block in blocks:
            x = block(x.detach().requires_grad_())  # detached: s_l reaches A_l through this block only
            f = visual.ln_post(x.mean(dim=1)) @ visual.proj  # (B, D): every token pooled, class token too
            score = score + (f / f.norm(dim=-1, keepdim=True)) @ unit.t()  # (B, N): s_l summed over l
        grads, _ = grads_per_pair(score, [b.attn_probs for b in blocks], [])
    of_image, _ = split_pairs(*score.shape, x.device)
    image = Tower(x_in, [], grads, of_image, torch.zeros_like(of_image))  # its probabilities are not read
    return model.logits(visual.pool(x.detach()), features), image, None


class Method(NamedTuple):
    """A row of METHODS: the function that turns a record into maps, and what it needs."""
    explain: Callable[[Tower, Optional[Tower], bool], Maps]
    start: int  # the start layer when the caller gives none (-1: the last block only)
    gradients: Optional[str] = None  # differentiated for each pair: "probs", every recorded block's attention
    #                                  probabilities, or "inputs", the tokens entering the start blocks
    forward: Optional[Callable[..., Recorded]] = None  # its own forward in place of the shared one, given the
    #                                                  texts' features: it explains the image only
    signed: bool = False  # whether it has a signed variant (signed=True: negative evidence kept)


# The start layers: the original's default for Chefer's method (last block only); all blocks for rollout,
# whose point is to multiply through them; the last two for LeGrad (its authors' layer_index=-2); the last
# block for the others.
METHODS = {
    "chefer": Method(chefer, start=-1, gradients="probs", signed=True),
    "attention": Method(attention, start=-1),
    "rollout": Method(rollout, start=0),
    "gradcam": Method(gradcam, start=-1, gradients="inputs"),
    "legrad": Method(legrad, start=-2, gradients="probs", forward=legrad_forward),
}
DEFAULT_START = {name: method.start for name, method in METHODS.items()}
