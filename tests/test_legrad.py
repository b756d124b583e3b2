"""method="legrad" against a literal transcription of the authors' `LeWrapper.compute_legrad_clip`.

The reference is the authors' code (`legrad-torch` 1.1 on PyPI, legrad/wrapper.py and legrad/utils.py)
copied step by step onto OpenAI's own `clip/model.py`: its blocks keep `attention_maps` ((B * heads, T, T),
as torch's multi-head attention lays them out) and `feat_post_mlp` ((T, B, C)), as the authors' hooks do.
The package itself cannot be imported here: it needs open-clip-torch <= 2.23, torchvision, timm, opencv and
matplotlib, and torchvision does not load beside the CPU build of torch. Like the authors, the reference
repeats the image once per prompt and calls autograd once per layer; it stops before their bilinear
upsampling and min-max normalisation, both display steps that mini_clip leaves to `heatmap` (the grid is
what is compared).
"""
from __future__ import annotations

import copy
import math
import types

import pytest
import torch
import torch.nn.functional as F

from mini_clip import relevance
from mini_clip.weights import build

from reference import max_rel_diff, openai_clip, random_tokens

# (embed_dim, image_resolution, vision_layers, vision_width, patch, context, vocab, text_width, text_heads,
#  text_layers): 2-3 heads, 4 image blocks so the default (last two), all and one middle start differ.
SHAPES = {"patch16": (64, 64, 4, 128, 16, 77, 49408, 128, 2, 2),
          "patch32": (48, 96, 4, 192, 32, 77, 49408, 128, 2, 1)}
TOL = 1e-4  # fp32, the same sums in another order; a dropped clamp or a CLS-only pooling is off by > 10 %


def attention_keeping_maps(self, x: torch.Tensor) -> torch.Tensor:
    """OpenAI's ResidualAttentionBlock.attention written out; keeps the probabilities as (B * heads, T, T)."""
    T, B, C = x.shape
    heads = self.attn.num_heads
    q, k, v = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(T, B * heads, C // heads).transpose(0, 1) for t in (q, k, v))  # torch MHA's order
    self.attention_maps = ((q * (C // heads) ** -0.5) @ k.transpose(1, 2)).softmax(dim=-1)  # in the graph
    return self.attn.out_proj((self.attention_maps @ v).transpose(0, 1).reshape(T, B, C))


def forward_keeping_features(self, x: torch.Tensor) -> torch.Tensor:
    """The authors' hooked_resblock_forward: the block's output kept as feat_post_mlp."""
    x = x + self.attention(self.ln_1(x))
    self.feat_post_mlp = x = x + self.mlp(self.ln_2(x))
    return x


def hooked(openai_clip_model: torch.nn.Module) -> torch.nn.Module:
    patched = copy.deepcopy(openai_clip_model)
    for block in patched.visual.transformer.resblocks:
        block.attention = types.MethodType(attention_keeping_maps, block)
        block.forward = types.MethodType(forward_keeping_features, block)
    return patched


def compute_legrad_clip(model, text_embedding: torch.Tensor, image: torch.Tensor, starting_depth: int):
    """legrad/wrapper.py, LeWrapper.compute_legrad_clip, step by step (up to the upsampling)."""
    num_prompts = text_embedding.shape[0]
    image = image.repeat(num_prompts, 1, 1, 1)
    with torch.enable_grad():
        _ = model.encode_image(image)
        blocks_list = list(model.visual.transformer.resblocks)
        image_features_list = []
        for layer in range(starting_depth, len(blocks_list)):
            intermediate_feat = blocks_list[layer].feat_post_mlp  # [num_patch, batch, dim]
            intermediate_feat = model.visual.ln_post(intermediate_feat.mean(dim=0)) @ model.visual.proj
            image_features_list.append(F.normalize(intermediate_feat, dim=-1))
        num_tokens = blocks_list[-1].feat_post_mlp.shape[0] - 1
        w = h = int(math.sqrt(num_tokens))
        accum_expl_map = 0
        for layer, img_feat in enumerate(image_features_list):
            sim = text_embedding @ img_feat.transpose(-1, -2)
            one_hot = F.one_hot(torch.arange(0, num_prompts)).float()
            one_hot = torch.sum(one_hot * sim)
            attn_map = blocks_list[starting_depth + layer].attention_maps  # [b * num_heads, N, N]
            grad = torch.autograd.grad(one_hot, [attn_map], retain_graph=True)[0]
            grad = grad.reshape(num_prompts, -1, *grad.shape[1:])  # '(b h) n m -> b h n m'
            grad = torch.clamp(grad, min=0.)
            image_relevance = grad.mean(dim=1).mean(dim=1)[:, 1:]  # heads, then query rows
            accum_expl_map = accum_expl_map + image_relevance.reshape(num_prompts, w, h)  # 'b (w h) -> b w h'
    return accum_expl_map.detach()


@pytest.fixture(scope="module", params=list(SHAPES))
def case(request, openai_model):
    shape = SHAPES[request.param]
    ref = openai_clip(openai_model, shape, seed=3)
    g = torch.Generator().manual_seed(7)
    images = torch.randn(2, 3, shape[1], shape[1], generator=g)
    tokens = random_tokens(3, 77, seed=4, max_len=10)
    return ref, hooked(ref), build(ref.state_dict()), images, tokens


@pytest.mark.parametrize("start", [None, 0, 1, -1])
def test_legrad_equals_the_authors_code(case, start):
    ref, patched, model, images, tokens = case
    rel = relevance(model, images, tokens, start_layer=start, method="legrad")
    blocks = len(model.visual.transformer.resblocks)
    depth = (blocks - 2) if start is None else start % blocks  # the authors' default: layer_index=-2
    assert rel.start_layer == depth and rel.text is None and rel.image_matrix is None
    with torch.no_grad():
        text = F.normalize(ref.encode_text(tokens), dim=-1)
        logits, _ = ref(images, tokens)
    assert max_rel_diff(rel.logits, logits) < TOL
    for i in range(images.shape[0]):
        want = compute_legrad_clip(patched, text, images[i:i + 1], depth)
        assert float(want.min()) >= 0 and float(want.max()) > 0
        assert max_rel_diff(rel.image[i], want) < TOL, (start, i)


def test_legrad_leaves_the_model_untouched_and_works_frozen(case):
    _, _, model, images, tokens = case
    frozen = copy.deepcopy(model).requires_grad_(False)
    a = relevance(model, images, tokens, method="legrad")
    b = relevance(frozen, images, tokens, method="legrad")
    assert torch.equal(a.image, b.image)
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_legrad_default_on_a_one_block_tower(openai_model):
    ref = openai_clip(openai_model, (32, 32, 1, 64, 16, 77, 49408, 64, 1, 1), seed=0)
    rel = relevance(build(ref.state_dict()), torch.randn(1, 3, 32, 32), "a dog", method="legrad")
    assert rel.start_layer == 0 and rel.image.shape == (1, 1, 2, 2)


def test_signed_legrad_is_refused(case):
    _, _, model, images, tokens = case
    with pytest.raises(ValueError, match="signed relevance is defined for method 'chefer' only"):
        relevance(model, images, tokens, method="legrad", signed=True)
