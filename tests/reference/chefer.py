"""Chefer et al.'s method as the authors' CLIP notebook (`interpret`) computes it, on two models, and rollout.

The straightforward algorithm that mini_clip's cheaper one must reproduce number for number: the image is
repeated once per text, the diagonal logits are summed into one score, and `torch.autograd.grad` is called
once per block. It runs on transformers' `CLIPModel` (eager attention, `output_attentions=True`; see
`reference.hf`) and on OpenAI's own `clip/model.py` with its attention written out so that each block keeps
`attn_probs`, as the authors' notebook modified OpenAI's code.
"""
from __future__ import annotations

import copy
import types

import torch
import torch.nn.functional as F


def chefer_literal(score: torch.Tensor, attentions, start_layer: int, signed: bool = False,
                   absolute: bool = False) -> torch.Tensor:
    """The authors' notebook, one tower: R = I; for each block i >= start (-1: the last block only),
    grad = d score / d A_i; cam = mean over heads of clamp(grad * A_i, min=0); R = R + cam @ R.
    signed=True drops the clamp (the variant mini_clip offers beyond the original). absolute=True takes
    |grad * A_i| instead: the same sums without cancellation, the scale of signed R's rounding errors."""
    if start_layer == -1:
        start_layer = len(attentions) - 1
    batch, _, tokens, _ = attentions[0].shape
    R = torch.eye(tokens, dtype=attentions[0].dtype).unsqueeze(0).expand(batch, tokens, tokens)
    for i, A in enumerate(attentions):
        if i < start_layer:
            continue
        grad = torch.autograd.grad(score, [A], retain_graph=True)[0]
        cam = grad * A.detach()
        cam = (cam.abs() if absolute else cam if signed else cam.clamp(min=0)).mean(dim=1)  # (batch, T, T)
        R = R + torch.bmm(cam, R)
    return R.detach()


def hf_interpret(hf, image, tokens, start_layer=-1, start_layer_text=-1, signed=False, absolute=False):
    """One image (3, R, R) and N texts: (logits (N,), R_image (N, T, T), R_text (N, ctx, ctx))."""
    n = tokens.shape[0]
    with torch.enable_grad():
        out = hf(input_ids=tokens, pixel_values=image.unsqueeze(0).repeat(n, 1, 1, 1), output_attentions=True)
        score = out.logits_per_image.diagonal().sum()  # copy j of the image is paired with text j only
        R_image = chefer_literal(score, out.vision_model_output.attentions, start_layer, signed, absolute)
        R_text = chefer_literal(score, out.text_model_output.attentions, start_layer_text, signed, absolute)
    return out.logits_per_image[0].detach(), R_image, R_text


def attention_keeping_probs(self, x: torch.Tensor) -> torch.Tensor:
    """OpenAI's ResidualAttentionBlock.attention, multi-head attention written out; x is (T, B, C)."""
    T, B, C = x.shape
    heads = self.attn.num_heads
    hs = C // heads
    q, k, v = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)  # (T, B, C) each
    q, k, v = (t.reshape(T, B * heads, hs).transpose(0, 1) for t in (q, k, v))  # (B*nh, T, hs): MHA's order
    scores = (q * hs ** -0.5) @ k.transpose(1, 2)  # (B*nh, T, T)
    if self.attn_mask is not None:  # OpenAI's text mask: 0 on and below the diagonal, -inf above
        scores = scores + self.attn_mask.to(scores.dtype)
    self.attn_probs = scores.softmax(dim=-1).view(B, heads, T, T)  # the tensor used below, so in the graph
    y = (self.attn_probs.view(B * heads, T, T) @ v).transpose(0, 1).reshape(T, B, C)
    return self.attn.out_proj(y)


def openai_keeping_probs(openai_clip_model: torch.nn.Module) -> torch.nn.Module:
    """A copy of OpenAI's CLIP whose blocks keep their attention probabilities (`attn_probs`)."""
    patched = copy.deepcopy(openai_clip_model)
    for block in [*patched.visual.transformer.resblocks, *patched.transformer.resblocks]:
        block.attention = types.MethodType(attention_keeping_probs, block)
    return patched


def openai_interpret(patched, image, tokens, start_layer=-1, start_layer_text=-1):
    """As `hf_interpret`, on `openai_keeping_probs`'s model."""
    n = tokens.shape[0]
    with torch.enable_grad():
        logits_per_image, _ = patched(image.unsqueeze(0).repeat(n, 1, 1, 1), tokens)
        score = logits_per_image.diagonal().sum()
        image_probs = [b.attn_probs for b in patched.visual.transformer.resblocks]
        text_probs = [b.attn_probs for b in patched.transformer.resblocks]
        R_image = chefer_literal(score, image_probs, start_layer)
        R_text = chefer_literal(score, text_probs, start_layer_text)
    return logits_per_image[0].detach(), R_image, R_text


def rollout(attentions, start: int = 0) -> torch.Tensor:
    """Abnar & Zuidema 2020: A' = 0.5 I + 0.5 mean_h A per block, rows renormalised to sum to 1,
    R = A'_last @ ... @ A'_start (as `compute_rollout_attention` in Chefer et al.'s code)."""
    hats = []
    for A in attentions[start:]:
        A = A.mean(dim=1)
        A = 0.5 * torch.eye(A.shape[-1]) + 0.5 * A
        hats.append(A / A.sum(dim=-1, keepdim=True))
    joint = hats[0]
    for A in hats[1:]:
        joint = torch.bmm(A, joint)
    return joint
