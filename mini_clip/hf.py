"""Hugging Face `CLIPModel` checkpoints: their key names and config, mapped onto OpenAI's by tables.

Hugging Face splits the fused attention in-projection into q/k/v, stores the two projections transposed
(as `nn.Linear` weights), keeps a misspelled `pre_layrnorm`, and puts the architecture in `config.json`
instead of tensor shapes. Everything below is data except the small function that applies it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch

from .model import CLIPConfig

# OpenAI key -> Hugging Face key, outside the blocks. {p} is "weight" or "bias".
TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.{p}": "text_model.final_layer_norm.{p}",
    "text_projection": "text_projection.weight",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.{p}": "vision_model.pre_layrnorm.{p}",
    "visual.ln_post.{p}": "vision_model.post_layernorm.{p}",
    "visual.proj": "visual_projection.weight",
}
# Stored as nn.Linear weights (out, in) by Hugging Face, used as x @ W (in, out) by OpenAI.
TRANSPOSED = {"text_projection", "visual.proj"}

# Inside block {i} of each tower: OpenAI suffix -> Hugging Face suffix(es); three are concatenated (q, k, v).
TOWERS = {"transformer.resblocks.": "text_model.encoder.layers.",
          "visual.transformer.resblocks.": "vision_model.encoder.layers."}
BLOCK = {
    "attn.in_proj_{p}": ("self_attn.q_proj.{p}", "self_attn.k_proj.{p}", "self_attn.v_proj.{p}"),
    "attn.out_proj.{p}": ("self_attn.out_proj.{p}",),
    "ln_1.{p}": ("layer_norm1.{p}",),
    "ln_2.{p}": ("layer_norm2.{p}",),
    "mlp.c_fc.{p}": ("mlp.fc1.{p}",),
    "mlp.c_proj.{p}": ("mlp.fc2.{p}",),
}
# Buffers Hugging Face saves that carry no weights (older checkpoints have them).
IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


def _expand(table: Mapping[str, object]) -> dict[str, object]:
    return {k.format(p=p): (v.format(p=p) if isinstance(v, str) else tuple(s.format(p=p) for s in v))
            for k, v in table.items() for p in ("weight", "bias") if "{p}" in k or p == "weight"}


TOP_LEVEL_KEYS, BLOCK_KEYS = _expand(TOP_LEVEL), _expand(BLOCK)


def is_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("vision_model.", "text_model.")) for k in sd)


def hf_sources(key: str) -> tuple[str, ...]:
    """The Hugging Face key(s) that make up one OpenAI key."""
    for ours, theirs in TOWERS.items():
        if key.startswith(ours):
            index, suffix = key[len(ours):].split(".", 1)
            return tuple(f"{theirs}{index}.{s}" for s in BLOCK_KEYS[suffix])
    return (TOP_LEVEL_KEYS[key],)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor], expected_keys) -> tuple[dict, list[str]]:
    """Map a Hugging Face state dict onto OpenAI's names for the keys the model expects.

    Returns (state dict in OpenAI names, Hugging Face keys that no expected key used); a key whose
    sources are missing is left out, so strict loading reports it by its OpenAI name.
    """
    out, used = {}, set(IGNORED)
    for key in expected_keys:
        sources = hf_sources(key)
        if all(s in hf for s in sources):
            used.update(sources)
            tensor = torch.cat([hf[s] for s in sources]) if len(sources) > 1 else hf[sources[0]]
            out[key] = tensor.t() if key in TRANSPOSED else tensor
    return out, sorted(set(hf) - used)


def config_from_hf(path: Path) -> CLIPConfig:
    """CLIPConfig from a Hugging Face `config.json` (a CLIPModel config with text and vision parts)."""
    c = json.loads(Path(path).read_text())
    text, vision = c.get("text_config") or {}, c.get("vision_config") or {}
    for name, part in (("text_config", text), ("vision_config", vision)):
        act = part.get("hidden_act", "quick_gelu")
        if act != "quick_gelu":
            raise ValueError(f"{path}: {name}.hidden_act is {act!r}; mini_clip implements OpenAI's 'quick_gelu' only")
        width = part.get("hidden_size", 512 if part is text else 768)
        inner = part.get("intermediate_size", 2048 if part is text else 3072)
        if inner != 4 * width:
            raise ValueError(f"{path}: {name}.intermediate_size is {inner}; OpenAI's CLIP uses 4 x hidden_size "
                             f"= {4 * width}")
    # Defaults below are transformers' CLIPTextConfig / CLIPVisionConfig defaults (ViT-B/32).
    return CLIPConfig(
        embed_dim=c.get("projection_dim", 512),
        image_resolution=vision.get("image_size", 224),
        vision_layers=vision.get("num_hidden_layers", 12),
        vision_width=vision.get("hidden_size", 768),
        vision_patch_size=vision.get("patch_size", 32),
        context_length=text.get("max_position_embeddings", 77),
        vocab_size=text.get("vocab_size", 49408),
        transformer_width=text.get("hidden_size", 512),
        transformer_heads=text.get("num_attention_heads", 8),
        transformer_layers=text.get("num_hidden_layers", 12),
        vision_heads=vision.get("num_attention_heads", 12),
    )
