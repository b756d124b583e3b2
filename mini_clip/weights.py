"""Checkpoints in, a CLIP out: the architecture a checkpoint states (or OpenAI's rules), strict loading,
and mini_clip's own safetensors format.

The formats are read by formats.py, which gives every checkpoint as tensors in OpenAI's names with the
config and preprocessing it states; `read_checkpoint` settles the architecture and refuses what mini_clip
does not implement, `build` loads strictly, `save` writes mini_clip's format. `loading.load` puts them
together for a path, a model name or the embedded model.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import warnings
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from safetensors.torch import save as save_bytes
from torch import nn

from . import formats, zoo
from .config import STATE_IT, CLIPConfig, summary
from .files import atomic_write
from .formats import EXPECTED, WeightsError
from .model import CLIP
from .tokenizer import VOCAB_SIZE

PathLike = Union[str, os.PathLike]


# Keys of structures mini_clip does not implement (a key containing the fragment) -> what they are. Checked
# before anything else, so the refusal names the structure instead of listing hundreds of keys.
FOREIGN_KEYS = {
    "visual.trunk.": "a timm image tower (EVA, ConvNeXt, SigLIP, MobileCLIP, ...)",
    "visual.layer1.": "a ResNet image tower",
    "visual.attn_pool": "attentional pooling (CoCa)",
    ".ls_1.": "layer scale",
    "text_decoder.": "CoCa's text decoder",
    "text.transformer.": "a separate text module (OpenCLIP's CustomTextCLIP or a Hugging Face text tower)",
    "logit_bias": "a logit bias (SigLIP's sigmoid loss)",
}

# The embedded default: a tiny CLIP trained on mini_clip.scenes (see scripts/train_scenes.py). Its home is
# the repository's weights/ (a clone, `pip install -e .`); wheels and plain installs carry it in
# mini_clip/embedded/ (setup.cfg maps the package mini_clip.embedded to weights/), which is looked at first.
_PACKAGE = Path(__file__).resolve().parent
EMBEDDED = [folder / "scenes-vit-t8.safetensors"
            for folder in (_PACKAGE / "embedded", _PACKAGE.parent / "weights")]
DEFAULT_WEIGHTS = next((path for path in EMBEDDED if path.exists()), EMBEDDED[0])


def _warn_openai_rules(path: Path, config: CLIPConfig) -> None:
    warnings.warn(f"{path} states no architecture, so it is read by OpenAI's rules (heads = width // 64: "
                  f"{config.vision_heads} image and {config.transformer_heads} text heads; QuickGELU; "
                  f"LayerNorm eps 1e-5); if it was trained otherwise (OpenCLIP's LAION/DataComp models use "
                  f"GELU, ViT-H head width 80) its outputs are wrong: {STATE_IT}", UserWarning, stacklevel=3)


def _warn_preprocessing_assumed(path: Path, arch: str) -> None:
    # An OpenCLIP architecture name does not say how its images were prepared: that belongs to each
    # pretrained tag (ViT-L-14 laion2b_s32b_b82k normalises with mean/std 0.5, DFN5B squashes).
    warnings.warn(f"{path}: arch={arch!r} states the architecture but not the images' preprocessing, so "
                  "OpenAI's is used (its mean/std, short side resized and centre-cropped, bicubic); if this "
                  "checkpoint was trained otherwise its inputs are wrong: pass the OpenCLIP hub folder (its "
                  "open_clip_config.json has preprocess_cfg) or a named download (mini_clip.download)",
                  UserWarning, stacklevel=3)


def refuse_foreign(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """One WeightsError naming the structures in `sd` that mini_clip does not implement (FOREIGN_KEYS, or
    an image tower without ln_pre, as CLIPA's), with a few of their keys; nothing if there are none."""
    found = {}
    for fragment, what in FOREIGN_KEYS.items():
        keys = [k for k in sd if fragment in k]
        if keys:
            found[what] = keys
    if "visual.conv1.weight" in sd and "visual.ln_pre.weight" not in sd:
        found["no ln_pre before the image blocks (CLIPA)"] = ["visual.ln_pre.weight"]
    if found:
        parts = [f"{what} ({len(keys)} keys: {summary(keys, 2)})" for what, keys in found.items()]
        raise WeightsError(f"{source}: refused: it has {'; '.join(parts)}; mini_clip implements OpenAI's ViT "
                           "CLIP only (see the README's table of what loads)")


def read_checkpoint(path: PathLike, arch: Optional[str] = None
                    ) -> tuple[dict[str, torch.Tensor], CLIPConfig, dict]:
    """Read any supported checkpoint.

    The architecture comes from, in this order: mini_clip's metadata; a Hugging Face config.json; an
    OpenCLIP open_clip_config.json beside the weights; `arch` (an OpenCLIP name, zoo.ARCHS); else OpenAI's
    rules read from the shapes, which warns (UserWarning) for any file but OpenAI's own TorchScript archives.
    An `arch` that disagrees with what the file states is refused: what the file states is never overridden.

    Returns:
        (state dict with OpenAI's key names, config, metadata dict). The metadata holds the file's own
        (safetensors) and "preprocess": the images' preprocessing as JSON (Preprocessing.to_json), where
        the file or its folder states one.
    Raises:
        WeightsError: missing, unreadable, unsafe, not a CLIP checkpoint, or a structure mini_clip does not
            implement (named).
    """
    named = None
    if arch is not None:
        try:
            named = zoo.arch_config(arch)
        except ValueError as e:
            raise WeightsError(str(e)) from None
    checkpoint = formats.read(Path(path))
    path = checkpoint.path  # a folder's weights file: the one the messages below name
    sd = checkpoint.tensors
    config = checkpoint.config
    metadata = checkpoint.metadata
    refuse_foreign(sd, str(path))
    if named is not None and config is not None and named != config:
        raise WeightsError(f"{path}: states its own architecture, which differs from arch={arch!r}'s (in "
                           f"{summary(_differences(config, named), 3)}): drop arch=, the file's is used")
    if config is None and named is not None:
        config = named
        if checkpoint.preprocessing is None and "preprocess" not in metadata:
            _warn_preprocessing_assumed(path, arch)
    if config is None:
        config = _openai_config(sd, str(path))
        if checkpoint.format != "TorchScript":  # how OpenAI publishes: its rules are those files' own
            _warn_openai_rules(path, config)
    if checkpoint.preprocessing is not None:
        metadata = {**metadata, "preprocess": checkpoint.preprocessing.to_json()}
    return sd, config, metadata


def _differences(a: CLIPConfig, b: CLIPConfig) -> list[str]:
    return [f"{f.name} {getattr(a, f.name)} vs {getattr(b, f.name)}" for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)]


def _openai_config(sd: Mapping[str, torch.Tensor], source: str) -> CLIPConfig:
    try:
        return CLIPConfig.from_state_dict(sd)
    except ValueError as e:
        raise WeightsError(f"{source}: not a CLIP ViT checkpoint ({str(e)[:400]}); {EXPECTED}") from None


def check_config(sd: Mapping[str, torch.Tensor], config: CLIPConfig, source: str) -> None:
    """Raise one WeightsError if the config disagrees with what the tensors' shapes say (all but the heads).

    Checked before anything is built, so a config that lies (20000 layers) costs nothing.
    """
    try:
        sizes = CLIPConfig.sizes_from_state_dict(sd)
    except ValueError as e:
        raise WeightsError(f"{source}: not a CLIP ViT checkpoint ({str(e)[:300]}); {EXPECTED}") from None
    wrong = [f"{k} is {getattr(config, k)} in the config, {v} in the tensors" for k, v in sizes.items()
             if getattr(config, k) != v]
    if wrong:
        raise WeightsError(f"{source}: its config does not fit its tensors: {summary(wrong, 4)}")


@functools.lru_cache(maxsize=8)
def _shapes(config: CLIPConfig) -> dict[str, tuple]:
    """Every key of a model with this config and its shape (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in CLIP(config, initialize=False).state_dict().items()}


def check_state_dict(sd: Mapping[str, torch.Tensor], config: CLIPConfig, source: str) -> None:
    """Raise one WeightsError listing every missing, unexpected and mis-shaped tensor."""
    expected = _shapes(config)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [f"{k} is {tuple(sd[k].shape)}, expected {s}" for k, s in expected.items()
                 if k in sd and tuple(sd[k].shape) != s]
    problems = [f"{label} ({len(items)}): {summary(items)}" for label, items in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if items]
    if problems:
        raise WeightsError(f"{source}: does not fit a CLIP {config}: " + "; ".join(problems))


def build(sd: Mapping[str, torch.Tensor], config: Optional[CLIPConfig] = None, source: str = "state dict",
          device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32) -> CLIP:
    """A CLIP in eval mode from a state dict in OpenAI's names, loaded strictly.

    config: the architecture; None reads it from the shapes by OpenAI's rules (CLIPConfig.from_state_dict).
    The config is checked against the shapes, then every key and shape, before anything is built.
    """
    if config is None:
        config = _openai_config(sd, source)
    check_config(sd, config, source)
    if config.vocab_size != VOCAB_SIZE:
        raise WeightsError(f"{source}: its vocabulary has {config.vocab_size} tokens; mini_clip's tokenizer "
                           f"(OpenAI's BPE) has {VOCAB_SIZE}, so its texts cannot be tokenized for it "
                           "(another tokenizer: MetaCLIP 2's XLM-V, mT5, BERT)")
    check_state_dict(sd, config, source)
    for k, v in sd.items():
        if not v.is_floating_point():
            raise WeightsError(f"{source}: tensor {k} has dtype {v.dtype}; weights must be floating point")
    with torch.device("meta"):  # no memory and no init: every parameter is about to be replaced
        model = CLIP(config, initialize=False)
    # check_state_dict has matched every key and shape, so assign directly (load_state_dict's generic checks
    # and hooks cost more than reading the file)
    modules = dict(model.named_modules())
    for key, value in sd.items():
        owner, _, name = key.rpartition(".")
        setattr(modules[owner], name, nn.Parameter(value.to(device=device, dtype=dtype)))
    return model.eval()


def save(model: CLIP, path: PathLike, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write mini_clip's format: safetensors with OpenAI's key names, the config in the metadata, and the
    explanation settings the model recommends (`model.recommended`, if set) under "explain".

    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    meta = {"format": "mini_clip", "config": json.dumps(dataclasses.asdict(model.config)),
            "preprocess": model.preprocessing.to_json()}
    if model.recommended:
        meta["explain"] = json.dumps(model.recommended)
    meta.update(metadata or {})
    data = save_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, meta)
    atomic_write(path, lambda f: f.write(data))
