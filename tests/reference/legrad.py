"""LeGrad (Bousselham et al. 2024) as its authors compute it, on transformers' `CLIPModel` (reference.hf).

legrad-torch's `LeWrapper.compute_legrad_clip`: the image repeated once per text, each layer's tokens
mean-pooled through the post-LayerNorm and the projection, and one `torch.autograd.grad` call per layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def original_legrad(model, image: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """LeGrad's image maps from layer `start` (negative: from the end) to the last, on a CLIPModel with eager
    attention; `image` is (1, 3, R, R). Returns (N, grid*grid), before the authors' upsampling."""
    n = tokens.shape[0]
    with torch.no_grad():
        text = model.text_projection(model.text_model(input_ids=tokens).pooler_output)
        text = F.normalize(text, dim=-1)
    out = model.vision_model(pixel_values=image.repeat(n, 1, 1, 1), output_attentions=True,
                             output_hidden_states=True)
    layers = len(out.attentions)
    first = layers + start if start < 0 else start
    total = 0
    for layer in range(first, layers):
        pooled = model.vision_model.post_layernorm(out.hidden_states[layer + 1].mean(dim=1))
        feature = model.visual_projection(pooled)
        score = (F.normalize(feature, dim=-1) * text).sum()  # the diagonal: copy j, text j
        grad = torch.autograd.grad(score, [out.attentions[layer]], retain_graph=True)[0]
        total = total + grad.clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:]
    return total
