"""Weights files written by an attacker: lying configs, zip bombs, tensors that view more than they store,
state dicts that do not state their architecture. Every file is crafted here, small on disk; each must be
refused quickly, with one short line naming the file, before anything large is built or read.
"""
import json
import pickle
import resource
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import mini_clip
from mini_clip import WeightsError, pretrained

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ROOT / "weights" / "scenes-vit-t8.safetensors"  # 4 heads per tower at width 128


def refused(path, within_s: float = 3.0) -> str:
    """mini_clip.load(path) raises WeightsError within `within_s`, as one short line naming the path; the
    message without the path is returned (so no test can pass on words in a temporary folder's name)."""
    start = time.perf_counter()
    with pytest.raises(Exception) as info:
        mini_clip.load(path)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert type(info.value) is WeightsError, f"{type(info.value).__name__}: {message[:500]}"
    assert elapsed < within_s, f"{elapsed:.1f} s to refuse"
    assert "\n" not in message and len(message) < 600 + len(str(path)), message[:1000]
    assert str(path) in message
    return message.replace(str(path), "<path>")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------------------------
# Configs: a mini_clip .safetensors file's metadata


def with_config(tiny_weights: Path, target: Path, config: str) -> Path:
    """tiny_weights' tensors under another config string."""
    save_file(load_file(str(tiny_weights)), str(target), {"format": "mini_clip", "config": config})
    return target


def tiny_config(tiny_weights: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(tiny_weights), framework="pt") as f:
        return json.loads(f.metadata()["config"])


CONFIG_EDITS = {  # name: (edit of the config dict, or a string replacing the config, words expected)
    "20000 image blocks": ({"vision_layers": 20000},
                           ["vision_layers is 20000 in the config, 2 in the tensors"]),
    "10**7 text blocks": ({"transformer_layers": 10 ** 7}, ["transformer_layers", "10000000"]),
    "layers 0": ({"vision_layers": 0}, ["vision_layers is 0", "from 1"]),
    "negative width": ({"vision_width": -64}, ["vision_width is -64"]),
    "patch 0": ({"vision_patch_size": 0}, ["vision_patch_size is 0"]),
    "heads 0": ({"transformer_heads": 0}, ["transformer_heads is 0"]),
    "heads not dividing": ({"transformer_heads": 3},
                           ["transformer_width 64 is not divisible by transformer_heads 3"]),
    "float": ({"image_resolution": 32.0}, ["image_resolution is 32.0 (float)", "whole number"]),
    "string": ({"embed_dim": "32"}, ["embed_dim is '32' (str)"]),
    "bool": ({"vision_layers": True}, ["vision_layers is True (bool)"]),
    "null": ({"vocab_size": None}, ["vocab_size is None"]),
    "huge int": ({"context_length": 10 ** 100}, ["context_length", "from 1 to"]),
    "context 0": ({"context_length": 0}, ["context_length is 0"]),
    "huge vocab": ({"vocab_size": 2 ** 24}, ["vocab_size is 16777216 in the config, 49408 in the tensors"]),
    "embed_dim 0": ({"embed_dim": 0}, ["embed_dim is 0"]),
    "resolution not a multiple of the patch": ({"image_resolution": 36},
                                               ["not a multiple of the patch size"]),
    "unknown key": ({"bogus": 1}, ["unknown fields bogus"]),
    "missing key": ({"embed_dim": None, "__delete__": "embed_dim"}, ["lacks embed_dim"]),
    "a JSON list": ("[32, 32, 2, 64, 8]", ["a JSON list, not an object"]),
    "nested too deep": ("[" * 100000 + "]" * 100000, ["damaged config"]),
}


@pytest.mark.parametrize("name", CONFIG_EDITS)
def test_lying_config_in_the_metadata_is_refused_quickly(tmp_path, tiny_weights, name):
    edit, words = CONFIG_EDITS[name]
    if isinstance(edit, str):
        text = edit
    else:
        config = {**tiny_config(tiny_weights), **edit}
        config.pop(config.pop("__delete__", None), None)
        text = json.dumps(config)
    message = refused(with_config(tiny_weights, tmp_path / "lying.safetensors", text))
    for word in words:
        assert word in message, (word, message)


def test_config_validates_its_own_fields():
    """CLIPConfig refuses what no model can have, with a ValueError naming the field (the library's API)."""
    good = dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8)
    mini_clip.CLIPConfig(**good)
    for field, value in (("vision_layers", 0), ("vision_patch_size", 0), ("vision_width", 64.0),
                         ("embed_dim", True), ("vision_layers", "2"), ("vision_heads", -1)):
        with pytest.raises(ValueError, match=field):
            mini_clip.CLIPConfig(**{**good, field: value})


# ---------------------------------------------------------------------------------------------------------
# Configs: a Hugging Face config.json


HF_CONFIG = {"projection_dim": 32,
             "text_config": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2,
                             "num_hidden_layers": 2, "max_position_embeddings": 77, "vocab_size": 49408},
             "vision_config": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 2,
                               "num_hidden_layers": 2, "image_size": 32, "patch_size": 8}}
HF_EDITS = {  # name: (part, key, value) or the whole file's text; words expected
    "a JSON list": ("[1, 2]", ["a JSON list, not an object"]),
    "vision_config a list": ((None, "vision_config", [1]), ["vision_config is a JSON list"]),
    "hidden_size 0": (("vision_config", "hidden_size", 0), ["vision_config.hidden_size is 0"]),
    "negative layers": (("text_config", "num_hidden_layers", -2), ["text_config.num_hidden_layers is -2"]),
    "image_size a float": (("vision_config", "image_size", 64.0),
                           ["vision_config.image_size is 64.0 (float)"]),
    "heads a string": (("text_config", "num_attention_heads", "2"),
                       ["text_config.num_attention_heads is '2'"]),
    "heads not dividing": (("vision_config", "num_attention_heads", 5), ["vision_width 64 is not divisible"]),
    "20000 layers": (("vision_config", "num_hidden_layers", 20000), ["vision_layers is 20000 in the config"]),
    "not UTF-8": ("\udcff", ["config.json"]),
}


def hf_folder(tmp_path: Path, tiny_weights: Path, edit) -> Path:
    """A Hugging Face-style folder: tiny_weights' tensors (OpenAI names) and a config.json edited."""
    folder = tmp_path / "hf"
    folder.mkdir()
    save_file(load_file(str(tiny_weights)), str(folder / "model.safetensors"))
    if isinstance(edit, str):
        (folder / "config.json").write_bytes(edit.encode("utf-8", "surrogateescape"))
    else:
        config = json.loads(json.dumps(HF_CONFIG))
        part, key, value = edit
        (config[part] if part else config)[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("name", HF_EDITS)
def test_lying_hugging_face_config_is_refused(tmp_path, tiny_weights, name):
    edit, words = HF_EDITS[name]
    message = refused(hf_folder(tmp_path, tiny_weights, edit))
    for word in words:
        assert word in message, (word, message)


def test_convert_script_refuses_a_lying_config_in_one_line(tmp_path, tiny_weights):
    folder = hf_folder(tmp_path, tiny_weights, ("vision_config", "hidden_size", 0))
    out = tmp_path / "out.safetensors"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "convert.py"), str(folder), str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "hidden_size is 0" in proc.stderr, proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# Archives: zip bombs and records that lie


def deflated_zeros(mib: int) -> bytes:
    """A raw deflate stream of `mib` MiB of zeros, about 1000x smaller, made without deflating them all:
    after a full flush the compressor forgets its history, so every further MiB compresses to the same
    bytes and can be repeated."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    return first + block * (mib - 1) + co.flush()


def zip_bytes(entries) -> bytes:
    """A zip written field by field: entries are (name, stored bytes, method 0 or 8, declared size, crc)."""
    body, central = bytearray(), bytearray()
    for name, payload, method, size, crc in entries:
        offset, encoded = len(body), name.encode()
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(payload), size,
                            len(encoded), 0) + encoded + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(payload),
                               size, len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(body), 0)
    return bytes(body + central + end)


def stored(name: str, data: bytes):
    return name, data, 0, len(data), zlib.crc32(data)


class Storage:
    """Pickled as torch's persistent id for a storage: ('storage', torch.FloatStorage, key, 'cpu', numel)."""

    def __init__(self, key, numel):
        self.pid = ("storage", torch.FloatStorage, key, "cpu", numel)


def data_pkl(root) -> bytes:
    import io
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    pickler.persistent_id = lambda obj: obj.pid if isinstance(obj, Storage) else None
    pickler.dump(root)
    return buffer.getvalue()


TORCHSCRIPT_EXTRAS = [stored("archive/constants.pkl", pickle.dumps((), protocol=2)),
                      stored("archive/code/__torch__/model.py", b"def forward(self):\n  pass\n"),
                      stored("archive/version", b"3\n")]
BOMB_MIB = 2048


@pytest.mark.parametrize("layout", ["torchscript", "torch.save"])
def test_zip_bomb_is_refused_before_inflating(tmp_path, layout):
    # The CRC is not computed (it would mean reading 2 GiB of zeros): a reader that inflates the entry
    # learns that only at its end, after the memory is spent.
    bomb = ("archive/data/0", deflated_zeros(BOMB_MIB), 8, BOMB_MIB << 20, 0)
    pkl = data_pkl({"visual.proj": Storage("0", (BOMB_MIB << 20) // 4)})
    extras = TORCHSCRIPT_EXTRAS if layout == "torchscript" else [stored("archive/version", b"3\n")]
    path = tmp_path / "model.pt"
    path.write_bytes(zip_bytes([stored("archive/data.pkl", pkl), bomb, *extras]))
    assert path.stat().st_size < 4 << 20
    before = peak_rss_mib()
    message = refused(path)
    assert peak_rss_mib() - before < 200
    assert "refused" in message and "uncompressed" in message, message


def torchscript_zip(tmp_path: Path, root, storages: dict) -> Path:
    path = tmp_path / "ViT-B-32.pt"
    path.write_bytes(zip_bytes([stored("archive/data.pkl", data_pkl(root)),
                                *(stored(f"archive/data/{k}", v) for k, v in storages.items()),
                                *TORCHSCRIPT_EXTRAS]))
    return path


FLOATS = torch.arange(4096, dtype=torch.float32).numpy().tobytes()
ARCHIVES = {  # name: (data.pkl's root, storages, words expected)
    "storage key with ../": ({"w": Storage("../../etc/passwd", 4)}, {"0": FLOATS}, ["storage record names"]),
    "numel larger than the entry": ({"w": Storage("0", 10 ** 12)}, {"0": FLOATS}, ["declares 16384 bytes"]),
    "negative numel": ({"w": Storage("0", -1)}, {"0": FLOATS}, ["storage record"]),
    "missing storage": ({"w": Storage("1", 4096)}, {"0": FLOATS}, ["no entry", "archive/data/1"]),
    "one storage named 10000 times": ({f"w{i}": Storage("0", 4096) for i in range(10000)}, {"0": FLOATS},
                                      ["refused", "tensors hold"]),
}


@pytest.mark.parametrize("name", ARCHIVES)
def test_torchscript_records_that_lie_are_refused(tmp_path, name):
    root, storages, words = ARCHIVES[name]
    before = peak_rss_mib()
    message = refused(torchscript_zip(tmp_path, root, storages))
    assert peak_rss_mib() - before < 100
    for word in words:
        assert word in message, (word, message)


def test_two_data_pkl_are_refused(tmp_path):
    pkl = data_pkl({"w": Storage("0", 4096)})
    path = tmp_path / "two.pt"
    path.write_bytes(zip_bytes([stored("archive/data.pkl", pkl), stored("other/data.pkl", pkl),
                                stored("archive/data/0", FLOATS), *TORCHSCRIPT_EXTRAS]))
    assert "exactly one" in refused(path)


def test_a_tensor_viewing_more_than_it_stores_is_refused(tmp_path, tiny_weights):
    """torch.save keeps a stride-0 view as its one-element storage: 200 MB of embedding out of 4 bytes,
    which a later copy (to fp16, to a GPU) would make real."""
    sd = load_file(str(tiny_weights))
    sd["token_embedding.weight"] = torch.zeros(1, 64).expand(800_000, 64)
    path = tmp_path / "expanded.pt"
    torch.save(sd, path)
    assert path.stat().st_size < 2 << 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bare state dict's warning is not what is tested here
        message = refused(path)
    assert "refused" in message and "tensors hold" in message, message


# ---------------------------------------------------------------------------------------------------------
# Tensors of the wrong kind


@pytest.mark.parametrize("edit, words", [
    (lambda sd: sd.update({"visual.proj": torch.tensor(1.0)}), ["visual.proj has shape ()"]),
    (lambda sd: sd.update({"visual.conv1.weight": torch.zeros(64, 3)}),
     ["visual.conv1.weight has shape (64, 3)"]),
    (lambda sd: sd.update({"visual.proj": sd["visual.proj"].to(torch.complex64)}),
     ["visual.proj", "complex64"]),
    (lambda sd: sd.update({"ln_final.weight": sd["ln_final.weight"].bool()}),
     ["ln_final.weight", "torch.bool"]),
    (lambda sd: sd.update({"visual.extra": torch.zeros(1 << 20, 0)}), ["unexpected (1): visual.extra"]),
])
def test_tensors_of_the_wrong_kind_are_refused(tmp_path, tiny_weights, edit, words):
    sd = load_file(str(tiny_weights))
    edit(sd)
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": sd}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        message = refused(path)
    for word in words:
        assert word in message, (word, message)


def test_hugging_face_projections_that_do_not_join_are_refused(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    layer = "vision_model.encoder.layers.0.self_attn."
    save_file({layer + "q_proj.weight": torch.zeros(64, 64), layer + "k_proj.weight": torch.zeros(64, 3),
               layer + "v_proj.weight": torch.zeros(64, 64)}, str(folder / "model.safetensors"))
    message = refused(folder)
    assert "do not join" in message and "k_proj" in message, message


# ---------------------------------------------------------------------------------------------------------
# State dicts that do not state their architecture


@pytest.fixture(scope="module")
def embedded_as_state_dict(tmp_path_factory) -> Path:
    if not EMBEDDED.exists():
        pytest.skip(f"{EMBEDDED} is missing")
    path = tmp_path_factory.mktemp("bare") / "scenes.pt"
    torch.save(load_file(str(EMBEDDED)), path)
    return path


def test_bare_state_dict_warns_once_that_heads_are_guessed(embedded_as_state_dict):
    with pytest.warns(UserWarning) as record:
        guessed, _ = mini_clip.load(embedded_as_state_dict)
    ours = [w for w in record if "states no architecture" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in record]
    text = str(ours[0].message)
    assert "2 image and 2 text heads" in text and "OpenAI's rules" in text and ".safetensors" in text
    # the warning is not idle: with the file's true 4 heads the same weights give other numbers
    true, _ = mini_clip.load(EMBEDDED)
    assert (true.config.vision_heads, true.config.transformer_heads) == (4, 4)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tokens = mini_clip.tokenize(["a red circle", "a blue square"])
    with torch.no_grad():
        assert not torch.allclose(guessed(images, tokens)[0], true(images, tokens)[0], rtol=1e-3)


def test_configured_file_does_not_warn(tiny_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mini_clip.load(tiny_weights)


def test_width_openais_rule_cannot_split_is_refused(tmp_path):
    config = mini_clip.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=96,
                                  vision_patch_size=8, transformer_width=64, transformer_heads=2,
                                  transformer_layers=1, vision_heads=3)
    path = tmp_path / "w96.pt"
    torch.save(mini_clip.CLIP(config).state_dict(), path)
    message = refused(path)
    assert "vision_width 96 is not a multiple of 64" in message and "config" in message, message


def test_cli_prints_the_warning_as_one_line(tmp_path, embedded_as_state_dict):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    args = [tmp_path / "red.png", "--text", "a red square", "--weights", embedded_as_state_dict,
            "--out", tmp_path / "o"]
    proc = subprocess.run([sys.executable, "-m", "mini_clip.explain", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "states no architecture" in line]
    assert len(lines) == 1 and lines[0].startswith("mini_clip.explain: warning: "), proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Names


def test_a_model_name_means_the_model_even_where_a_folder_has_its_name(tmp_path, monkeypatch):
    """As clip.load: "ViT-B/32" is OpenAI's model, whatever the current folder holds ("./ViT-B/32" is the
    folder), instead of "a directory without config.json" for a folder the user never meant."""
    (tmp_path / "ViT-B" / "32").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    asked = []

    def fetch(name):
        asked.append(name)
        raise WeightsError(f"{name}: offline")

    monkeypatch.setattr(pretrained, "fetch", fetch)
    with pytest.raises(WeightsError, match="offline"):
        mini_clip.load("ViT-B/32")
    assert asked == ["ViT-B/32"]
    with pytest.raises(WeightsError, match="without config.json"):
        mini_clip.load("./ViT-B/32")
