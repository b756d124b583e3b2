"""Checkpoints in, a CLIP out: format detection, strict loading, and mini_clip's own safetensors format.

Formats read (detected from the file, not its name):
- mini_clip `.safetensors`: OpenAI key names, the config as JSON in the metadata (what `save` writes);
- OpenAI's TorchScript archives (`ViT-B-32.pt` etc.): tensors read without running the archive's code;
- plain state dicts saved with `torch.save` (OpenAI's names; OpenCLIP's `{"state_dict": ...}` and
  `module.` prefixes too), read with `torch.load(weights_only=True)`;
- Hugging Face `CLIPModel` directories (`config.json` + `model.safetensors` or `pytorch_model.bin`), and
  Hugging Face state dict files, mapped by the tables in `hf.py`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes

from . import hf, zoo
from .archive import MAX_INFLATION, UnsafeArchiveError, check_pickles, check_zip, read_entry
from .files import atomic_write
from .image import Preprocessing, preprocess
from .model import CLIP, PRESETS, STATE_IT, CLIPConfig, summary
from .relevance import check_recommended
from .tokenizer import VOCAB_SIZE
from .torchscript import is_torchscript, read_torchscript

PathLike = Union[str, os.PathLike]
# Entries of OpenAI's TorchScript models that are not weights (OpenAI's build_model deletes them too).
NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
EXPECTED = ("expected a mini_clip .safetensors file, an OpenAI/OpenCLIP .pt checkpoint (TorchScript or state dict), "
            "or a Hugging Face CLIPModel directory")


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
HF_PREPROCESSOR = "preprocessor_config.json"


# The embedded default: a tiny CLIP trained on mini_clip.scenes (see scripts/train_scenes.py). Its home is
# the repository's weights/ (a clone, `pip install -e .`); wheels and plain installs carry it in
# mini_clip/embedded/ (setup.cfg maps the package mini_clip.embedded to weights/), which is looked at first.
_PACKAGE = Path(__file__).resolve().parent
_EMBEDDED = [folder / "scenes-vit-t8.safetensors" for folder in (_PACKAGE / "embedded", _PACKAGE.parent / "weights")]
DEFAULT_WEIGHTS = next((path for path in _EMBEDDED if path.exists()), _EMBEDDED[0])


class WeightsError(ValueError):
    """A weights file that cannot be loaded; the message names the file, what was wrong and what was expected."""


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: damaged safetensors file ({e})") from None


def _read_torch_file(path: Path) -> tuple[object, bool]:
    """A torch.save file or a TorchScript archive, without executing code from it.

    Returns (what it holds, whether it is a TorchScript archive). Before torch.load sees a file, its zip
    sizes are bounded and its pickles scanned for globals (archive.py): a crafted file is told from a
    damaged one by what it asks for, not by the wording of torch's errors.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                check_zip(archive, path.stat().st_size)
                if is_torchscript(archive):
                    return read_torchscript(archive), True
                for name in archive.namelist():  # torch.save's <name>/data.pkl
                    if name.endswith("data.pkl"):
                        check_pickles(read_entry(archive, name), count=1)
        else:
            with open(path, "rb") as f:
                check_pickles(f)
    except UnsafeArchiveError as e:
        raise WeightsError(f"{path}: refused: {e}; it may be crafted, so it was not loaded") from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, KeyError, EOFError, RuntimeError, ValueError,
            TypeError, AttributeError, OSError) as e:  # what a damaged archive or pickle makes the reader raise
        raise WeightsError(f"{path}: damaged archive ({e.__class__.__name__}: {str(e)[:200]})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as e:  # garbage bytes make the unpickler fail in many ways (IndexError, KeyError, ...)
        raise WeightsError(f"{path}: not a checkpoint or damaged ({EXPECTED}; torch said: {str(e)[:200]})") from None


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= os.path.getsize(path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """OpenCLIP nests the weights under "state_dict" and, trained with DDP, prefixes keys with "module."."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no tensors ({EXPECTED})")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _config_from_metadata(text: str, path: Path) -> CLIPConfig:
    try:
        return CLIPConfig.from_dict(json.loads(text))
    except (ValueError, TypeError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise WeightsError(f"{path}: damaged config in the metadata ({str(e)[:300]})") from None


def _check_bytes(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    """The tensors of a file hold at most what its bytes can (MAX_INFLATION allows a compressed zip): a
    tensor that views more elements than it stores (strides of 0, shared storage) is refused before a
    copy of it (to another dtype or device) can make memory out of nothing."""
    total = sum(v.numel() * v.element_size() for v in sd.values())
    if total > MAX_INFLATION * path.stat().st_size:
        raise WeightsError(f"{path}: refused: its tensors hold {total} bytes, {total // path.stat().st_size}x "
                           "the file's size; weights are stored, not repeated, so it may be crafted")


def _warn_openai_rules(path: Path, config: CLIPConfig) -> None:
    warnings.warn(f"{path} states no architecture, so it is read by OpenAI's rules (heads = width // 64: "
                  f"{config.vision_heads} image and {config.transformer_heads} text heads; QuickGELU; LayerNorm "
                  f"eps 1e-5); if it was trained otherwise (OpenCLIP's LAION/DataComp models use GELU, ViT-H "
                  f"head width 80) its outputs are wrong: {STATE_IT}", UserWarning, stacklevel=3)


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


def _stated_config(path: Path) -> tuple[Path, Optional[CLIPConfig], Optional[Preprocessing]]:
    """(weights file, config, preprocessing) from what lies beside the weights: a Hugging Face directory's
    config.json (+ preprocessor_config.json), or an OpenCLIP hub folder's open_clip_config.json. Either
    may be None: nothing states it."""
    if path.is_dir() and (path / "config.json").exists():
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
        if not files:
            raise WeightsError(f"{path}: Hugging Face directory without model.safetensors or pytorch_model.bin")
        preprocessor = path / HF_PREPROCESSOR
        try:
            config = hf.config_from_hf(path / "config.json")
        except (ValueError, OSError, RecursionError) as e:
            raise WeightsError(f"{path / 'config.json'}: {str(e)[:300]}") from None
        try:
            preprocessing = hf.preprocessing_from_hf(preprocessor) if preprocessor.exists() else None
        except (ValueError, TypeError, OSError, RecursionError) as e:
            raise WeightsError(f"{preprocessor}: {str(e)[:300]}") from None
        return files[0], config, preprocessing
    hub = zoo.find_hub_folder(path)
    if hub is not None:
        config_file, weights = hub
        if not weights.exists():
            raise WeightsError(f"{path}: OpenCLIP folder without {' or '.join(zoo.WEIGHTS_NAMES)}")
        try:
            return weights, *zoo.read_hub_config(config_file)
        except (ValueError, TypeError, OSError, RecursionError) as e:
            raise WeightsError(f"{config_file}: {str(e)[:400]}") from None
    if path.is_dir():
        raise WeightsError(f"{path}: a directory without config.json or {zoo.CONFIG_NAME} ({EXPECTED})")
    return path, None, None


def read_checkpoint(path: PathLike, arch: Optional[str] = None) -> tuple[dict[str, torch.Tensor], CLIPConfig, dict]:
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
    path = Path(path)
    named = None
    if arch is not None:
        try:
            named = zoo.arch_config(arch)
        except ValueError as e:
            raise WeightsError(str(e)) from None
    path, config, preprocessing = _stated_config(path)
    metadata, openais = {}, False
    if not path.is_file():
        raise WeightsError(f"{path}: no such file ({EXPECTED})")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty file ({EXPECTED})")
    if _is_safetensors(path):
        sd, metadata = _read_safetensors(path)
        if "config" in metadata:
            config = _config_from_metadata(metadata["config"], path)
    else:
        obj, openais = _read_torch_file(path)
        sd = _unwrap(obj, path)
    sd = {k: v for k, v in sd.items() if k not in NOT_WEIGHTS}
    _check_bytes(sd, path)
    if hf.is_hf_state_dict(sd):
        if config is None:
            raise WeightsError(f"{path}: Hugging Face weights need their config.json: pass the model directory")
        try:
            converted, unused = hf.convert_hf_state_dict(sd)
        except ValueError as e:
            raise WeightsError(f"{path}: {e}") from None
        sd = {**converted, **{k: sd[k] for k in unused}}  # unused ones reported as unexpected, by their names
    refuse_foreign(sd, str(path))
    if named is not None and config is not None and named != config:
        raise WeightsError(f"{path}: states its own architecture, which differs from arch={arch!r}'s (in "
                           f"{summary(_differences(config, named), 3)}): drop arch=, the file's is used")
    if config is None and named is not None:
        config = named
        if preprocessing is None and "preprocess" not in metadata:
            _warn_preprocessing_assumed(path, arch)
    if config is None:
        config = _openai_config(sd, str(path))
        if not openais:
            _warn_openai_rules(path, config)
    if preprocessing is not None:
        metadata = {**metadata, "preprocess": preprocessing.to_json()}
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
                           f"(OpenAI's BPE) has {VOCAB_SIZE}, so its texts cannot be tokenized for it (another "
                           "tokenizer: MetaCLIP 2's XLM-V, mT5, BERT)")
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


def load(path: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu",
         dtype: torch.dtype = torch.float32, arch: Optional[str] = None) -> tuple[CLIP, Callable]:
    """Load a CLIP checkpoint of any supported format, like `clip.load`.

    Args:
        path: a file or Hugging Face directory; a model name ("ViT-B/32", ...: see mini_clip.download) is
            downloaded once into the cache; None loads the embedded default model.
        device: where the model lives.
        dtype: parameter dtype; fp32 by default (exact), torch.float16/bfloat16 for speed on a GPU.
        arch: the OpenCLIP architecture (a name of mini_clip.zoo.ARCHS, e.g. "ViT-H-14") of a file that
            does not state its own; a file that does is read by its own.
    Returns:
        (model in eval mode, preprocess: PIL image or path -> tensor (3, R, R) for the model's resolution R,
        made as the model's images were: `model.preprocessing`).
    """
    if path is None:
        path = DEFAULT_WEIGHTS
        if not path.exists():
            raise WeightsError(f"{path}: the embedded default model is missing (and not in "
                               f"{_EMBEDDED[1].parent}); reinstall mini_clip (pip install from its repository, "
                               "or a wheel built from it) or pass a weights file")
    elif isinstance(path, str) and "ViT" in path and "/" in path:
        # A name means the model, as in clip.load, even where a folder of that name exists ("./ViT-B/32" is
        # the folder). Imported here: download imports this module.
        from .download import MODELS, OPENCLIP_MODELS, fetch
        if path in MODELS or path in OPENCLIP_MODELS:
            path = fetch(path)  # downloaded, verified and converted once, then read from the cache
        elif not os.path.exists(path):
            raise WeightsError(f"unknown model {path!r} (and no such file); valid names: "
                               f"{', '.join([*MODELS, *OPENCLIP_MODELS])}")
    sd, config, metadata = read_checkpoint(path, arch)
    model = build(sd, config, str(path), device, dtype)
    try:
        model.preprocessing = Preprocessing.from_json(metadata.get("preprocess"))
    except (ValueError, TypeError, RecursionError) as e:
        raise WeightsError(f"{path}: damaged preprocessing in the metadata ({str(e)[:300]})") from None
    if "explain" in metadata:  # the settings its model is best explained with (see relevance.recommended)
        try:
            model.recommended = check_recommended(json.loads(metadata["explain"]), model)
        except (ValueError, RecursionError) as e:  # json.JSONDecodeError is a ValueError
            raise WeightsError(f"{path}: damaged explanation settings in the metadata ({str(e)[:300]})") from None
    return model, functools.partial(preprocess, size=config.image_resolution, preprocessing=model.preprocessing)


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

