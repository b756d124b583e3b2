"""Hugging Face `CLIPModel` checkpoints: their key names and config, mapped onto OpenAI's by tables.

Hugging Face splits the fused attention in-projection into q/k/v, stores the two projections transposed
(as `nn.Linear` weights), keeps a misspelled `pre_layrnorm`, and puts the architecture in `config.json`
instead of tensor shapes. Everything below is data except the small function that applies it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import torch

from .config import ACTIVATIONS, CLIPConfig, check_size
from .image import Preprocessing
from .tokenizer import EOT

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


TOP_LEVEL_KEYS = _expand(TOP_LEVEL)
BLOCK_KEYS = _expand(BLOCK)


# Block suffix and top-level key, Hugging Face -> OpenAI: the tables above read the other way.
OPENAI_SUFFIX = {theirs: ours for ours, sources in BLOCK_KEYS.items() for theirs in sources}
OPENAI_TOP_LEVEL = {theirs: ours for ours, theirs in TOP_LEVEL_KEYS.items()}

# CLIPConfig field -> (part of config.json or None for the top level, Hugging Face key, transformers'
# default).
# The defaults are transformers' CLIPTextConfig / CLIPVisionConfig defaults (ViT-B/32).
CONFIG_FIELDS = {
    "embed_dim": (None, "projection_dim", 512),
    "image_resolution": ("vision_config", "image_size", 224),
    "vision_layers": ("vision_config", "num_hidden_layers", 12),
    "vision_width": ("vision_config", "hidden_size", 768),
    "vision_patch_size": ("vision_config", "patch_size", 32),
    "context_length": ("text_config", "max_position_embeddings", 77),
    "vocab_size": ("text_config", "vocab_size", 49408),
    "transformer_width": ("text_config", "hidden_size", 512),
    "transformer_heads": ("text_config", "num_attention_heads", 8),
    "transformer_layers": ("text_config", "num_hidden_layers", 12),
    "vision_heads": ("vision_config", "num_attention_heads", 12),
}
# Where the text feature is read: transformers pools at the first `eos_token_id`, except for the legacy
# value 2, which means the largest id (argmax). With OpenAI's ids both are OpenAI's end-of-text.
OPENAI_POOLING = (2, EOT)
# preprocessor_config.json's `resample` (PIL's filter numbers) -> Preprocessing.interpolation
RESAMPLE = {2: "bilinear", 3: "bicubic"}
MAX_CONFIG_BYTES = 1 << 20  # a CLIPModel config.json is a few kB; anything this large is not one


def is_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("vision_model.", "text_model.")) for k in sd)


def hf_sources(key: str) -> tuple[str, ...]:
    """The Hugging Face key(s) that make up one OpenAI key."""
    for ours, theirs in TOWERS.items():
        if key.startswith(ours):
            index, suffix = key[len(ours):].split(".", 1)
            return tuple(f"{theirs}{index}.{s}" for s in BLOCK_KEYS[suffix])
    return (TOP_LEVEL_KEYS[key],)


def openai_key(key: str) -> Optional[str]:
    """The OpenAI key a Hugging Face key is (part of), or None if the tables do not know it."""
    for ours, theirs in TOWERS.items():
        if key.startswith(theirs) and "." in key[len(theirs):]:
            index, suffix = key[len(theirs):].split(".", 1)
            return f"{ours}{index}.{OPENAI_SUFFIX[suffix]}" if suffix in OPENAI_SUFFIX else None
    return OPENAI_TOP_LEVEL.get(key)


def convert_hf_state_dict(hf: Mapping[str, torch.Tensor]) -> tuple[dict, list[str]]:
    """Map a Hugging Face state dict onto OpenAI's names, driven by the keys the file holds.

    Returns (state dict in OpenAI names, Hugging Face keys that no OpenAI key used); a key whose
    sources are incomplete is left out, so strict loading reports it by its OpenAI name.
    Raises:
        ValueError: q, k and v projections that cannot be joined, or a projection that is not a matrix.
    """
    out = {}
    used = set(IGNORED)
    for key in sorted({openai_key(k) for k in hf} - {None}):
        sources = hf_sources(key)
        if not all(s in hf for s in sources):
            continue
        shapes = [tuple(hf[s].shape) for s in sources]
        if len(sources) > 1 and (len(shapes[0]) == 0 or any(s[1:] != shapes[0][1:] for s in shapes)):
            raise ValueError(f"{', '.join(sources)} have shapes {', '.join(map(str, shapes))}, which do not "
                             f"join into OpenAI's {key}")
        if key in TRANSPOSED and len(shapes[0]) != 2:
            raise ValueError(f"{sources[0]} has shape {shapes[0]}; a projection is a matrix")
        used.update(sources)
        tensor = torch.cat([hf[s] for s in sources]) if len(sources) > 1 else hf[sources[0]]
        out[key] = tensor.t() if key in TRANSPOSED else tensor
    return out, sorted(set(hf) - used)


def config_from_hf(path: Path) -> CLIPConfig:
    """CLIPConfig from a Hugging Face `config.json` (a CLIPModel config with text and vision parts).

    Raises:
        ValueError: not a JSON object, a part that is not an object, a size that is not a whole number
            in bounds (named by its Hugging Face key), or an architecture mini_clip does not implement.
    """
    path = Path(path)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path.stat().st_size} bytes, too large for a config.json")
    c = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(c, dict):
        raise ValueError(f"a JSON {type(c).__name__}, not an object")
    parts = {None: c}
    for name in ("text_config", "vision_config"):
        parts[name] = c.get(name) or {}
        if not isinstance(parts[name], dict):
            raise ValueError(f"{name} is a JSON {type(parts[name]).__name__}, not an object")
    fields = {}
    for field, (part, key, default) in CONFIG_FIELDS.items():
        fields[field] = parts[part].get(key, default)
        check_size(f"{part + '.' if part else ''}{key}", fields[field])
    model_type = c.get("model_type", "clip")
    if model_type != "clip":
        raise ValueError(f"model_type is {model_type!r:.40}, not 'clip': a {model_type:.40} model is not "
                         "OpenAI's CLIP architecture, and mini_clip reads CLIPModel checkpoints only")
    eos = parts["text_config"].get("eos_token_id", EOT)
    if eos not in OPENAI_POOLING:
        raise ValueError(f"text_config.eos_token_id is {eos!r:.40}: the text feature is read at that token, "
                         f"not at OpenAI's end-of-text (the largest id, {EOT}), which mini_clip's text tower "
                         "reads")
    towers = {}
    for name, width, inner_default in (("text_config", fields["transformer_width"], 2048),
                                       ("vision_config", fields["vision_width"], 3072)):
        towers[name] = (parts[name].get("hidden_act", "quick_gelu"), parts[name].get("layer_norm_eps", 1e-5))
        if towers[name][0] not in ACTIVATIONS:
            raise ValueError(f"{name}.hidden_act is {towers[name][0]!r:.40}; mini_clip implements "
                             f"{', '.join(ACTIVATIONS)}")
        inner = parts[name].get("intermediate_size", inner_default)
        check_size(f"{name}.intermediate_size", inner)
        fields["vision_mlp_width" if name == "vision_config" else "transformer_mlp_width"] = inner
    if towers["text_config"] != towers["vision_config"]:
        raise ValueError(f"the towers differ in (hidden_act, layer_norm_eps): text {towers['text_config']}, "
                         f"vision {towers['vision_config']}; mini_clip's config has one of each")
    activation, eps = towers["text_config"]
    return CLIPConfig(**fields, activation=activation, layer_norm_eps=float(eps) if type(eps) is int else eps)


def preprocessing_from_hf(path: Path) -> Preprocessing:
    """Preprocessing from a CLIPImageProcessor's `preprocessor_config.json`: mean, std, resample, and the
    resize: `size: {"shortest_edge": R}` + centre crop is OpenAI's, `size: {"height", "width"}` squashes.

    Raises:
        ValueError: a resize mini_clip does not implement, or values Preprocessing refuses.
    """
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path.stat().st_size} bytes, too large for a preprocessor_config.json")
    c = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(c, dict):
        raise ValueError(f"a JSON {type(c).__name__}, not an object")
    default = Preprocessing()
    size = c.get("size", {"shortest_edge": 224})
    if isinstance(size, dict) and "shortest_edge" in size and c.get("do_center_crop", True):
        resize = "shortest"
    elif isinstance(size, dict) and {"height", "width"} <= set(size) and not c.get("do_center_crop", False):
        resize = "squash"
    else:
        raise ValueError(f"size {size!r:.60} with do_center_crop {c.get('do_center_crop')!r}: mini_clip "
                         "implements short side + centre crop, and squash")
    resample = c.get("resample", 3)
    if resample not in RESAMPLE:
        raise ValueError(f"resample is {resample!r:.20}; mini_clip implements "
                         + ", ".join(f"{k} ({v})" for k, v in RESAMPLE.items()))
    return Preprocessing(mean=c.get("image_mean", default.mean), std=c.get("image_std", default.std),
                         resize=resize, interpolation=RESAMPLE[resample])
