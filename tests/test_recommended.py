"""Explanation settings recommended by a weights file: saved, loaded, validated, and followed by relevance."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import mini_clip
from mini_clip import WeightsError, relevance

from reference import max_rel_diff, tolerance

ADVICE = {"method": "chefer", "start_layer": 0, "start_layer_text": 0}


@pytest.fixture(scope="module")
def advised(tiny_weights, tmp_path_factory):
    model, _ = mini_clip.load(tiny_weights)
    model.recommended = dict(ADVICE)
    path = tmp_path_factory.mktemp("advised") / "advised.safetensors"
    mini_clip.save(model, path)
    return path


def test_save_and_load_carry_the_recommendation(advised, tiny_weights):
    model, _ = mini_clip.load(advised)
    assert model.recommended == ADVICE
    plain, _ = mini_clip.load(tiny_weights)
    assert plain.recommended == {}


def test_relevance_follows_the_recommendation_for_its_method_only(advised, tiny_weights):
    model, _ = mini_clip.load(advised)
    plain, _ = mini_clip.load(tiny_weights)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = relevance(model, image, ["a dog", "a red star"])
    want = relevance(plain, image, ["a dog", "a red star"], start_layer=0, start_layer_text=0)
    assert (got.method, got.start_layer, got.start_layer_text) == ("chefer", 0, 0)
    # The same weights from two files: the tensors are read in place from the file (safetensors maps it), and
    # the metadata moves where they start, so the CPU kernels may sum in another order (seen: 5e-7 on an AMD
    # EPYC). Equal up to rounding: 4 blocks (2 a tower) of 4 x 64-wide MLPs, forward and backward.
    tol = tolerance(torch.float32, 4 * 64, depth=2 * 4)
    assert max_rel_diff(got.image, want.image) <= tol
    assert max_rel_diff(got.text_matrix, want.text_matrix) <= tol
    default = relevance(plain, image, ["a dog"])
    assert (default.start_layer, default.start_layer_text) == (1, 1)  # the original's: last block (of 2)
    assert max_rel_diff(got.image[:, :1], default.image) > 100 * tol  # the recommendation changes the maps
    # another method keeps its own defaults; an explicit start layer wins over the recommendation
    assert relevance(model, image, "a dog", method="attention").start_layer == 1
    assert relevance(model, image, "a dog", start_layer=-1).start_layer == 1


@pytest.mark.parametrize("advice, words", [
    ("[1, 2]", "must be an object"),
    ('{"method": "magic"}', "recommended method 'magic' is not one of"),
    ('{"start_layer": 7}', "recommended start_layer 7 is not a block of a tower of 2"),
    ('{"start_layer_text": 0.5}', "recommended start_layer_text 0.5"),
    ('{"start_layer": true}', "recommended start_layer True"),
    ('{"colour": "red"}', "must be an object with method"),
    ("{not json", "damaged explanation settings"),
])
def test_damaged_recommendations_are_refused(advised, tmp_path, advice, words):
    tensors = load_file(advised)
    from safetensors import safe_open
    with safe_open(str(advised), "pt") as f:
        metadata = dict(f.metadata())
    metadata["explain"] = advice
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad, metadata)
    with pytest.raises(WeightsError, match="damaged explanation settings") as e:
        mini_clip.load(bad)
    assert words in str(e.value) and str(bad) in str(e.value)
    assert len(str(e.value)) < 300


def test_the_embedded_model_recommends_settings_chosen_on_validation():
    model, _ = mini_clip.load()
    advice = json.loads(json.dumps(model.recommended))
    assert advice["method"] == "chefer" and set(advice) == {"method", "start_layer", "start_layer_text"}
