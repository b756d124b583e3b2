"""transformers' `CLIPModel` holding an OpenAI-named state dict's tensors, mapped by this module's own table.

The table is written here from the two codebases (OpenAI's clip/model.py, transformers' modeling_clip.py),
never from mini_clip's: a wrong entry in one would not hide a wrong entry in the other.
"""
from __future__ import annotations

import torch
import transformers

from . import EOT, SOT

try:
    from transformers.initialization import no_init_weights  # transformers 5
except ImportError:
    from transformers.modeling_utils import no_init_weights  # transformers 4

HF_TOP = {  # OpenAI key -> transformers key, outside the blocks
    "logit_scale": "logit_scale",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
HF_PROJECTIONS = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
HF_BLOCK = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
            "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
HF_TOWERS = {"visual.transformer.resblocks": "vision_model.encoder.layers",
             "transformer.resblocks": "text_model.encoder.layers"}


def hf_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's state dict in transformers' names; every OpenAI key must be used exactly once."""
    out = {}
    used = set()
    for ours, theirs in HF_TOP.items():
        out[theirs] = sd[ours]
        used.add(ours)
    # x @ W with W (in, out) in OpenAI; nn.Linear's weight is (out, in) in transformers
    for ours, theirs in HF_PROJECTIONS.items():
        out[theirs] = sd[ours].t().contiguous()
        used.add(ours)
    for ours, theirs in HF_TOWERS.items():
        layers = len({k[len(ours) + 1:].split(".")[0] for k in sd if k.startswith(ours + ".")})
        for i in range(layers):
            o, h = f"{ours}.{i}.", f"{theirs}.{i}."
            for p in ("weight", "bias"):
                q, k, v = sd[o + f"attn.in_proj_{p}"].chunk(3)  # fused rows: q, k, v
                out[h + f"self_attn.q_proj.{p}"] = q
                out[h + f"self_attn.k_proj.{p}"] = k
                out[h + f"self_attn.v_proj.{p}"] = v
                used.add(o + f"attn.in_proj_{p}")
                for a, b in HF_BLOCK.items():
                    out[h + f"{b}.{p}"] = sd[o + f"{a}.{p}"]
                    used.add(o + f"{a}.{p}")
    assert used == set(sd), f"OpenAI keys not mapped: {sorted(set(sd) - used)}"
    return out


def hf_clip(sd: dict[str, torch.Tensor], shape, attn: str = "eager") -> transformers.CLIPModel:
    """transformers' CLIPModel holding the tensors of `sd` (shared, not copied), in eval mode.

    Args:
        sd: a state dict in OpenAI's names.
        shape: OpenAI's `CLIP` arguments (embed_dim, image_resolution, vision_layers, vision_width, patch,
            context, vocab, text_width, text_heads, text_layers); vision heads are width // 64, OpenAI's rule.
        attn: transformers' attention implementation: "eager" (whose attention probabilities are the tensors
            of the forward, as the notebook's algorithm needs) or "sdpa".
    """
    (embed, resolution, vlayers, vwidth, patch, context, vocab, twidth, theads, tlayers) = shape
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=twidth, intermediate_size=4 * twidth,
                         num_hidden_layers=tlayers, num_attention_heads=theads,
                         max_position_embeddings=context, hidden_act="quick_gelu",
                         bos_token_id=SOT, eos_token_id=EOT, pad_token_id=0),
        vision_config=dict(hidden_size=vwidth, intermediate_size=4 * vwidth, num_hidden_layers=vlayers,
                           num_attention_heads=vwidth // 64, image_size=resolution, patch_size=patch,
                           hidden_act="quick_gelu"),
        projection_dim=embed)
    with no_init_weights():  # every parameter is replaced below
        model = transformers.CLIPModel._from_config(config, attn_implementation=attn)
    towers = (model.vision_model, model.text_model)
    assert all(tower.config._attn_implementation == attn for tower in towers)
    # strict: the only transformers tensors not in the state dict are the position_ids buffers, which are
    # not persistent in transformers 5 and so are not expected either
    model.load_state_dict(hf_state_dict(sd), strict=True, assign=True)
    for name, buffer in model.named_buffers():  # position_ids: not weights, must be 0, 1, 2, ...
        assert torch.equal(buffer, torch.arange(buffer.shape[-1]).expand_as(buffer)), name
    return model.eval()
