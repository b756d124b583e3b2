"""The CLIP zoo: OpenCLIP and Hugging Face ViT checkpoints load with their own library's numbers, or are
refused.

References (independent of mini_clip): OpenCLIP's own model code (`open-clip-torch`, test-only, built from
its config JSONs shrunk to 1-2 blocks with the real head width, activation, MLP ratio and patch), OpenCLIP's
own image transform, and transformers' CLIPModel. Chefer's maps are computed on OpenCLIP's model with the
notebook's literal algorithm (reference.chefer.chefer_literal) from attention probabilities exposed test-side.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from test_download import server  # noqa: F401 (the loopback HTTP server fixture)

import mini_clip
from mini_clip import pretrained, zoo
from mini_clip.heatmap import grid_to_image
from mini_clip.image import Preprocessing, crop_geometry
from mini_clip.weights import WeightsError

from reference import max_rel_diff, perturb_, random_tokens
from reference.chefer import chefer_literal

REPO = Path(__file__).resolve().parents[1]

TOL = 1e-5  # fp32 logits, relative: the same numbers in another order
CHEFER_TOL = 1e-4  # as test_relevance: gradients through two implementations
# One per supported family: GELU and QuickGELU, head widths 64/80/88/104/112, MLP ratios 4/4.36/4.92/8.57,
# 240/378 px.
FAMILIES = ["ViT-M-32-alt", "ViT-B-32", "ViT-B-16-quickgelu", "ViT-B-16-plus-240", "ViT-H-14",
            "ViT-H-14-378-quickgelu", "ViT-g-14", "ViT-bigG-14", "ViT-e-14"]
MEASURED: dict[str, float] = {}


def shrunk(open_clip, arch: str) -> dict:
    """open_clip's config of `arch`, shrunk: 2 image blocks of 2 heads of the real head width, 1 text block,
    3 x 3 patches of the real patch size; activation, head width and MLP ratio as they are."""
    cfg = copy.deepcopy(open_clip.get_model_config(arch))
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    vision.update(layers=2, width=2 * vision.get("head_width", 64), image_size=3 * vision["patch_size"])
    text.update(layers=1, width=128, heads=2)
    cfg["embed_dim"] = 48
    return cfg


def open_clip_model(open_clip, cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    return perturb_(open_clip.model.CLIP(**cfg), seed).eval()


def open_clip_logits(model, images, tokens) -> torch.Tensor:
    with torch.no_grad():
        a = model.encode_image(images, normalize=True)
        b = model.encode_text(tokens, normalize=True)
        return model.logit_scale.exp() * a @ b.t()


def hub_folder(path, model, cfg: dict, preprocess_cfg: dict | None = None):
    """An OpenCLIP hub folder as open_clip's push_to_hf_hub writes it."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / zoo.WEIGHTS_NAMES[0]))
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess_cfg or {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (path / zoo.CONFIG_NAME).write_text(json.dumps(config))
    return path


def inputs(cfg: dict, n_images: int = 2, n_texts: int = 3):
    size = cfg["vision_cfg"]["image_size"]
    images = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(1))
    return images, random_tokens(n_texts, 77, seed=2, max_len=12)


@pytest.fixture(scope="module", autouse=True)
def one_thread_then_report(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, and steady on a busy machine
    yield
    torch.set_num_threads(threads)
    if MEASURED:
        lines = "\n".join(f"  {k:<28} {v:.1e}" for k, v in sorted(MEASURED.items()))
        print(f"\ntest_zoo: max relative difference, fp32:\n{lines}")


def load_quietly(path, **kwargs):
    """mini_clip.load, asserting that no warning is given (the file states its architecture)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return mini_clip.load(path, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# The table is OpenCLIP's

def test_arch_table_is_open_clips_configs(open_clip):
    for name, cfg in zoo.ARCHS.items():
        theirs = open_clip.get_model_config(name)
        assert theirs is not None, name
        assert zoo.config_from_open_clip(theirs) == zoo.config_from_open_clip(cfg), name
    ours = zoo.arch_config("ViT-H-14")
    assert (ours.vision_heads, ours.activation) == (16, "gelu")
    assert zoo.arch_config("ViT-bigG-14").vision_mlp_width == int(1664 * 4.9231)


# ---------------------------------------------------------------------------------------------------------
# Logits and Chefer maps equal OpenCLIP's

def attention_keeping_probs(self, q_x, k_x=None, v_x=None, attn_mask=None):
    """open_clip's ResidualAttentionBlock.attention (batch-first nn.MultiheadAttention) written out, keeping
    the probabilities it multiplies with the values, in the graph."""
    B, T, C = q_x.shape
    heads = self.attn.num_heads
    hs = C // heads
    q, k, v = F.linear(q_x, self.attn.in_proj_weight, self.attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(B, T, heads, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    scores = (q * hs ** -0.5) @ k.transpose(-2, -1)
    if attn_mask is not None:  # open_clip's causal text mask: 0 on and below the diagonal, -inf above
        scores = scores + attn_mask.to(scores.dtype)[:T, :T]
    self.attn_probs = scores.softmax(dim=-1)
    y = (self.attn_probs @ v).transpose(1, 2).reshape(B, T, C)
    return self.attn.out_proj(y)


def open_clip_interpret(model, image, tokens):
    """One image, N texts, every block explained: (R_image (N, T, T), R_text (N, ctx, ctx))."""
    patched = copy.deepcopy(model)
    blocks = [*patched.visual.transformer.resblocks, *patched.transformer.resblocks]
    for block in blocks:
        block.attention = types.MethodType(attention_keeping_probs, block)
    n = tokens.shape[0]
    with torch.enable_grad():
        a = patched.encode_image(image[None].repeat(n, 1, 1, 1), normalize=True)
        b = patched.encode_text(tokens, normalize=True)
        score = (patched.logit_scale.exp() * (a * b).sum(-1)).sum()  # image copy j with text j
        R_image = chefer_literal(score, [b.attn_probs for b in patched.visual.transformer.resblocks], 0)
        R_text = chefer_literal(score, [b.attn_probs for b in patched.transformer.resblocks], 0)
    return R_image, R_text


@pytest.mark.parametrize("arch", FAMILIES)
def test_open_clip_hub_folder_equals_open_clip(open_clip, arch, tmp_path):
    cfg = shrunk(open_clip, arch)
    reference = open_clip_model(open_clip, cfg)
    folder = hub_folder(tmp_path / "hub", reference, cfg)
    images, tokens = inputs(cfg)
    want = open_clip_logits(reference, images, tokens)
    assert float(want.std()) > 0.1  # images and texts told apart: the comparison has teeth
    for path in (folder, folder / zoo.WEIGHTS_NAMES[0]):  # the folder, or the weights file inside it
        model, prep = load_quietly(path)
        with torch.no_grad():
            got = model(images, tokens)[0]
        MEASURED[arch] = max(MEASURED.get(arch, 0.0), max_rel_diff(got, want))
        assert max_rel_diff(got, want) < TOL, arch
    assert model.config.activation == ("quick_gelu" if cfg.get("quick_gelu") else "gelu")
    assert model.preprocessing == Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3)
    # Chefer's maps, every block of both towers, against the notebook's algorithm on open_clip's model
    rel = mini_clip.relevance(model, images[:1], tokens, start_layer=0, start_layer_text=0)
    R_image, R_text = open_clip_interpret(reference, images[0], tokens)
    assert float((R_image - torch.eye(R_image.shape[-1])).abs().max()) > 1e-3
    assert max_rel_diff(rel.image_matrix[0], R_image) < CHEFER_TOL
    assert max_rel_diff(rel.text_matrix[0], R_text) < CHEFER_TOL


def test_openai_rules_would_be_wrong_on_these(open_clip, tmp_path):
    """Guards the test above: read by OpenAI's rules (what a bare file gets), a GELU, head-80 model's
    logits differ from open_clip's; stated, they do not."""
    cfg = shrunk(open_clip, "ViT-H-14")
    reference = open_clip_model(open_clip, cfg)
    bare = tmp_path / "h14.pt"
    torch.save(reference.state_dict(), bare)
    images, tokens = inputs(cfg)
    with pytest.raises(WeightsError, match="not a multiple of 64.*arch="):  # 160 wide: no OpenAI rule
        mini_clip.load(bare)
    cfg = shrunk(open_clip, "ViT-B-32")
    reference = open_clip_model(open_clip, cfg)
    torch.save(reference.state_dict(), bare)
    images, tokens = inputs(cfg)
    with pytest.warns(UserWarning, match="OpenAI's rules.*arch="):
        model, _ = mini_clip.load(bare)
    with torch.no_grad():
        assert max_rel_diff(model(images, tokens)[0], open_clip_logits(reference, images, tokens)) > 1e-3


def test_arch_states_a_bare_state_dict(open_clip, tmp_path, monkeypatch):
    """arch= (a shrunk table entry) reads a bare OpenCLIP state dict exactly, warning only that its
    preprocessing is assumed (OpenCLIP's tags differ there); a converted file then states both; an arch that
    the tensors do not fit is refused."""
    cfg = shrunk(open_clip, "ViT-g-14")
    monkeypatch.setitem(zoo.ARCHS, "ViT-g-14-tiny", cfg)
    reference = open_clip_model(open_clip, cfg)
    bare = tmp_path / "g14.bin"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, bare)
    images, tokens = inputs(cfg)
    want = open_clip_logits(reference, images, tokens)
    assumed = "states the architecture but not the images' preprocessing"
    with pytest.warns(UserWarning, match=assumed) as caught:
        model, _ = mini_clip.load(bare, arch="ViT-g-14-tiny")  # the architecture is stated: no other warning
    assert len(caught) == 1
    with torch.no_grad():
        assert max_rel_diff(model(images, tokens)[0], want) < TOL
    converted = tmp_path / "g14.safetensors"
    for arch, expect in ((), "--arch"), (("--arch", "ViT-g-14"), "does not fit"):  # MLP 4.36x: no OpenAI rule
        command = [sys.executable, str(REPO / "scripts" / "convert.py"), str(bare), str(converted), *arch]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and expect in result.stderr and not converted.exists(), result.stderr
    mini_clip.save(model, converted)
    again, _ = load_quietly(converted)
    with torch.no_grad():
        assert max_rel_diff(again(images, tokens)[0], want) < TOL
    with pytest.raises(WeightsError, match="does not fit"):
        mini_clip.load(bare, arch="ViT-g-14")  # the real ViT-g-14: 40 blocks, width 1408
    with pytest.raises(WeightsError, match="unknown architecture 'ViT-Q-1'; valid: ViT-S-32-alt"):
        mini_clip.load(bare, arch="ViT-Q-1")
    with pytest.raises(WeightsError, match="differs from arch='ViT-B-32'"):
        mini_clip.load(converted, arch="ViT-B-32")


def test_relevance_methods_and_fp16_on_a_gelu_head80_model(open_clip, tmp_path):
    cfg = shrunk(open_clip, "ViT-H-14")
    folder = hub_folder(tmp_path / "hub", open_clip_model(open_clip, cfg), cfg)
    images, tokens = inputs(cfg, 1, 2)
    model, _ = load_quietly(folder)
    for method in ("chefer", "attention", "rollout", "gradcam"):
        rel = mini_clip.relevance(model, images, tokens, method=method)
        assert rel.image.shape == (1, 2, 3, 3) and torch.isfinite(rel.image).all()
    half, _ = load_quietly(folder, dtype=torch.float16)
    with torch.no_grad():
        assert max_rel_diff(half(images, tokens)[0].float(), model(images, tokens)[0]) < 2e-2


# ---------------------------------------------------------------------------------------------------------
# Preprocessing travels with the weights

@pytest.mark.parametrize("pp", [{"resize_mode": "squash", "interpolation": "bicubic"},
                                {"resize_mode": "shortest", "interpolation": "bilinear",
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}])
def test_preprocessing_equals_open_clips_transform(open_clip, pp, tmp_path):
    cfg = shrunk(open_clip, "ViT-B-32")
    folder = hub_folder(tmp_path / "hub", open_clip_model(open_clip, cfg), cfg, pp)
    model, prep = load_quietly(folder)
    size = cfg["vision_cfg"]["image_size"]
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 150, 3), dtype=np.uint8))
    transform = open_clip.image_transform(size, is_train=False, mean=pp.get("mean"), std=pp.get("std"),
                                          resize_mode=pp["resize_mode"], interpolation=pp["interpolation"])
    theirs = transform(photo)
    assert torch.allclose(prep(photo), theirs, atol=1e-5)
    # recorded on save, read back on load; the relevance API preprocesses with it too
    mini_clip.save(model, tmp_path / "m.safetensors")
    again, prep_again = load_quietly(tmp_path / "m.safetensors")
    assert again.preprocessing == model.preprocessing and torch.equal(prep_again(photo), prep(photo))
    rel = mini_clip.relevance(again, photo, ["a photo"])
    assert torch.equal(rel.logits, mini_clip.relevance(again, prep(photo)[None], ["a photo"]).logits)


def test_squash_geometry_covers_the_whole_photo():
    g = crop_geometry(300, 100, 30, "squash")
    assert g.crop_box() == (0.0, 0.0, 300.0, 100.0)
    grid = np.arange(9, dtype=np.float64).reshape(3, 3)
    values, inside = grid_to_image(grid, g, smooth=False)
    assert inside.all()  # nothing of the photo is outside what the model saw
    # anisotropic: each cell is 100 x 33.3 pixels of the photo
    assert values[0, 0] == 0 and values[0, 99] == 0 and values[0, 100] == 1 and values[99, 299] == 8
    assert values[33, 0] == 3
    _, shortest = grid_to_image(grid, crop_geometry(300, 100, 30), smooth=False)
    assert not shortest.all()  # OpenAI's centre crop leaves the sides out


def test_old_files_keep_openais_meaning(tiny_weights):
    """A file written before these fields existed (its metadata config without them) loads as before."""
    from safetensors import safe_open
    with safe_open(str(tiny_weights), framework="pt") as f:
        fields = json.loads(f.metadata()["config"])
    old = {k: v for k, v in fields.items() if k not in ("activation", "layer_norm_eps", "vision_mlp_width",
                                                       "transformer_mlp_width")}
    config = mini_clip.CLIPConfig.from_dict(old)
    assert (config.activation, config.layer_norm_eps, config.vision_mlp_width) == ("quick_gelu", 1e-5,
                                                                                    4 * config.vision_width)
    assert Preprocessing.from_json(None) == Preprocessing(mean=mini_clip.image.MEAN, std=mini_clip.image.STD)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face

def hf_dir(path, config: dict, preprocessor: dict | None = None):
    import transformers
    torch.manual_seed(0)
    hf = perturb_(transformers.CLIPModel(transformers.CLIPConfig(**config)).eval(), norm="norm")
    hf.save_pretrained(path)
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return hf


HF_CONFIG = dict(
    projection_dim=40,
    text_config=dict(vocab_size=49408, hidden_size=128, intermediate_size=300, num_attention_heads=2,
                     num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-6),
    vision_config=dict(hidden_size=160, intermediate_size=500, num_attention_heads=2, num_hidden_layers=2,
                       image_size=48, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6))


def test_hugging_face_gelu_head80_eps_mlp_equal_transformers(tmp_path):
    hf = hf_dir(tmp_path / "hf", HF_CONFIG, {"size": {"height": 48, "width": 48}, "do_center_crop": False,
                                            "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    model, _ = load_quietly(tmp_path / "hf")
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    tokens = random_tokens(3, 77, seed=2, max_len=12)
    with torch.no_grad():
        want = hf(input_ids=tokens, pixel_values=images).logits_per_image
        got = model(images, tokens)[0]
    MEASURED["HF CLIPModel gelu/80/1e-6"] = max_rel_diff(got, want)
    assert float(want.std()) > 0.1 and max_rel_diff(got, want) < TOL
    config = model.config
    assert (config.vision_heads, config.layer_norm_eps, config.vision_mlp_width) == (2, 1e-6, 500)
    assert model.preprocessing.resize == "squash" and model.preprocessing.mean == (0.5, 0.5, 0.5)


# ---------------------------------------------------------------------------------------------------------
# Refusals: one clear line, in the API and the CLI

def _base_sd(open_clip) -> dict:
    cfg = shrunk(open_clip, "ViT-B-32-quickgelu")
    return {k: v.clone() for k, v in open_clip_model(open_clip, cfg).state_dict().items()}, cfg


def refused_cases(open_clip, root) -> dict:
    """name -> (path, what the one line must say); every file crafted here."""
    sd, cfg = _base_sd(open_clip)
    cases = {}

    def bare(name, tensors, expect):
        torch.save(tensors, root / f"{name}.pt")
        cases[name] = (root / f"{name}.pt", expect)

    trunk = {k: v for k, v in sd.items() if not k.startswith("visual.")}
    trunk.update({f"visual.trunk.blocks.{i}.attn.qkv.weight": torch.zeros(3, 3) for i in range(40)})
    bare("timm", trunk, "a timm image tower")
    bare("attn_pool", {**sd, "visual.attn_pool.query": torch.zeros(4, 4)}, "attentional pooling")
    bare("layer_scale", {**sd, "visual.transformer.resblocks.0.ls_1.gamma": torch.zeros(128)}, "layer scale")
    bare("no_ln_pre", {k: v for k, v in sd.items() if "ln_pre" not in k}, "no ln_pre")
    bare("vocabulary", {**sd, "token_embedding.weight": torch.zeros(1000, 128)},
         "vocabulary has 1000 tokens")
    bare("mlp", {**sd, "visual.transformer.resblocks.0.mlp.c_fc.weight": torch.zeros(300, 128)},
         "MLP width 300 is not 4 x")
    for name, edit, expect in (
            ("oc_timm", {"vision_cfg": {"timm_model_name": "eva02_base"}}, "a timm image tower"),
            ("oc_worldwide", {"text_cfg": {"vocab_size": 901629, "hf_tokenizer_name": "facebook/xlm-v-base",
                                           "pool_type": "eos", "eos_id": 2}}, "another tokenizer"),
            ("oc_clipa", {"vision_cfg": {"no_ln_pre": True, "pool_type": "avg"}}, "no ln_pre"),
            ("oc_coca", {"multimodal_cfg": {"layers": 12}, "vision_cfg": {"attentional_pool": True}},
             "CoCa's text decoder")):
        c = copy.deepcopy(cfg)
        for part, fields in edit.items():
            merge = isinstance(c.get(part), dict) and part != "multimodal_cfg"
            c[part] = {**c[part], **fields} if merge else fields
        folder = root / name
        folder.mkdir()
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / zoo.WEIGHTS_NAMES[0]))
        (folder / zoo.CONFIG_NAME).write_text(json.dumps({"model_cfg": c}))
        cases[name] = (folder, expect)
    for name, edit, expect in (("hf_metaclip_2", {"model_type": "metaclip_2"}, "model_type is 'metaclip_2'"),
                               ("hf_siglip", {"model_type": "siglip"}, "model_type is 'siglip'"),
                               ("hf_eos", {"text_config": {**HF_CONFIG["text_config"], "eos_token_id": 1}},
                                "eos_token_id is 1")):
        folder = root / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")  # never read: the config is refused first
        (folder / "config.json").write_text(json.dumps({**HF_CONFIG, "model_type": "clip", **edit}))
        cases[name] = (folder, expect)
    return cases


def test_refused_families_api_and_cli(open_clip, tmp_path):
    cases = refused_cases(open_clip, tmp_path)
    for name, (path, expect) in cases.items():
        with pytest.raises(WeightsError) as e, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a bare file is refused after the OpenAI-rules warning
            mini_clip.load(path)
        message = str(e.value)
        assert expect in message, (name, message)
        assert "\n" not in message and len(message) < 700, (name, message)
        assert message.count(str(path)) <= 1, (name, message)  # the path once
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), "red").save(photo)
    script = ("import contextlib, io, json, sys\nfrom mini_clip.explain import main\nout = {}\n"
              "for name, path in json.loads(sys.argv[1]).items():\n"
              "    err = io.StringIO()\n"
              "    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
              f"        rc = main([{str(photo)!r}, '--text', 'a dog', '--weights', path, '--out', "
              f"{str(tmp_path / 'out')!r}])\n"
              "    out[name] = [rc, err.getvalue()]\n"
              "print(json.dumps(out))\n")
    paths = json.dumps({k: str(p) for k, (p, _) in cases.items()})
    result = subprocess.run([sys.executable, "-c", script, paths], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, (rc, err) in json.loads(result.stdout).items():
        assert rc == 1 and cases[name][1] in err, (name, rc, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
    assert not (tmp_path / "out").exists()  # nothing written


# ---------------------------------------------------------------------------------------------------------
# Named OpenCLIP downloads, on the loopback server

def test_named_open_clip_download(open_clip, tmp_path, monkeypatch, server):  # noqa: F811
    cfg = shrunk(open_clip, "ViT-H-14")
    monkeypatch.setitem(zoo.ARCHS, "ViT-H-14-tiny", cfg)
    inception = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3)
    monkeypatch.setitem(pretrained.OPENCLIP_MODELS, "ViT-H-14-tiny/test",
                        ("laion/tiny", "ViT-H-14-tiny", inception))
    monkeypatch.delenv("MINI_CLIP_OFFLINE", raising=False)
    reference = open_clip_model(open_clip, cfg)
    hub = hub_folder(tmp_path / "hub", reference, cfg)
    served = "/laion/tiny/resolve/main/open_clip_model.safetensors"
    server.files[served] = (hub / zoo.WEIGHTS_NAMES[0]).read_bytes()
    path = pretrained.fetch("ViT-H-14-tiny/test", tmp_path / "cache", server.url, progress=False)
    assert path.name == "ViT-H-14-tiny-test.safetensors"
    model, _ = load_quietly(path)  # the converted file states the architecture and the preprocessing
    images, tokens = inputs(cfg)
    with torch.no_grad():
        assert max_rel_diff(model(images, tokens)[0], open_clip_logits(reference, images, tokens)) < TOL
    assert model.preprocessing == inception and model.config.activation == "gelu"
    # a wrong file (another architecture) is refused by its structure, and not converted
    other = hub_folder(tmp_path / "other", open_clip_model(open_clip, shrunk(open_clip, "ViT-B-32")),
                       shrunk(open_clip, "ViT-B-32"))
    server.files[served] = (other / zoo.WEIGHTS_NAMES[0]).read_bytes()
    with pytest.raises(pretrained.DownloadError, match="is not ViT-H-14-tiny/test"):
        pretrained.fetch("ViT-H-14-tiny/test", tmp_path / "cache2", server.url, progress=False)
    assert not (tmp_path / "cache2" / "ViT-H-14-tiny-test.safetensors").exists()
