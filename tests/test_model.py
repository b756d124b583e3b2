"""mini_clip's CLIP against OpenAI's own `clip/model.py`, on random perturbed weights of unusual shapes.

Every expected number comes from OpenAI's code (loaded by file path in conftest) or from the test's own
arithmetic; mini_clip only ever provides the value under test.
"""
import ast
import dataclasses
import subprocess
import sys

import pytest
import torch

from mini_clip import PRESETS, CLIPConfig
from mini_clip.weights import build

from reference import SHAPES, max_rel_diff, openai_clip, random_tokens, tolerance

EOT = 49407  # OpenAI's end-of-text id, the largest in the vocabulary
SOT = 49406


def full_length_row(context: int, seed: int) -> torch.Tensor:
    """A token row with no padding at all: start, context-2 random ids, end-of-text in the last position."""
    g = torch.Generator().manual_seed(seed)
    row = torch.randint(1, SOT, (context,), generator=g)
    row[0], row[-1] = SOT, EOT
    return row


def make_inputs(shape, index: int):
    """2 or 3 images and 5 texts of different lengths (one of 1 BPE token, one filling the context)."""
    resolution, context = shape[1], shape[5]
    g = torch.Generator().manual_seed(100 + index)
    images = torch.randn(2 + index % 2, 3, resolution, resolution, generator=g)
    tokens = torch.cat([random_tokens(3, context, seed=index),
                        random_tokens(1, context, seed=50 + index, max_len=1),
                        full_length_row(context, seed=index)[None]])
    return images, tokens


@pytest.fixture(scope="module", params=range(len(SHAPES)), ids=[f"shape{i}" for i in range(len(SHAPES))])
def case(request, openai_model):
    """(shape, OpenAI's model, mini_clip's model built from its state dict, images, tokens)."""
    index = request.param
    shape = SHAPES[index]
    ref = openai_clip(openai_model, shape, seed=index)
    model = build(ref.state_dict())
    images, tokens = make_inputs(shape, index)
    eot = tokens.argmax(-1)
    assert len(set(eot.tolist())) == len(eot) and int(eot.max()) == shape[5] - 1  # lengths all differ
    return shape, ref, model, images, tokens


def fp32_tolerance(shape) -> float:
    """Two fp32 computations of the whole model: its longest sum is the MLP's over 4 * width, and the
    differences of the image and the text blocks add up in the logits."""
    return tolerance(torch.float32, 4 * max(shape[3], shape[7]), shape[2] + shape[9])


def expected_config(shape) -> dict:
    """The config OpenAI's CLIP(*shape) has, written field by field (vision heads: OpenAI's width // 64; MLP
    4 x width, QuickGELU and LayerNorm eps 1e-5, as OpenAI's model.py builds them)."""
    (embed, resolution, vlayers, vwidth, patch, context, vocab, twidth, theads, tlayers) = shape
    return dict(embed_dim=embed, image_resolution=resolution, vision_layers=vlayers, vision_width=vwidth,
                vision_patch_size=patch, context_length=context, vocab_size=vocab, transformer_width=twidth,
                transformer_heads=theads, transformer_layers=tlayers, vision_heads=vwidth // 64,
                vision_mlp_width=4 * vwidth, transformer_mlp_width=4 * twidth, activation="quick_gelu",
                layer_norm_eps=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Equivalence with OpenAI's model.py


def test_logits_equal_openai(case):
    shape, ref, model, images, tokens = case
    with torch.no_grad():
        want_image, want_text = ref(images, tokens)
        got_image, got_text = model(images, tokens)
    assert got_image.shape == (len(images), len(tokens)) and got_text.shape == (len(tokens), len(images))
    d_image, d_text = max_rel_diff(got_image, want_image), max_rel_diff(got_text, want_text)
    print(f"\n{shape}: logits max rel diff {d_image:.2e} (per image), {d_text:.2e} (per text)")
    assert d_image < fp32_tolerance(shape) and d_text < fp32_tolerance(shape)
    # the inputs must actually tell texts apart, or the comparison above would be weak
    assert float(want_image.std()) > 0.1


def test_features_equal_openai(case):
    shape, ref, model, images, tokens = case
    with torch.no_grad():
        d_image = max_rel_diff(model.encode_image(images), ref.encode_image(images))
        d_text = max_rel_diff(model.encode_text(tokens), ref.encode_text(tokens))
    print(f"\n{shape}: encode_image {d_image:.2e}, encode_text {d_text:.2e}")
    assert d_image < fp32_tolerance(shape) and d_text < fp32_tolerance(shape)


def test_each_text_alone_equals_the_batch(case):
    """The padding cut uses the longest text of the batch; a text alone is cut shorter and must not change."""
    shape, ref, model, _, tokens = case
    with torch.no_grad():
        want = ref.encode_text(tokens)
        for i in range(len(tokens)):
            assert max_rel_diff(model.encode_text(tokens[i:i + 1])[0], want[i]) < fp32_tolerance(shape)


def test_padding_cut_equals_full_context(case):
    """encode_text drops the positions after the last end-of-text and computes only the end-of-text rows of
    its last block; running every position of every block gives the same."""
    shape, _, model, _, tokens = case
    short = tokens[:3]  # random_tokens rows, so (almost surely) padded
    assert int(short.argmax(-1).max()) < tokens.shape[1] - 1
    with torch.no_grad():
        full = model.pool_text(model.transformer(model.embed_text(short), causal=True), short.argmax(-1))
        cut = model.encode_text(short)
    assert max_rel_diff(cut, full) < fp32_tolerance(shape)


def test_config_from_openai_state_dict(case):
    shape, ref, model, _, _ = case
    want = expected_config(shape)
    assert dataclasses.asdict(CLIPConfig.from_state_dict(ref.state_dict())) == want
    assert dataclasses.asdict(model.config) == want
    assert model.config.grid == shape[1] // shape[4]


# Published OpenAI ViT models: the arguments OpenAI's build_model derives for each (embed_dim, resolution,
# vision layers, vision width, patch, context, vocab, text width, text heads, text layers).
OPENAI_ARGS = {
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12),
}


def test_presets_are_openais_vit_models(openai_clip_dir):
    """PRESETS names exactly the ViT models in OpenAI's clip.py `_MODELS` table."""
    tree = ast.parse((openai_clip_dir / "clip.py").read_text())
    table = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "_MODELS" for t in node.targets))
    names = {k.value for k in table.keys if k.value.startswith("ViT")}
    assert set(PRESETS) == names == set(OPENAI_ARGS)


@pytest.mark.parametrize("name", sorted(OPENAI_ARGS))
def test_presets_equal_config_of_openai_shapes(openai_model, name):
    """A state dict shaped as OpenAI's CLIP(...) for each published model (meta tensors: no memory)."""
    with torch.device("meta"):
        sd = openai_model.CLIP(*OPENAI_ARGS[name]).state_dict()
    config = CLIPConfig.from_state_dict(sd)
    assert config == PRESETS[name]
    assert dataclasses.asdict(config) == expected_config(OPENAI_ARGS[name])
    # and mini_clip's model of that preset has exactly OpenAI's keys and shapes
    from mini_clip import CLIP
    with torch.device("meta"):
        ours = CLIP(PRESETS[name]).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in sd.items()}


def test_layers_initialise_as_torchs_own():
    """Linear, LayerNorm, Conv2d and Embedding skip their init on the meta device only: elsewhere, same
    values, same random draws."""
    from mini_clip.model import Conv2d, Embedding, LayerNorm, Linear
    layers = {Linear: (torch.nn.Linear, (7, 5)), LayerNorm: (torch.nn.LayerNorm, (7,)),
              Conv2d: (torch.nn.Conv2d, (3, 4, 2)), Embedding: (torch.nn.Embedding, (9, 4))}
    for ours, (torchs, args) in layers.items():
        torch.manual_seed(3)
        a = ours(*args)
        after_ours = torch.rand(1)
        torch.manual_seed(3)
        b = torchs(*args)
        assert torch.equal(after_ours, torch.rand(1))
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        with torch.device("meta"):
            assert ours(*args).weight.is_meta


def test_a_fresh_process_loads_without_arithmetic_on_meta(tiny_weights):
    """The first load in a process took 1.2 s: OpenAI's random init, run on the meta device, went through
    torch's Python decompositions, which import torch._dynamo and more on first use. Loading now makes empty
    tensors there, and imports nothing of torch's that `import mini_clip` had not."""
    code = ("import sys, mini_clip; before = set(sys.modules); mini_clip.load(sys.argv[1]); "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_weights)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch._dynamo" not in out.stdout and len(out.stdout) < 200, out.stdout[:300]


def test_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        CLIPConfig(64, 60, 1, 64, 16)
    with pytest.raises(ValueError, match="visual.proj"):
        CLIPConfig.from_state_dict({"token_embedding.weight": torch.zeros(3, 2)})


# ---------------------------------------------------------------------------------------------------------
# Recording attention probabilities


def openai_attention_probs(ref, images, tokens):
    """Per-head attention probabilities of every block of OpenAI's model, recomputed from each block's
    input with nn.MultiheadAttention's own need_weights path: ([image blocks], [text blocks]),
    (B, nh, T, T) each."""
    out = {"image": [], "text": []}
    handles = []
    for tower, blocks in (("image", ref.visual.transformer.resblocks), ("text", ref.transformer.resblocks)):
        for block in blocks:
            def pre_hook(module, args, tower=tower):
                x = module.ln_1(args[0])  # (T, B, C), OpenAI is sequence-first
                mask = module.attn_mask.to(x.dtype) if module.attn_mask is not None else None
                _, w = module.attn(x, x, x, need_weights=True, average_attn_weights=False, attn_mask=mask)
                out[tower].append(w.detach())
            handles.append(block.register_forward_pre_hook(pre_hook))
    try:
        with torch.no_grad():
            ref(images, tokens)
    finally:
        for h in handles:
            h.remove()
    return out["image"], out["text"]


def all_blocks(model):
    return [*model.visual.transformer.resblocks, *model.transformer.resblocks]


def test_recording_keeps_openais_attention_probabilities(case):
    shape, ref, model, images, tokens = case
    with torch.no_grad():
        plain, _ = model(images, tokens)
    want_image, want_text = openai_attention_probs(ref, images, tokens)
    with model.recording():
        recorded, _ = model(images, tokens)
        image_probs = [b.attn_probs for b in model.visual.transformer.resblocks]
        text_probs = [b.attn_probs for b in model.transformer.resblocks]
    assert max_rel_diff(recorded.detach(), plain) < fp32_tolerance(shape)

    grid = shape[1] // shape[4]
    T_image = 1 + grid * grid
    T_text = int(tokens.argmax(-1).max()) + 1  # positions after the last end-of-text are cut
    assert len(image_probs) == shape[2] and len(text_probs) == shape[9]
    for probs, want in zip(image_probs, want_image):
        assert probs.shape == (len(images), shape[3] // 64, T_image, T_image)
        assert probs.requires_grad
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]),
                                   atol=tolerance(torch.float32, T_image), rtol=0)
        torch.testing.assert_close(probs.detach(), want, atol=fp32_tolerance(shape), rtol=0)  # probs <= 1
    for probs, want in zip(text_probs, want_text):
        assert probs.shape == (len(tokens), shape[8], T_text, T_text)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]),
                                   atol=tolerance(torch.float32, T_text), rtol=0)
        assert torch.all(probs.detach().triu(1) == 0)  # causal: no token sees a later one
        want = want[:, :, :T_text, :T_text]
        torch.testing.assert_close(probs.detach(), want, atol=fp32_tolerance(shape), rtol=0)

    for block in all_blocks(model):
        assert block.attn_probs is None and block.record is False


def test_recording_one_tower_only(case):
    _, _, model, images, tokens = case
    with model.recording(image=False, text=True):
        model(images, tokens)
        assert all(b.attn_probs is None for b in model.visual.transformer.resblocks)
        assert all(b.attn_probs is not None for b in model.transformer.resblocks)
    with model.recording(image=True, text=False):
        model(images, tokens)
        assert all(b.attn_probs is not None for b in model.visual.transformer.resblocks)
        assert all(b.attn_probs is None for b in model.transformer.resblocks)
    assert all(b.attn_probs is None and not b.record for b in all_blocks(model))


def test_plain_forward_keeps_nothing(case):
    _, _, model, images, tokens = case
    with torch.no_grad():
        model(images, tokens)
    assert all(b.attn_probs is None and not b.record for b in all_blocks(model))


def test_recording_context_cleans_up_after_an_exception(case):
    _, _, model, images, tokens = case
    with pytest.raises(RuntimeError, match="boom"):
        with model.recording():
            model(images, tokens)
            raise RuntimeError("boom")
    assert all(b.attn_probs is None and not b.record for b in all_blocks(model))


def test_gradients_in_one_call_equal_per_block_calls(case):
    shape, _, model, images, tokens = case
    weights = torch.randn(len(images), len(tokens), generator=torch.Generator().manual_seed(7))
    with model.recording():
        logits, _ = model(images, tokens)
        score = (weights * logits).sum()
        probs = [b.attn_probs for b in all_blocks(model)]
        alone = [torch.autograd.grad(score, [p], retain_graph=True)[0] for p in probs]
        together = torch.autograd.grad(score, probs)
    for one, all_at_once in zip(alone, together):
        assert one.shape == all_at_once.shape
        assert float(one.abs().max()) > 0  # every block influences the score
        assert max_rel_diff(all_at_once, one) < fp32_tolerance(shape)


def test_gradient_of_attention_matches_finite_difference(case):
    """d(logit)/d(A) of the last image block against central differences on A, where the rest of the forward
    is replayed by test-side float64 code (value projection, out-projection, MLP, pooling): the recorded
    tensor must be the one the forward really used."""
    shape, ref, _, images, tokens = case
    model = build(ref.state_dict(), dtype=torch.float64)
    images = images.double()
    last = model.visual.transformer.resblocks[-1]
    F = torch.nn.functional

    def layer_norm(x, ln):  # in float64 throughout (mini_clip's and OpenAI's LayerNorm compute in fp32)
        return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)

    def logit_from_probs(x, probs, text_features):
        h = layer_norm(x, last.ln_1)
        B, T, C = h.shape
        nh = probs.shape[1]
        v = F.linear(h, last.attn.in_proj_weight[2 * C:], last.attn.in_proj_bias[2 * C:])  # v rows come last
        v = v.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
        y = x + F.linear((probs @ v).transpose(1, 2).reshape(B, T, C), last.attn.out_proj.weight,
                         last.attn.out_proj.bias)
        u = F.linear(layer_norm(y, last.ln_2), last.mlp.c_fc.weight, last.mlp.c_fc.bias)
        y = y + F.linear(u * torch.sigmoid(1.702 * u), last.mlp.c_proj.weight, last.mlp.c_proj.bias)
        a = layer_norm(y[:, 0], model.visual.ln_post) @ model.visual.proj
        a, b = a / a.norm(dim=-1, keepdim=True), text_features / text_features.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * (a[0] * b[1]).sum()

    inputs = {}
    last.register_forward_pre_hook(lambda module, args: inputs.setdefault("x", args[0].detach()))
    try:
        with model.recording(image=True, text=False):
            logits, _ = model(images, tokens)
            (grad,) = torch.autograd.grad(logits[0, 1], [last.attn_probs])
            probs = last.attn_probs.detach()
    finally:
        last._forward_pre_hooks.clear()
    with torch.no_grad():
        x, text_features = inputs["x"], model.encode_text(tokens)
        # one block replayed; the model's LayerNorms round in fp32; a logit is at most exp(logit_scale)
        replay_error = abs(float(logit_from_probs(x, probs, text_features)) - float(logits[0, 1]))
        assert replay_error < tolerance(torch.float32, 4 * shape[3]) * float(model.logit_scale.exp())
        g = torch.Generator().manual_seed(3)
        scale = float(grad.abs().max())
        assert scale > 0
        for _ in range(4):
            i = tuple(int(torch.randint(n, (1,), generator=g)) for n in probs.shape)
            eps = 1e-5
            plus, minus = probs.clone(), probs.clone()
            plus[i] += eps
            minus[i] -= eps
            numeric = (logit_from_probs(x, plus, text_features)
                       - logit_from_probs(x, minus, text_features)) / (2 * eps)
            # not a rounding tolerance: central differences with step 1e-5 are off by O(step ** 2) * f'''
            assert abs(float(numeric) - float(grad[i])) < 1e-4 * max(1.0, scale)


# ---------------------------------------------------------------------------------------------------------
# Dtypes and module plumbing


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_runs_close_to_fp32(openai_model, dtype):
    """fp16 keeps ~3 decimal digits and bf16 ~2. Sums accumulate in fp32 (torch's kernels, mini_clip's fp32
    LayerNorm and softmax), so what is left is one rounding to `dtype` per stored value (n = 1), per block."""
    for index in (0, 2):
        shape = SHAPES[index]
        ref = openai_clip(openai_model, shape, seed=index)
        images, tokens = make_inputs(shape, index)
        with torch.no_grad():
            want, _ = ref(images, tokens)
            model = build(ref.state_dict()).to(dtype)
            assert model.dtype == dtype
            logits_per_image, logits_per_text = model(images, tokens)  # fp32 pixels are cast by the model
            image_features = model.encode_image(images.to(dtype))
            text_features = model.encode_text(tokens)
        assert logits_per_image.dtype == logits_per_text.dtype == dtype
        assert image_features.dtype == text_features.dtype == dtype
        d = max_rel_diff(logits_per_image.float(), want)
        print(f"\n{dtype} shape{index}: max rel diff to fp32 {d:.2e}")
        assert torch.isfinite(logits_per_image).all() and d < tolerance(dtype, 1, shape[2] + shape[9])


def test_eval_float_to_return_the_model_and_keep_numbers(case):
    _, ref, _, images, tokens = case
    model = build(ref.state_dict())
    with torch.no_grad():
        before, _ = model(images, tokens)
    assert model.train() is model and all(m.training for m in model.modules())
    assert model.eval() is model and not any(m.training for m in model.modules())
    assert model.float() is model and model.to("cpu") is model and model.to(torch.device("cpu")) is model
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    with torch.no_grad():
        after, _ = model(images, tokens)
    assert torch.equal(before, after)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.half() is model and model.dtype == torch.float16
    assert model.float() is model and model.dtype == torch.float32
    for k, v in model.state_dict().items():  # a trip through fp16 only rounds each value to fp16
        assert v.dtype == torch.float32 and torch.equal(v, original[k].half().float()), k


def hooks_of(model):
    found = []
    for name, module in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(module, attr, None):
                found.append(f"{name or 'CLIP'}.{attr}")
    modules = torch.nn.modules.module
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        if getattr(modules, attr, None):
            found.append(attr)
    return found


def test_no_hooks_anywhere(case):
    _, _, model, images, tokens = case
    assert hooks_of(model) == []
    with model.recording():
        logits, _ = model(images, tokens)
        assert hooks_of(model) == []
        torch.autograd.grad(logits.sum(), [b.attn_probs for b in all_blocks(model)])
        assert hooks_of(model) == []
    assert hooks_of(model) == []


def test_every_activation_a_config_accepts_builds_its_nonlinearity():
    """config.ACTIVATIONS (what a config may state) and model.NONLINEARITIES (what a block builds) name the
    same activations, and each block computes its activation's formula (written out here)."""
    from mini_clip.config import ACTIVATIONS
    from mini_clip.model import NONLINEARITIES, ResidualAttentionBlock
    assert set(NONLINEARITIES) == set(ACTIVATIONS)
    x = torch.linspace(-4, 4, 101)
    formulas = {"quick_gelu": x * torch.sigmoid(1.702 * x), "gelu": 0.5 * x * (1 + torch.erf(x / 2 ** 0.5))}
    assert set(formulas) == set(ACTIVATIONS)
    for name in ACTIVATIONS:
        block = ResidualAttentionBlock(64, 1, activation=name)
        torch.testing.assert_close(block.mlp.gelu(x), formulas[name])
