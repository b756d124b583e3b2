"""OpenCLIP's ViT CLIPs: their configs read into CLIPConfig, or refused naming what mini_clip does not
implement.

OpenCLIP describes a model by a JSON config (`open_clip/model_configs/<name>.json`; in a Hugging Face hub
folder, `open_clip_config.json` holds it as `model_cfg`, beside `preprocess_cfg`). Its ViT CLIPs are OpenAI's
architecture with what the tensors cannot tell changed: exact GELU instead of QuickGELU (every model not
named `-quickgelu`), a head width of 80/88/104 instead of 64 (ViT-H, g, bigG) and an MLP that is not 4x
(g, bigG). Everything else OpenCLIP builds (timm towers, attentional pooling, layer scale, other text
towers and tokenizers) is refused with its name, never approximated.

The table ARCHS is OpenCLIP 3.3's configs of those ViTs, copied as data (open_clip is never imported here).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .config import CLIPConfig, summary
from .image import Preprocessing
from .tokenizer import VOCAB_SIZE

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # as OpenCLIP's hub loader
MAX_CONFIG_BYTES = 1 << 20  # an open_clip_config.json is a few kB


def _vit(embed_dim: int, image_size: int, layers: int, width: int, patch_size: int, text_width: int,
         text_heads: int, text_layers: int, head_width: int = 64, mlp_ratio: float = 4.0,
         quick_gelu: bool = False) -> dict:
    """One OpenCLIP model config (its JSON's fields), for a ViT with OpenAI's text tower."""
    vision = dict(image_size=image_size, layers=layers, width=width, patch_size=patch_size,
                  head_width=head_width, mlp_ratio=mlp_ratio)
    text = dict(context_length=77, vocab_size=VOCAB_SIZE, width=text_width, heads=text_heads,
                layers=text_layers)
    return dict(embed_dim=embed_dim, quick_gelu=quick_gelu, vision_cfg=vision, text_cfg=text)


# OpenCLIP name -> its config; every ViT config of open_clip 3.3 with OpenAI's text tower and tokenizer.
ARCHS = {
    "ViT-S-32-alt": _vit(256, 224, 12, 384, 32, 256, 4, 10),
    "ViT-S-32": _vit(384, 224, 12, 384, 32, 384, 6, 12),
    "ViT-S-16-alt": _vit(256, 224, 12, 384, 16, 256, 4, 10),
    "ViT-S-16": _vit(384, 224, 12, 384, 16, 384, 6, 12),
    "ViT-M-32-alt": _vit(384, 224, 12, 512, 32, 384, 6, 12),
    "ViT-M-32": _vit(512, 224, 12, 512, 32, 512, 8, 12),
    "ViT-M-16": _vit(512, 224, 12, 512, 16, 512, 8, 12),
    "ViT-B-32": _vit(512, 224, 12, 768, 32, 512, 8, 12),
    "ViT-B-32-quickgelu": _vit(512, 224, 12, 768, 32, 512, 8, 12, quick_gelu=True),
    "ViT-B-32-256": _vit(512, 256, 12, 768, 32, 512, 8, 12),
    "ViT-B-32-plus-256": _vit(640, 256, 12, 896, 32, 640, 10, 12),
    "ViT-B-16": _vit(512, 224, 12, 768, 16, 512, 8, 12),
    "ViT-B-16-quickgelu": _vit(512, 224, 12, 768, 16, 512, 8, 12, quick_gelu=True),
    "ViT-B-16-plus": _vit(640, 224, 12, 896, 16, 640, 10, 12),
    "ViT-B-16-plus-240": _vit(640, 240, 12, 896, 16, 640, 10, 12),
    "ViT-L-14": _vit(768, 224, 24, 1024, 14, 768, 12, 12),
    "ViT-L-14-quickgelu": _vit(768, 224, 24, 1024, 14, 768, 12, 12, quick_gelu=True),
    "ViT-L-14-280": _vit(768, 280, 24, 1024, 14, 768, 12, 12),
    "ViT-L-14-336": _vit(768, 336, 24, 1024, 14, 768, 12, 12),
    "ViT-L-14-336-quickgelu": _vit(768, 336, 24, 1024, 14, 768, 12, 12, quick_gelu=True),
    "ViT-L-16": _vit(768, 224, 24, 1024, 16, 768, 12, 12),
    "ViT-L-16-320": _vit(768, 320, 24, 1024, 16, 768, 12, 12),
    "ViT-H-14": _vit(1024, 224, 32, 1280, 14, 1024, 16, 24, head_width=80),
    "ViT-H-14-quickgelu": _vit(1024, 224, 32, 1280, 14, 1024, 16, 24, head_width=80, quick_gelu=True),
    "ViT-H-14-378": _vit(1024, 378, 32, 1280, 14, 1024, 16, 24, head_width=80),
    "ViT-H-14-378-quickgelu": _vit(1024, 378, 32, 1280, 14, 1024, 16, 24, head_width=80, quick_gelu=True),
    "ViT-H-16": _vit(1024, 224, 32, 1280, 16, 1024, 16, 24, head_width=80),
    "ViT-g-14": _vit(1024, 224, 40, 1408, 14, 1024, 16, 24, head_width=88, mlp_ratio=4.3637),
    "ViT-bigG-14": _vit(1280, 224, 48, 1664, 14, 1280, 20, 32, head_width=104, mlp_ratio=4.9231),
    "ViT-bigG-14-quickgelu": _vit(1280, 224, 48, 1664, 14, 1280, 20, 32, head_width=104, mlp_ratio=4.9231,
                                  quick_gelu=True),
    "ViT-e-14": _vit(1280, 224, 56, 1792, 14, 1280, 20, 36, head_width=112, mlp_ratio=8.5715),
}

# Config fields that switch on what mini_clip does not implement -> its name in the refusal (a value that
# is false, None or empty leaves it off).
FEATURES = {
    "vision_cfg": {"timm_model_name": "a timm image tower", "ls_init_value": "layer scale",
                   "attentional_pool": "attentional pooling", "no_ln_pre": "no ln_pre",
                   "final_ln_after_pool": "ln_post after pooling", "act_kwargs": "activation arguments",
                   "norm_kwargs": "LayerNorm arguments", "proj_bias": "a projection bias"},
    "text_cfg": {"hf_model_name": "a Hugging Face text tower", "hf_tokenizer_name": "another tokenizer",
                 "ls_init_value": "layer scale", "no_causal_mask": "no causal mask",
                 "embed_cls": "a class token", "proj_bias": "a projection bias",
                 "act_kwargs": "activation arguments", "norm_kwargs": "LayerNorm arguments",
                 "eos_id": "pooling at an end-of-text id", "tokenizer_kwargs": "tokenizer arguments"},
    None: {"multimodal_cfg": "CoCa's text decoder", "custom_text": "a separate text module (text.*)",
           "init_logit_bias": "a logit bias (SigLIP)"},
}
# Config fields whose OpenAI value is the only one implemented -> that value.
SETTINGS = {
    "vision_cfg": {"pool_type": "tok", "proj_type": "linear", "pos_embed_type": "learnable"},
    "text_cfg": {"pool_type": "argmax", "proj_type": "linear", "pad_id": 0},
    None: {},
}


def _foreign(part: Optional[str], cfg: dict) -> list[str]:
    """What in one part of an OpenCLIP config mini_clip does not implement, in words."""
    found = [f"{words} ({key} {cfg[key]!r:.40})" for key, words in FEATURES[part].items()
             if cfg.get(key) not in (None, False, 0, "", {}, [])]
    return found + [f"{key} {cfg[key]!r:.40} (OpenAI's: {value!r})" for key, value in SETTINGS[part].items()
                    if key in cfg and cfg[key] != value]


def config_from_open_clip(cfg: object) -> CLIPConfig:
    """CLIPConfig from an OpenCLIP model config (a `model_configs/*.json`, or `model_cfg` of a hub folder).

    Raises:
        ValueError: not an object, a ResNet or any structure mini_clip does not implement (named), a
            vocabulary or tokenizer other than OpenAI's, or sizes that CLIPConfig refuses.
    """
    towers = ("vision_cfg", "text_cfg")
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k, {}), dict) for k in towers):
        raise ValueError("an OpenCLIP model config is a JSON object with vision_cfg and text_cfg objects")
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    found = _foreign(None, cfg) + _foreign("vision_cfg", vision) + _foreign("text_cfg", text)
    if isinstance(vision.get("layers"), (list, tuple)):
        found.insert(0, "a ResNet image tower (vision_cfg.layers is a list)")
    vocab = text.get("vocab_size", VOCAB_SIZE)
    if vocab != VOCAB_SIZE:
        found.append(f"a vocabulary of {vocab!r:.20} tokens (OpenAI's tokenizer has {VOCAB_SIZE})")
    if found:
        raise ValueError(f"an OpenCLIP model with {summary(found, 4)}: mini_clip implements OpenAI's ViT "
                         "CLIP only (see the README's table of what loads)")
    size = vision.get("image_size", 224)
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]  # OpenCLIP allows (H, W); mini_clip's inputs are square
    width = vision.get("width", 768)
    text_width = text.get("width", 512)
    head_width = vision.get("head_width", 64)
    for name, value in (("vision_cfg.width", width), ("vision_cfg.head_width", head_width),
                        ("text_cfg.width", text_width)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} is {value!r:.40}; expected a positive whole number")
    if width % head_width:
        raise ValueError(f"vision_cfg.width {width} is not a multiple of vision_cfg.head_width {head_width}")
    return CLIPConfig(
        embed_dim=cfg.get("embed_dim"), image_resolution=size, vision_layers=vision.get("layers", 12),
        vision_width=width, vision_patch_size=vision.get("patch_size", 16),
        context_length=text.get("context_length", 77), vocab_size=vocab, transformer_width=text_width,
        transformer_heads=text.get("heads", 8), transformer_layers=text.get("layers", 12),
        vision_heads=width // head_width,
        vision_mlp_width=_mlp_width("vision_cfg", width, vision.get("mlp_ratio", 4.0)),
        transformer_mlp_width=_mlp_width("text_cfg", text_width, text.get("mlp_ratio", 4.0)),
        # OpenCLIP's default is GELU
        activation="quick_gelu" if cfg.get("quick_gelu", False) is True else "gelu",
    )


def _mlp_width(part: str, width: int, ratio: object) -> int:
    """OpenCLIP's `int(width * mlp_ratio)`."""
    if type(ratio) not in (int, float) or not 0 < ratio < 64:
        raise ValueError(f"{part}.mlp_ratio is {ratio!r:.40}; expected a number such as 4.0")
    return int(width * ratio)


def preprocessing_from_open_clip(cfg: object) -> Preprocessing:
    """Preprocessing from OpenCLIP's `preprocess_cfg` (mean, std, interpolation, resize_mode); what it
    leaves out is OpenCLIP's default, which is OpenAI's."""
    if not isinstance(cfg, dict):
        raise ValueError("preprocess_cfg is not a JSON object")
    default = Preprocessing()
    resize = cfg.get("resize_mode", "shortest")
    if resize not in ("shortest", "squash"):
        raise ValueError(f"preprocess_cfg.resize_mode is {resize!r:.40}; mini_clip implements shortest "
                         "(short side + centre crop) and squash")
    return Preprocessing(mean=cfg.get("mean", default.mean), std=cfg.get("std", default.std), resize=resize,
                         interpolation=cfg.get("interpolation", default.interpolation))


def arch_config(name: str) -> CLIPConfig:
    """The CLIPConfig of an OpenCLIP architecture by name (ARCHS); ValueError naming the valid ones."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r:.60}; valid: {', '.join(ARCHS)}")
    return config_from_open_clip(ARCHS[name])


def find_hub_folder(path: Path) -> Optional[tuple[Path, Path]]:
    """(config file, weights file) where `path` is an OpenCLIP hub folder or a weights file inside one
    (beside an open_clip_config.json); None otherwise."""
    folder = path if path.is_dir() else path.parent
    config = folder / CONFIG_NAME
    if not config.is_file():
        return None
    if path.is_dir():
        weights = [folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()]
        return config, (weights[0] if weights else folder / WEIGHTS_NAMES[0])
    return config, path


def read_hub_config(path: Path) -> tuple[CLIPConfig, Preprocessing]:
    """An `open_clip_config.json`: its model_cfg and preprocess_cfg. ValueError says what is wrong."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{path.stat().st_size} bytes, too large for an {CONFIG_NAME}")
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or "model_cfg" not in document:
        raise ValueError("not an OpenCLIP hub config: expected a JSON object with model_cfg")
    return (config_from_open_clip(document["model_cfg"]),
            preprocessing_from_open_clip(document.get("preprocess_cfg", {})))
