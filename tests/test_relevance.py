"""mini_clip.relevance against independent implementations of Chefer et al.'s method and its baselines.

Two references, both written from the authors' CLIP notebook (`interpret`), never from mini_clip
(tests/reference/chefer.py):
1. transformers' `CLIPModel` (eager attention, `output_attentions=True`) holding the same random weights,
   mapped from OpenAI's names by the references' own table (tests/reference/hf.py);
2. OpenAI's own `clip/model.py` with its attention written out so that each block keeps `attn_probs`, as the
   authors' notebook modified OpenAI's code.
Both repeat the image once per text, sum the diagonal logits into one score and call `torch.autograd.grad`
once per block: the straightforward algorithm that mini_clip's cheaper one must reproduce number for number.
The baselines (attention, rollout, Grad-CAM) are recomputed from the papers on transformers' attentions and
hidden states. mini_clip only ever provides the value under test.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
import transformers

from mini_clip import relevance
from mini_clip.weights import build

from reference import EOT, SOT, full_length_tokens, max_rel_diff, openai_clip, random_tokens, tolerance
from reference.chefer import (
    hf_interpret,
    openai_interpret,
    openai_keeping_probs,
    rollout,
)
from reference.hf import hf_clip

# (embed_dim, image_resolution, vision_layers, vision_width, patch, context, vocab, text_width, text_heads,
#  text_layers): patch 16 -> 4x4 grid, patch 32 -> 3x3 grid; 2-3 heads (so clamp-before-mean matters) and
# 3-4 blocks per tower (so -1, 0 and a middle start layer all differ). Heads are width // 64 in both towers,
# OpenAI's rule, which the transformers reference (tests/reference/hf.py) repeats.
SHAPES = {
    "patch16": (64, 64, 4, 128, 16, 77, 49408, 128, 2, 3),
    "patch32": (48, 96, 3, 192, 32, 77, 49408, 128, 2, 4),
}
# fp32, the same numbers computed in another order: the longest sum is an MLP's (4 * width); the logits chain
# the blocks of both towers, and relevance chains them three times (forward, backward, R = R + cam @ R).
WIDEST = 4 * max(max(shape[3], shape[7]) for shape in SHAPES.values())
BLOCKS = max(shape[2] + shape[9] for shape in SHAPES.values())
FORWARD_TOL = tolerance(torch.float32, WIDEST, BLOCKS)
TOL = tolerance(torch.float32, WIDEST, 3 * BLOCKS)

# ---------------------------------------------------------------------------------------------------------
# Worst differences, written to the terminal when the module ends (also under -q).

WORST: dict[str, float] = {}


def check(name: str, got: torch.Tensor, want: torch.Tensor, tol: float = TOL,
          scale: float | None = None) -> None:
    """max_rel_diff(got, want) < tol, or max |got - want| / scale < tol where a scale is given."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    if scale is None:
        diff = max_rel_diff(got, want)
    else:
        diff = float((got.double() - want.double()).abs().max() / scale)
    WORST[name] = max(WORST.get(name, 0.0), diff)
    assert diff < tol, f"{name}: max_rel_diff {diff:.3e} >= {tol:.2e}"


@pytest.fixture(scope="module", autouse=True)
def one_thread_then_report(request):
    # The models here are tiny: one thread is as fast, and does not slow to a crawl when the machine is busy
    # (a second thread spinning on a shared core made this file ~6x slower). Restored for other modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["", "worst max_rel_diff per reference and quantity:"]
    lines += [f"  {name:<44} {diff:.2e}" for name, diff in sorted(WORST.items())]
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n".join(lines))
    else:
        print("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------
# Fixtures

@dataclass
class Case:
    name: str
    shape: tuple
    openai: torch.nn.Module  # OpenAI's CLIP, random perturbed weights
    hf: transformers.CLIPModel  # the same weights in transformers
    model: torch.nn.Module  # mini_clip's CLIP, the same weights
    images: torch.Tensor  # (2, 3, R, R)
    tokens: torch.Tensor  # (4, 77): prompts of different lengths, one of 1 token, one filling the context

    @property
    def grid(self) -> int:
        return self.shape[1] // self.shape[4]

    @property
    def blocks(self) -> tuple[int, int]:
        return self.shape[2], self.shape[9]


@pytest.fixture(scope="module")
def cases(openai_model) -> dict[str, Case]:
    out = {}
    for index, (name, shape) in enumerate(SHAPES.items()):
        ref = openai_clip(openai_model, shape, seed=index)
        g = torch.Generator().manual_seed(10 + index)
        images = torch.randn(2, 3, shape[1], shape[1], generator=g)
        tokens = torch.cat([random_tokens(2, 77, seed=index, max_len=12),
                            random_tokens(1, 77, seed=50 + index, max_len=1),
                            full_length_tokens(1, 77, seed=index)])
        eot = tokens.argmax(-1)
        assert len(set(eot.tolist())) == len(eot) and int(eot.min()) == 2 and int(eot.max()) == 76
        out[name] = Case(name, shape, ref, hf_clip(ref.state_dict(), shape), build(ref.state_dict()), images,
                         tokens)
    return out


@pytest.fixture(params=list(SHAPES))
def case(request, cases) -> Case:
    return cases[request.param]


@pytest.fixture
def small(cases) -> Case:
    return cases["patch16"]


def middle(blocks: int) -> int:
    return blocks // 2  # 1 or 2 here: neither the first nor the last block


def assert_chefer_equal(ref: str, rel, i: int, logits, R_image, R_text, tokens, grid: int,
                        scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """mini_clip's fields for image i against a reference's (N, T, T) / (N, ctx, ctx) matrices; `scales`, the
    absolute-value matrices of signed relevance, give each comparison the scale its rounding errors have."""
    S_image, S_text = scales if scales is not None else (R_image, R_text)

    def scale(m: torch.Tensor) -> float | None:
        return float(m.abs().max()) if scales is not None else None

    check(f"{ref}: image_matrix", rel.image_matrix[i], R_image, scale=scale(S_image))
    check(f"{ref}: text_matrix", rel.text_matrix[i], R_text, scale=scale(S_text))
    check(f"{ref}: image map", rel.image[i], R_image[:, 0, 1:].reshape(-1, grid, grid),
          scale=scale(S_image[:, 0, 1:]))
    for j, e in enumerate(tokens.argmax(-1).tolist()):
        check(f"{ref}: text scores", rel.text[j][i], R_text[j, e, 1:e], scale=scale(S_text[j, e, 1:e]))
    check(f"{ref}: logits", rel.logits[i], logits)
    check(f"{ref}: probs", rel.probs[i], logits.softmax(dim=-1))


# ---------------------------------------------------------------------------------------------------------
# The references are trustworthy


def test_hf_reference_equals_openai(case):
    with torch.no_grad():
        want, _ = case.openai(case.images, case.tokens)
        got = case.hf(input_ids=case.tokens, pixel_values=case.images).logits_per_image
    check("transformers vs OpenAI: logits", got, want)
    assert float(want.std()) > 0.1  # texts and images are told apart, so the check has teeth


def test_hf_attentions_are_the_tensors_of_the_forward(small):
    """transformers 5 returns the attention probabilities that were multiplied with the values (so their
    gradients are the real ones), and hidden_states[-2] is the tensor entering the last block."""
    hf = small.hf
    entering = {}

    def keep_input(module, args, kwargs):
        entering["x"] = args[0] if args else kwargs["hidden_states"]

    hook = hf.vision_model.encoder.layers[-1].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        out = hf(input_ids=small.tokens, pixel_values=small.images[:1].repeat(len(small.tokens), 1, 1, 1),
                 output_attentions=True, output_hidden_states=True)
    finally:
        hook.remove()
    assert entering["x"] is out.vision_model_output.hidden_states[-2]
    score = out.logits_per_image.diagonal().sum()
    attentions = [*out.vision_model_output.attentions, *out.text_model_output.attentions]
    grads = torch.autograd.grad(score, attentions)
    assert all(float(g.abs().max()) > 0 for g in grads)


def test_patched_openai_equals_openai(case):
    patched = openai_keeping_probs(case.openai)
    with torch.no_grad():
        want, _ = case.openai(case.images, case.tokens)
        got, _ = patched(case.images, case.tokens)
    check("patched OpenAI vs OpenAI: logits", got, want, tol=FORWARD_TOL)
    probs = patched.transformer.resblocks[0].attn_probs
    assert probs.shape == (len(case.tokens), case.shape[8], 77, 77) and float(probs.triu(1).abs().max()) == 0


# ---------------------------------------------------------------------------------------------------------
# Chefer's method against the references


def start_pairs(case: Case) -> list[tuple[int, int]]:
    vblocks, tblocks = case.blocks
    return [(s, t) for s in (-1, 0, middle(vblocks)) for t in (-1, 0, middle(tblocks))]


def test_chefer_equals_transformers_notebook(case):
    """Every combination of start layers (-1, 0, middle) for both towers, 2 images, 4 texts."""
    for start, start_text in start_pairs(case):
        rel = relevance(case.model, case.images, case.tokens, start_layer=start, start_layer_text=start_text)
        vblocks, tblocks = case.blocks
        assert (rel.start_layer, rel.start_layer_text) == (start % vblocks, start_text % tblocks)
        assert rel.method == "chefer" and rel.signed is False
        for i, image in enumerate(case.images):
            logits, R_image, R_text = hf_interpret(case.hf, image, case.tokens, start, start_text)
            # the reference explains something: relevance beyond the identity in both towers
            eye_img, eye_txt = torch.eye(R_image.shape[-1]), torch.eye(R_text.shape[-1])
            assert float((R_image - eye_img).abs().max()) > 1e-3
            assert float((R_text - eye_txt).abs().max()) > 1e-3
            assert_chefer_equal("transformers", rel, i, logits, R_image, R_text, case.tokens, case.grid)


def test_start_layers_change_the_result(small):
    """Guards the comparison above: -1, 0 and the middle block give different matrices in both towers."""
    image = small.images[0]
    results = [hf_interpret(small.hf, image, small.tokens, s, s) for s in (-1, 0, 1)]
    for (_, a_img, a_txt), (_, b_img, b_txt) in zip(results, results[1:] + results[:1]):
        assert max_rel_diff(a_img, b_img) > 1e-3 and max_rel_diff(a_txt, b_txt) > 1e-3


def test_default_start_layer_is_the_last_block(small):
    default = relevance(small.model, small.images, small.tokens)
    last = relevance(small.model, small.images, small.tokens, start_layer=-1, start_layer_text=-1)
    vblocks, tblocks = small.blocks
    assert (default.start_layer, default.start_layer_text) == (vblocks - 1, tblocks - 1)
    check("self: default vs -1", default.image_matrix, last.image_matrix)
    check("self: default vs -1", default.text_matrix, last.text_matrix)
    # negative start layers count from the end
    rel = relevance(small.model, small.images, small.tokens, start_layer=-2, start_layer_text=-3)
    assert (rel.start_layer, rel.start_layer_text) == (vblocks - 2, tblocks - 3)
    _, R_image, R_text = hf_interpret(small.hf, small.images[1], small.tokens, vblocks - 2, tblocks - 3)
    check("transformers: image_matrix", rel.image_matrix[1], R_image)
    check("transformers: text_matrix", rel.text_matrix[1], R_text)


@pytest.mark.parametrize("starts", [(-1, -1), (0, 0), (0, -1), "middle"])
def test_chefer_equals_openai_notebook(case, starts):
    """OpenAI's model.py with stored probabilities, as the authors' notebook: 2 images, each run alone."""
    vblocks, tblocks = case.blocks
    start, start_text = (middle(vblocks), middle(tblocks)) if starts == "middle" else starts
    patched = openai_keeping_probs(case.openai)
    rel = relevance(case.model, case.images, case.tokens, start_layer=start, start_layer_text=start_text)
    for i, image in enumerate(case.images):
        logits, R_image, R_text = openai_interpret(patched, image, case.tokens, start, start_text)
        assert_chefer_equal("OpenAI", rel, i, logits, R_image, R_text, case.tokens, case.grid)


def test_single_text_equals_openai_notebook(small):
    patched = openai_keeping_probs(small.openai)
    tokens = small.tokens[:1]
    rel = relevance(small.model, small.images[1], tokens, start_layer=0, start_layer_text=0)
    logits, R_image, R_text = openai_interpret(patched, small.images[1], tokens, 0, 0)
    assert_chefer_equal("OpenAI", rel, 0, logits, R_image, R_text, tokens, small.grid)
    assert torch.allclose(rel.probs, torch.ones(1, 1))


# ---------------------------------------------------------------------------------------------------------
# The cheap path equals the straightforward one


def test_batch_of_images_equals_each_image_alone(case):
    rel = relevance(case.model, case.images, case.tokens, start_layer=0, start_layer_text=0)
    for i in range(len(case.images)):
        alone = relevance(case.model, case.images[i:i + 1], case.tokens, start_layer=0, start_layer_text=0)
        for field in ("logits", "probs", "image", "image_matrix", "text_matrix"):
            check(f"self: batch vs alone: {field}", getattr(rel, field)[i], getattr(alone, field)[0])
        for j in range(len(case.tokens)):
            check("self: batch vs alone: text", rel.text[j][i], alone.text[j][0])
        assert alone.labels == rel.labels and torch.equal(alone.tokens, rel.tokens)


def test_many_texts_equal_each_text_alone(case):
    rel = relevance(case.model, case.images, case.tokens, start_layer=1, start_layer_text=0)
    for j in range(len(case.tokens)):
        alone = relevance(case.model, case.images, case.tokens[j:j + 1], start_layer=1, start_layer_text=0)
        for field in ("logits", "image", "image_matrix", "text_matrix"):
            check(f"self: texts vs alone: {field}", getattr(rel, field)[:, j], getattr(alone, field)[:, 0])
        check("self: texts vs alone: text", rel.text[j], alone.text[0])
        assert alone.labels[0] == rel.labels[j]


# ---------------------------------------------------------------------------------------------------------
# The model is left as it was


def test_no_grad_flags_or_mode_change(small):
    model = copy.deepcopy(small.model)
    model.visual.ln_post.weight.requires_grad_(False)  # a mix of frozen and trainable parameters
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = None  # the eval pass's result, which the train pass must equal
    for training in (False, True):
        model.train(training)
        rel = relevance(model, small.images, small.tokens, start_layer=0, start_layer_text=0)
        assert all(p.grad is None for p in model.parameters())
        assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
        assert all(m.training == training for m in model.modules())
        blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
        assert all(b.attn_probs is None and not b.record for b in blocks)  # nothing of the graph is kept
        if training:  # CLIP has no dropout: train mode gives the same numbers
            check("self: train vs eval", rel.image_matrix, before.image_matrix)
        before = rel


def test_frozen_model(small):
    frozen = copy.deepcopy(small.model).requires_grad_(False)
    rel = relevance(frozen, small.images, small.tokens, start_layer=0, start_layer_text=0)
    assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    want = relevance(small.model, small.images, small.tokens, start_layer=0, start_layer_text=0)
    for field in ("logits", "image", "image_matrix", "text_matrix"):
        check(f"self: frozen vs trainable: {field}", getattr(rel, field), getattr(want, field))
    assert float(rel.image.abs().max()) > 0


def test_inside_no_grad(small):
    """Callers often wrap inference in torch.no_grad(); relevance needs its own graph regardless."""
    with torch.no_grad():
        rel = relevance(small.model, small.images, small.tokens, start_layer=0, start_layer_text=0)
    _, R_image, R_text = hf_interpret(small.hf, small.images[0], small.tokens, 0, 0)
    check("transformers: image_matrix", rel.image_matrix[0], R_image)
    check("transformers: text_matrix", rel.text_matrix[0], R_text)


# ---------------------------------------------------------------------------------------------------------
# Signs


def test_unsigned_relevance_is_never_negative(case):
    for start in (-1, 0):
        rel = relevance(case.model, case.images, case.tokens, start_layer=start, start_layer_text=start)
        for t in (rel.image, rel.image_matrix, rel.text_matrix, *rel.text):
            assert float(t.min()) >= 0


def test_signed_equals_unclamped_notebook(case):
    vblocks, tblocks = case.blocks
    for start, start_text in ((0, 0), (-1, -1), (middle(vblocks), middle(tblocks))):
        rel = relevance(case.model, case.images, case.tokens, start_layer=start, start_layer_text=start_text,
                        signed=True)
        assert rel.signed is True
        for i, image in enumerate(case.images):
            logits, R_image, R_text = hf_interpret(case.hf, image, case.tokens, start, start_text,
                                                   signed=True)
            # positive and negative terms cancel: errors are relative to the sums of their absolute values
            _, S_image, S_text = hf_interpret(case.hf, image, case.tokens, start, start_text, absolute=True)
            assert_chefer_equal("transformers signed", rel, i, logits, R_image, R_text, case.tokens,
                                case.grid, scales=(S_image, S_text))
        if start == 0:  # negative evidence survives on a random model, in both towers
            assert float(rel.image.min()) < 0 and float(rel.image_matrix.min()) < 0
            assert float(torch.cat([t.flatten() for t in rel.text]).min()) < 0
            assert float(rel.text_matrix.min()) < 0
            unsigned = relevance(case.model, case.images, case.tokens, start_layer=0, start_layer_text=0)
            assert max_rel_diff(rel.image_matrix, unsigned.image_matrix) > 1e-3


# ---------------------------------------------------------------------------------------------------------
# Baselines, each recomputed from its paper on transformers' attentions and hidden states


def prompt_positions(tokens: torch.Tensor) -> list[int]:
    return tokens.argmax(-1).tolist()  # end-of-text position e: the prompt is 1 .. e-1


@pytest.mark.parametrize("start", [None, 0])
def test_attention_baseline(case, start):
    """The start layer's block's attention (the last by default), mean over heads: class row over the
    patches, end-of-text row over the prompt's tokens."""
    rel = relevance(case.model, case.images, case.tokens, method="attention", start_layer=start,
                    start_layer_text=start)
    with torch.no_grad():
        out = case.hf(input_ids=case.tokens, pixel_values=case.images, output_attentions=True)
    block = -1 if start is None else start
    A_img = out.vision_model_output.attentions[block].mean(dim=1)  # (B, T, T)
    A_txt = out.text_model_output.attentions[block].mean(dim=1)  # (N, ctx, ctx)
    B, N, g = len(case.images), len(case.tokens), case.grid
    check("attention: image map", rel.image, A_img[:, None, 0, 1:].reshape(B, 1, g, g).expand(B, N, g, g))
    check("attention: image_matrix", rel.image_matrix, A_img[:, None].expand(B, N, *A_img.shape[1:]))
    for j, e in enumerate(prompt_positions(case.tokens)):
        check("attention: text scores", rel.text[j], A_txt[j, e, 1:e].expand(B, e - 1))
    check("attention: logits", rel.logits, out.logits_per_image)
    assert rel.text_matrix is None and rel.method == "attention"


@pytest.mark.parametrize("start", [None, 1, -1])
def test_rollout_baseline(case, start):
    rel = relevance(case.model, case.images, case.tokens, method="rollout", start_layer=start,
                    start_layer_text=start)
    first = 0 if start is None else start  # rollout's default: every block
    vblocks, tblocks = case.blocks
    assert (rel.start_layer, rel.start_layer_text) == (first % vblocks, first % tblocks)
    with torch.no_grad():
        out = case.hf(input_ids=case.tokens, pixel_values=case.images, output_attentions=True)
    R_img = rollout(out.vision_model_output.attentions, first % vblocks)  # (B, T, T)
    R_txt = rollout(out.text_model_output.attentions, first % tblocks)  # (N, ctx, ctx)
    B, N, g = len(case.images), len(case.tokens), case.grid
    check("rollout: image map", rel.image, R_img[:, None, 0, 1:].reshape(B, 1, g, g).expand(B, N, g, g))
    check("rollout: image_matrix", rel.image_matrix, R_img[:, None].expand(B, N, *R_img.shape[1:]))
    for j, e in enumerate(prompt_positions(case.tokens)):
        check("rollout: text scores", rel.text[j], R_txt[j, e, 1:e].expand(B, e - 1))
    assert rel.text_matrix is None and rel.method == "rollout"


def test_gradcam_baseline(case):
    """Grad-CAM (Selvaraju et al. 2017) on the tokens entering the last block, per (image, text) pair:
    w_c = mean over the map's tokens of d score / d x_tc, map = relu(sum_c w_c x_tc). Image: the patch
    tokens; text: the prompt's tokens 1 .. eot-1."""
    rel = relevance(case.model, case.images, case.tokens, method="gradcam")
    assert rel.image_matrix is None and rel.text_matrix is None and rel.method == "gradcam"
    N, g = len(case.tokens), case.grid
    for i, image in enumerate(case.images):
        with torch.enable_grad():
            out = case.hf(input_ids=case.tokens, pixel_values=image.unsqueeze(0).repeat(N, 1, 1, 1),
                          output_hidden_states=True)
            x = out.vision_model_output.hidden_states[-2]  # (N, T, C): image copy j, paired with text j
            t = out.text_model_output.hidden_states[-2]  # (N, ctx, C)
            gx, gt = torch.autograd.grad(out.logits_per_image.diagonal().sum(), [x, t])
        x, t = x.detach(), t.detach()
        weights = gx[:, 1:].mean(dim=1)  # (N, C)
        terms = x[:, 1:] * weights[:, None]  # (N, grid*grid, C)
        check("gradcam: image map", rel.image[i], torch.relu(terms.sum(dim=-1)).reshape(N, g, g))
        for j, e in enumerate(prompt_positions(case.tokens)):
            terms = t[j, 1:e] * gt[j, 1:e].mean(dim=0)  # (e-1, C)
            # A prompt of one or two tokens can have a score that is a near-total cancellation of its terms
            # (a score near zero from terms far from it), so the error is measured against the terms' size.
            check("gradcam: text scores (vs sum_c |w_c x_tc|)", rel.text[j][i], torch.relu(terms.sum(dim=-1)),
                  scale=float(terms.abs().sum(dim=-1).max()))
        check("gradcam: logits", rel.logits[i], out.logits_per_image[0].detach())
    assert float(rel.image.max()) > 0 and float(torch.cat([s.flatten() for s in rel.text]).max()) > 0


# ---------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("method", ["chefer", "rollout"])
def test_start_layer_out_of_range(small, method):
    vblocks, tblocks = small.blocks
    for bad in (vblocks, -vblocks - 1):
        with pytest.raises(ValueError, match=rf"start_layer {bad} .*{vblocks} blocks.*0 \.\. {vblocks - 1}"):
            relevance(small.model, small.images, small.tokens, start_layer=bad, method=method)
    text_range = rf"start_layer_text {tblocks} .*{tblocks} blocks.*0 \.\. {tblocks - 1}"
    with pytest.raises(ValueError, match=text_range):
        relevance(small.model, small.images, small.tokens, start_layer_text=tblocks, method=method)


def test_unknown_method(small):
    with pytest.raises(ValueError, match="'lrp'.*chefer.*attention.*rollout.*gradcam"):
        relevance(small.model, small.images, small.tokens, method="lrp")


@pytest.mark.parametrize("method", ["attention", "rollout", "gradcam"])
def test_signed_needs_chefer(small, method):
    with pytest.raises(ValueError, match=f"signed.*chefer.*{method}"):
        relevance(small.model, small.images, small.tokens, method=method, signed=True)


@pytest.mark.parametrize("parameter", ["visual.proj", "transformer.resblocks.0.mlp.c_fc.weight",
                                       "visual.transformer.resblocks.0.attn.in_proj_weight"])
def test_nan_weights(small, parameter):
    model = copy.deepcopy(small.model)
    with torch.no_grad():
        model.get_parameter(parameter).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="not finite"):
        relevance(model, small.images, small.tokens, start_layer=1)


# ---------------------------------------------------------------------------------------------------------
# Shapes and inputs


@pytest.mark.parametrize("method", ["chefer", "attention", "rollout", "gradcam"])
@pytest.mark.parametrize("images", [1, 3])
def test_shapes(small, method, images):
    g = torch.Generator().manual_seed(images)
    R = small.shape[1]
    batch = torch.randn(images, 3, R, R, generator=g)
    rel = relevance(small.model, batch, small.tokens, method=method)
    N, T, grid = len(small.tokens), small.grid ** 2 + 1, small.grid
    lengths = [e - 1 for e in prompt_positions(small.tokens)]
    assert rel.logits.shape == rel.probs.shape == (images, N)
    assert torch.allclose(rel.probs.sum(dim=-1), torch.ones(images))
    assert rel.image.shape == (images, N, grid, grid)
    assert [tuple(t.shape) for t in rel.text] == [(images, n) for n in lengths]
    assert [len(labels) for labels in rel.labels] == lengths
    assert torch.equal(rel.tokens, small.tokens)
    if method == "gradcam":
        assert rel.image_matrix is None
    else:
        assert rel.image_matrix.shape == (images, N, T, T)
    if method == "chefer":
        assert rel.text_matrix.shape == (images, N, 77, 77)
    else:
        assert rel.text_matrix is None
    tensors = [rel.logits, rel.probs, rel.image, *rel.text] + [m for m in (rel.image_matrix, rel.text_matrix)
                                                               if m is not None]
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad for t in tensors)


def test_single_image_without_batch_dimension(small):
    rel = relevance(small.model, small.images[1], small.tokens)
    want = relevance(small.model, small.images[1:2], small.tokens)
    assert rel.image.shape == (1, len(small.tokens), small.grid, small.grid)
    for field in ("logits", "probs", "image", "image_matrix", "text_matrix"):
        check(f"self: (3,R,R) vs (1,3,R,R): {field}", getattr(rel, field), getattr(want, field))


def test_strings_equal_token_ids(small, openai_tokenizer):
    texts = ["a photo of a dog", "a diagram", "Two cats, sleeping on a red sofa!"]
    tok = openai_tokenizer.SimpleTokenizer()
    ids = [tok.encode(text) for text in texts]
    tokens = torch.zeros(len(texts), 77, dtype=torch.long)
    for row, piece in zip(tokens, ids):
        row[: len(piece) + 2] = torch.tensor([SOT, *piece, EOT])
    from_strings = relevance(small.model, small.images, texts, start_layer=0)
    from_tokens = relevance(small.model, small.images, tokens, start_layer=0)
    assert torch.equal(from_strings.tokens, tokens)
    for field in ("logits", "probs", "image", "image_matrix", "text_matrix"):
        check(f"self: strings vs ids: {field}", getattr(from_strings, field), getattr(from_tokens, field))
    for a, b in zip(from_strings.text, from_tokens.text):
        check("self: strings vs ids: text", a, b)
    want_labels = [[tok.decoder[i].removesuffix("</w>") for i in piece] for piece in ids]
    assert from_strings.labels == from_tokens.labels == want_labels
    one = relevance(small.model, small.images, "a diagram", start_layer=0)  # a single string
    check("self: strings vs ids: image", one.image[:, 0], from_tokens.image[:, 1])


def test_long_text_needs_truncate(small):
    text = " ".join(["dog"] * 100)
    with pytest.raises(ValueError, match="truncate"):
        relevance(small.model, small.images, [text])
    rel = relevance(small.model, small.images, [text], truncate=True)
    assert int(rel.tokens[0, -1]) == EOT and rel.text[0].shape == (2, 75)


def test_inference_mode_is_refused_with_advice(small):
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        relevance(small.model, small.images, small.tokens)


def test_tokens_without_end_of_text_are_refused(small):
    tokens = small.tokens.clone()
    tokens[0][tokens[0] == 49407] = 5
    with pytest.raises(ValueError, match="end-of-text"):
        relevance(small.model, small.images, tokens)


def test_wrong_image_size_names_the_expected_size(small):
    size = small.model.visual.input_resolution
    expected = f"\\(B, 3, {size}, {size}\\).*got \\(1, 3, {size + 32}, {size + 32}\\)"
    with pytest.raises(ValueError, match=expected):
        relevance(small.model, torch.zeros(1, 3, size + 32, size + 32), small.tokens)
