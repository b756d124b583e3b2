"""Checkpoint formats, strict loading, damaged files and crafted pickles.

Every format is written by independent code (torch.save of OpenAI's model, OpenAI's convert_weights,
torch.jit.trace, transformers' save_pretrained) and the loaded model's logits are compared with those of the
model that wrote it, computed by OpenAI's code or by transformers.
"""
import builtins
import copy
import dataclasses
import io
import json
import os
import pickle
import shutil
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

import mini_clip
from mini_clip import WeightsError, files
from mini_clip.weights import build, read_checkpoint

from reference import SHAPES, max_rel_diff, openai_clip, random_tokens, tolerance

# torch 2.13 deprecates torch.jit.load, which the tests use only as the independent reader of an archive;
# the random-file test feeds torch a pickle protocol header it warns about.
# Bare state dicts warn that they are read by OpenAI's rules (tested in test_hostile_weights.py).
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*states no architecture:UserWarning")]

SHAPE = SHAPES[0]
RESOLUTION = SHAPE[1]
# fp32 logits computed in another order: the longest sum is an MLP's (4 * width), both towers' blocks add up
TOL = tolerance(torch.float32, 4 * max(SHAPE[3], SHAPE[7]), SHAPE[2] + SHAPE[9])


@pytest.fixture(scope="module")
def ref(openai_model):
    return openai_clip(openai_model, SHAPE, seed=11)


@pytest.fixture(scope="module")
def inputs():
    images = torch.randn(3, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(5))
    tokens = torch.cat([random_tokens(3, seed=4), random_tokens(1, seed=9, max_len=2)])
    return images, tokens


@pytest.fixture(scope="module")
def ref_logits(ref, inputs):
    with torch.no_grad():
        return ref(*inputs)[0]


@pytest.fixture(scope="module")
def ref16(openai_model, ref):
    """OpenAI's model after OpenAI's convert_weights (fp16 linear/conv/attention/projection weights)."""
    model = copy.deepcopy(ref)
    openai_model.convert_weights(model)
    assert model.visual.conv1.weight.dtype == torch.float16 and model.ln_final.weight.dtype == torch.float32
    return model


@pytest.fixture(scope="module")
def ref16_logits(openai_model, ref16, inputs, ref_logits):
    """Reference for fp16 files: a fresh fp32 OpenAI CLIP holding the fp16 values (load_state_dict
    upcasts)."""
    torch.manual_seed(0)
    fp32 = openai_model.CLIP(*SHAPE).eval()
    fp32.load_state_dict(ref16.state_dict())
    assert fp32.visual.conv1.weight.dtype == torch.float32
    with torch.no_grad():
        logits = fp32(*inputs)[0]
    assert not torch.equal(logits, ref_logits)  # the fp16 rounding is visible, so the two references differ
    return logits


# OpenAI's published archives also hold these three integers as tensors (its build_model deletes them).
NOT_WEIGHTS = {"input_resolution": RESOLUTION, "context_length": 77, "vocab_size": 49408}


def as_published(model):
    """A copy of OpenAI's model carrying the three integer buffers of OpenAI's published archives."""
    model = copy.deepcopy(model)
    for name, value in NOT_WEIGHTS.items():
        model.__dict__.pop(name, None)  # plain int attributes in today's model.py
        model.register_buffer(name, torch.tensor(value))
    return model


@pytest.fixture(scope="module")
def torchscript_files(tmp_path_factory, ref, ref16, inputs):
    """{"fp32": path, "fp16": path}: traced archives; the fp16 one laid out as OpenAI publishes its models."""
    folder = tmp_path_factory.mktemp("torchscript")
    images, tokens = inputs
    files = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings
        for name, model, pixels in (("fp32", ref, images), ("fp16", as_published(ref16), images.half())):
            # check_trace off: OpenAI's blocks reassign self.attn_mask on first call, so re-traces differ
            traced = torch.jit.trace(model, (pixels, tokens), check_trace=False)
            files[name] = folder / f"ViT-{name}.pt"
            torch.jit.save(traced, str(files[name]))
    return files


def forbid(*_args, **_kwargs):
    raise AssertionError("mini_clip must read this file without torch.load / torch.jit.load")


def check_logits(path, inputs, want, label):
    """mini_clip.load(path) gives `want` as logits_per_image on `inputs`, within TOL relative."""
    model, preprocess = mini_clip.load(path)
    images, tokens = inputs
    with torch.no_grad():
        got = model(images, tokens)[0]
    d = max_rel_diff(got, want)
    print(f"\n{label}: max rel diff to reference {d:.2e}")
    assert d < TOL
    assert model.config.image_resolution == RESOLUTION and not model.training
    # built on the meta device, then assigned: every parameter real and trainable, as a fresh model's
    assert all(not p.is_meta and p.requires_grad for p in model.parameters())
    assert preprocess(Image.new("RGB", (30, 20))).shape == (3, RESOLUTION, RESOLUTION)
    return model


# ---------------------------------------------------------------------------------------------------------
# Formats


def test_fp32_state_dict(tmp_path, ref, inputs, ref_logits):
    path = tmp_path / "fp32.pt"
    torch.save(ref.state_dict(), path)
    check_logits(path, inputs, ref_logits, "fp32 state dict")


def test_fp16_state_dict(tmp_path, ref16, inputs, ref16_logits):
    path = tmp_path / "fp16.pt"
    torch.save(ref16.state_dict(), path)
    model = check_logits(path, inputs, ref16_logits, "fp16 state dict")
    assert model.dtype == torch.float32  # loaded in fp32 by default


@pytest.mark.parametrize("wrap", ["openclip_module_prefix", "state_dict_only"])
def test_openclip_style(tmp_path, ref, inputs, ref_logits, wrap):
    sd = ref.state_dict()
    if wrap == "openclip_module_prefix":  # as OpenCLIP writes checkpoints trained with DDP
        obj = {"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in sd.items()}}
    else:
        obj = {"state_dict": sd}
    path = tmp_path / "epoch_3.pt"
    torch.save(obj, path)
    check_logits(path, inputs, ref_logits, f"OpenCLIP {wrap}")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torchscript_archive_read_without_running_it(monkeypatch, torchscript_files, inputs, ref_logits,
                                                      ref16_logits, precision):
    path = torchscript_files[precision]
    jit_state = torch.jit.load(str(path)).state_dict()  # the independent reading of the same archive
    with monkeypatch.context() as m:
        for owner, name in ((torch, "load"), (torch.jit, "load"), (torch._C, "import_ir_module"),
                            (torch._C, "import_ir_module_from_buffer")):
            m.setattr(owner, name, forbid)
        sd, config, _ = read_checkpoint(path)
        want = ref_logits if precision == "fp32" else ref16_logits
        check_logits(path, inputs, want, f"TorchScript {precision}")
    if precision == "fp16":
        assert sd["visual.conv1.weight"].dtype == torch.float16
        assert all(int(jit_state.pop(k)) == v for k, v in NOT_WEIGHTS.items())  # present, and not weights
    assert set(sd) == set(jit_state)
    for k, v in jit_state.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k


def test_torchscript_archive_traced_output_is_openais(torchscript_files, ref, inputs, ref_logits):
    """Sanity of the fixture: the fp32 archive computes OpenAI's logits when run by torch.jit."""
    with torch.no_grad():
        out = torch.jit.load(str(torchscript_files["fp32"]))(*inputs)[0]
    assert max_rel_diff(out, ref_logits) < TOL


# ---------------------------------------------------------------------------------------------------------
# Hugging Face


HF_TEXT = dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2,
               max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", eos_token_id=49407)
HF_VISION = dict(hidden_size=96, intermediate_size=384, num_attention_heads=4, num_hidden_layers=2,
                 image_size=64, patch_size=16, hidden_act="quick_gelu")  # heads 4 and 2, not width // 64 = 1
HF_TOL = tolerance(torch.float32, 384, 2 + 2)  # the MLP's 4 * 96, two blocks per tower


@pytest.fixture(scope="module")
def hf(tmp_path_factory, inputs):
    """A random CLIPModel saved as safetensors and as pytorch_model.bin, with transformers' own logits."""
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(text_config=HF_TEXT, vision_config=HF_VISION, projection_dim=48)
    torch.manual_seed(21)
    model = transformers.CLIPModel(config)
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # layer_norm1/2, pre_layrnorm, post_layernorm, final_layer_norm
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(3.0)
        model.logit_scale.fill_(4.0)
    root = tmp_path_factory.mktemp("hf")
    st, bin_ = root / "safetensors", root / "bin"
    model.save_pretrained(st)
    assert (st / "model.safetensors").exists()
    # transformers 5 writes safetensors even with safe_serialization=False: write the .bin layout by hand
    bin_.mkdir()
    shutil.copy(st / "config.json", bin_ / "config.json")
    torch.save(model.state_dict(), bin_ / "pytorch_model.bin")

    reference = transformers.CLIPModel.from_pretrained(st, attn_implementation="eager").eval()
    for k, v in model.state_dict().items():  # transformers read back exactly what it wrote
        assert torch.equal(reference.state_dict()[k], v), k
    tokens = inputs[1]
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        logits = reference(input_ids=tokens, pixel_values=images).logits_per_image
    return {"safetensors": st, "bin": bin_, "images": images, "tokens": tokens, "logits": logits}


@pytest.mark.parametrize("layout", ["safetensors", "bin"])
def test_hugging_face_directory(hf, layout):
    model, _ = mini_clip.load(hf[layout])
    with torch.no_grad():
        got = model(hf["images"], hf["tokens"])[0]
    d = max_rel_diff(got, hf["logits"])
    print(f"\nHugging Face {layout}: max rel diff to transformers {d:.2e}")
    assert d < HF_TOL
    assert model.config.vision_heads == 4 and model.config.transformer_heads == 2


def test_hugging_face_head_count_matters(hf):
    """Guard for the test above: with OpenAI's width // 64 heads the same weights give other logits."""
    sd, config, _ = read_checkpoint(hf["safetensors"])
    wrong = build(sd, dataclasses.replace(config, vision_heads=1, transformer_heads=1))
    with torch.no_grad():
        got = wrong(hf["images"], hf["tokens"])[0]
    assert max_rel_diff(got, hf["logits"]) > 1e-2


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_file_without_config(hf, filename):
    path = hf["safetensors" if filename.endswith("safetensors") else "bin"] / filename
    with pytest.raises(WeightsError) as info:
        mini_clip.load(path)
    assert type(info.value) is WeightsError
    assert str(path) in str(info.value) and "config.json" in str(info.value)


# the config is compared with the shapes before anything is built
@pytest.mark.parametrize("edit, expected", [
    (("vision_config", "num_hidden_layers", 3), ["vision_layers is 3 in the config, 2 in the tensors"]),
    (("text_config", "num_hidden_layers", 1), ["transformer_layers is 1 in the config, 2 in the tensors"]),
    ((None, "projection_dim", 32), ["embed_dim is 32 in the config, 48 in the tensors"]),
    (("text_config", "max_position_embeddings", 40),
     ["context_length is 40 in the config, 77 in the tensors"]),
    (("vision_config", "hidden_act", "gelu"), ["config.json", "quick_gelu"]),
])
def test_hugging_face_config_disagreeing_with_tensors(tmp_path, hf, edit, expected):
    folder = tmp_path / "hf"
    shutil.copytree(hf["safetensors"], folder)
    config = json.loads((folder / "config.json").read_text())
    part, key, value = edit
    (config[part] if part else config)[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WeightsError) as info:
        mini_clip.load(folder)
    assert type(info.value) is WeightsError
    message = str(info.value)
    assert str(folder) in message
    for word in expected:
        assert word in message, (word, message)


# ---------------------------------------------------------------------------------------------------------
# mini_clip's own format


def test_save_load_round_trip(tmp_path, ref, inputs, ref_logits):
    model = build(ref.state_dict())
    path = tmp_path / "model.safetensors"
    mini_clip.save(model, path, metadata={"note": "round trip"})
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]  # no temporary file left behind
    loaded = check_logits(path, inputs, ref_logits, "mini_clip safetensors")
    assert loaded.config == model.config
    want, got = model.state_dict(), loaded.state_dict()
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    with safe_open(str(path), framework="pt") as f:  # read back with safetensors itself
        metadata = f.metadata()
        assert set(f.keys()) == set(ref.state_dict())
    assert metadata["format"] == "mini_clip" and metadata["note"] == "round trip"
    assert json.loads(metadata["config"]) == dataclasses.asdict(model.config)
    half, _ = mini_clip.load(path, dtype=torch.float16)
    assert half.dtype == torch.float16


def test_round_trip_keeps_a_config_shapes_cannot_tell(tmp_path, hf):
    """Hugging Face's head counts are not in the tensor shapes: the saved config must carry them."""
    model, _ = mini_clip.load(hf["safetensors"])
    path = tmp_path / "hf.safetensors"
    mini_clip.save(model, path)
    loaded, _ = mini_clip.load(path)
    assert loaded.config == model.config and loaded.config.vision_heads == 4
    with torch.no_grad():
        assert max_rel_diff(loaded(hf["images"], hf["tokens"])[0], hf["logits"]) < HF_TOL


@pytest.mark.parametrize("existing", [False, True])
def test_save_is_atomic(tmp_path, monkeypatch, ref, existing):
    model = build(ref.state_dict())
    path = tmp_path / "model.safetensors"
    if existing:
        path.write_bytes(b"the previous file")

    class FullDisk(io.FileIO):
        def write(self, data):
            super().write(data[:1000])  # half written when the disk fills up
            raise OSError("No space left on device")

    monkeypatch.setattr(files, "open", lambda name, mode: FullDisk(name, mode), raising=False)
    with pytest.raises(OSError, match="No space"):
        mini_clip.save(model, path)
    if existing:
        assert path.read_bytes() == b"the previous file"
        assert os.listdir(tmp_path) == ["model.safetensors"]
    else:
        assert not path.exists()
        assert os.listdir(tmp_path) == []


def test_saved_file_has_the_permissions_of_open(tmp_path, ref):
    umask = os.umask(0o022)
    os.umask(umask)
    path = tmp_path / "model.safetensors"
    mini_clip.save(build(ref.state_dict()), path)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------------------
# Strict loading


def test_strict_loading_names_every_problem(tmp_path, ref):
    sd = dict(ref.state_dict())
    del sd["visual.ln_post.bias"]
    sd["visual.extra_head.weight"] = torch.zeros(3)
    sd["transformer.resblocks.1.mlp.c_fc.bias"] = torch.zeros(7)
    keys = ["visual.ln_post.bias", "visual.extra_head.weight", "transformer.resblocks.1.mlp.c_fc.bias"]
    with pytest.raises(WeightsError) as info:
        build(sd)
    assert type(info.value) is WeightsError and all(k in str(info.value) for k in keys)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as info:
        mini_clip.load(path)
    message = str(info.value)
    assert type(info.value) is WeightsError and str(path) in message
    assert all(k in message for k in keys), message
    assert "(7,)" in message  # the wrong shape is stated


def test_integer_tensor_is_refused(ref):
    sd = dict(ref.state_dict())
    sd["logit_scale"] = torch.tensor(4)
    with pytest.raises(WeightsError, match="logit_scale"):
        build(sd)


# ---------------------------------------------------------------------------------------------------------
# Damaged and foreign files


def _safetensors_bytes() -> bytes:
    return safetensors_bytes({"w": torch.arange(10, dtype=torch.float32)})


def _torchscript_with_data_pkl(path, payload: bytes):
    """A zip laid out as a TorchScript archive (code/, constants.pkl, data.pkl) with the given data.pkl."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("archive/code/__torch__/model.py", "def forward(self):\n  pass\n")
        z.writestr("archive/version", "3\n")
    return path


def _make_garbage(kind, tmp_path, torchscript_files):
    p = tmp_path / "weights.pt"
    if kind == "random_bytes":
        p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "png":
        p = tmp_path / "photo.png"
        Image.new("RGB", (8, 8), (200, 10, 10)).save(p)
    elif kind == "png_named_pt":
        Image.new("RGB", (8, 8), (200, 10, 10)).save(p, format="PNG")
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "truncated_zip":
        torch.save({"w": torch.randn(256, 256)}, p)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif kind == "truncated_torchscript":
        data = torchscript_files["fp32"].read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "directory_without_config":
        p = tmp_path / "model_dir"
        p.mkdir()
        (p / "model.safetensors").write_bytes(_safetensors_bytes())
    elif kind == "missing":
        p = tmp_path / "nowhere" / "ViT-B-32.pt"
    elif kind == "missing_as_str":  # a string that looks like a model name is tried as one, then refused
        p = str(tmp_path / "nowhere" / "ViT-B-32.pt")
    elif kind == "safetensors_bad_json":
        data = bytearray(_safetensors_bytes())
        data[9:14] = b"!!!!!"
        p = tmp_path / "model.safetensors"
        p.write_bytes(data)
    elif kind == "safetensors_truncated":
        data = _safetensors_bytes()
        p = tmp_path / "model.safetensors"
        p.write_bytes(data[:-12])
    elif kind == "safetensors_header_longer_than_file":
        data = bytearray(_safetensors_bytes())
        data[:8] = (10 ** 6).to_bytes(8, "little")
        p = tmp_path / "model.safetensors"
        p.write_bytes(data)
    elif kind == "no_tensors":
        torch.save({"epoch": 3, "names": ["a", "b"]}, p)
    elif kind == "not_clip":
        torch.save({"linear.weight": torch.randn(3, 3)}, p)
    elif kind == "pickle_pop_mark":
        p.write_bytes(b"t.")  # TUPLE without a MARK
    elif kind == "pickle_bad_memo":
        p.write_bytes(b"h\x05.")  # BINGET of a memo entry never stored
    elif kind == "torchscript_truncated_data_pkl":
        data = zipfile.ZipFile(torchscript_files["fp32"])
        with zipfile.ZipFile(p, "w") as out:
            for name in data.namelist():
                body = data.read(name)
                out.writestr(name, body[: len(body) // 2] if name.endswith("/data.pkl") else body)
    elif kind == "torchscript_data_pkl_cut_in_a_string":
        _torchscript_with_data_pkl(p, b"\x80\x02X\xff\xff\x00\x00abc")  # a 65535-byte string, 3 bytes there
    elif kind == "torchscript_storage_wrong_size":
        data = zipfile.ZipFile(torchscript_files["fp32"])
        with zipfile.ZipFile(p, "w") as out:
            for name in data.namelist():
                body = data.read(name)
                out.writestr(name, body[:3] if name.endswith("/data/0") else body)
    elif kind == "torchscript_data_pkl_is_an_int":
        _torchscript_with_data_pkl(p, pickle.dumps(5, protocol=2))
    elif kind == "torchscript_module_called_with_arguments":
        _torchscript_with_data_pkl(p, b"\x80\x02c__torch__\nFoo\nK\x01K\x02\x86R.")
    else:
        raise ValueError(kind)
    return p


GARBAGE = [
    "random_bytes", "png", "png_named_pt", "empty", "truncated_zip", "truncated_torchscript",
    "directory_without_config", "missing", "safetensors_bad_json", "safetensors_truncated", "no_tensors",
    "not_clip", "torchscript_storage_wrong_size", "torchscript_truncated_data_pkl",
    "safetensors_header_longer_than_file", "pickle_pop_mark", "pickle_bad_memo", "missing_as_str",
    "torchscript_data_pkl_cut_in_a_string", "torchscript_data_pkl_is_an_int",
    "torchscript_module_called_with_arguments",
]


@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_raises_weights_error_naming_the_path(tmp_path, torchscript_files, kind):
    path = _make_garbage(kind, tmp_path, torchscript_files)
    with pytest.raises(Exception) as info:
        mini_clip.load(path)
    assert type(info.value) is WeightsError, f"{type(info.value).__name__}: {info.value}"
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)
    assert info.value.__suppress_context__ or info.value.__cause__ is None  # one clean error, not a chain


@pytest.mark.parametrize("kind", ["png_named_pt", "random_bytes"])
def test_non_pickle_is_not_reported_as_crafted(tmp_path, torchscript_files, kind):
    path = _make_garbage(kind, tmp_path, torchscript_files)
    with pytest.raises(WeightsError) as info:
        mini_clip.load(path)
    assert "refused" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Crafted pickles: nothing in a weights file may run


class _Payload:
    def __init__(self, how, marker):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch '{self.marker}'",)
        if self.how == "open":
            return builtins.open, (self.marker, "w")
        return builtins.exec, (f"open({self.marker!r}, 'w').close()",)


PAYLOADS = ["os.system", "open", "exec"]
CONTAINERS = ["torch_save_zip", "torch_save_legacy", "bin", "plain_pickle", "torchscript_archive",
              "torchscript_archive_nested"]


def _write_crafted(container, payload, tmp_path):
    nested = {"state_dict": {"visual.proj": torch.zeros(2, 2), "evil": payload}}
    if container == "torch_save_zip":
        path = tmp_path / "model.pt"
        torch.save(nested, path)
    elif container == "torch_save_legacy":
        path = tmp_path / "model.pt"
        torch.save(nested, path, _use_new_zipfile_serialization=False)
    elif container == "bin":
        path = tmp_path / "pytorch_model.bin"
        torch.save(payload, path)
    elif container == "plain_pickle":
        path = tmp_path / "model.pt"
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif container == "torchscript_archive":
        path = _torchscript_with_data_pkl(tmp_path / "ViT-B-32.pt", pickle.dumps(payload, protocol=2))
    else:
        path = _torchscript_with_data_pkl(tmp_path / "ViT-B-32.pt",
                                          pickle.dumps({"visual": {"conv1": payload}}, protocol=2))
    return path


@pytest.mark.parametrize("how", PAYLOADS)
def test_payloads_are_live(tmp_path, how):
    """Guard for the safety test: plain pickle.loads of each payload does create its marker file."""
    marker = tmp_path / "MARKER"
    result = pickle.loads(pickle.dumps(_Payload(how, marker), protocol=2))
    if hasattr(result, "close"):
        result.close()
    assert marker.exists()


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("how", PAYLOADS)
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, monkeypatch, how, container):
    marker = tmp_path / "MARKER"
    path = _write_crafted(container, _Payload(how, marker), tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as info:
        mini_clip.load(path)
    assert type(info.value) is WeightsError, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert str(path) in message
    # judged without the path: pytest's folder for this test is named "...refused..." itself
    unnamed = message.replace(str(path), "")
    assert "refused" in unnamed and "crafted" in unnamed, message
    assert not marker.exists()


@pytest.mark.parametrize("source", ["torchscript fp32", "torchscript fp16", "hf safetensors", "hf bin",
                                    "mini_clip safetensors"])
def test_files_that_state_their_architecture_load_without_warning(tmp_path, torchscript_files, hf, ref,
                                                                  source):
    """OpenAI's own archives, Hugging Face directories and mini_clip's files need no guess, so no warning."""
    kind, _, name = source.partition(" ")
    if kind == "torchscript":
        path = torchscript_files[name]
    elif kind == "hf":
        path = hf["safetensors" if name == "safetensors" else "bin"]
    else:
        path = tmp_path / "model.safetensors"
        mini_clip.save(build(ref.state_dict()), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        mini_clip.load(path)


def test_many_random_files(tmp_path):
    """Random bytes, some behind a pickle protocol header or a zip signature so the readers get further in."""
    rng = np.random.default_rng(1)
    for i in range(40):
        prefix = [b"", b"\x80\x02", b"\x80\x04\x95", b"PK\x03\x04"][i % 4]
        path = tmp_path / f"random{i}.pt"
        path.write_bytes(prefix + rng.bytes(int(rng.integers(1, 3000))))
        with pytest.raises(Exception) as info:
            mini_clip.load(path)
        assert type(info.value) is WeightsError and str(path) in str(info.value), (i, repr(info.value))
