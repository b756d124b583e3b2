"""Reliability and security: damaged or hostile inputs fail cleanly, and a killed run leaves nothing broken.

- images: random and mutated bytes, every format PIL writes cut short, odd modes, slivers, animations,
  EXIF rotation, decompression bombs -> an RGB image or ImageError, quickly and in little memory;
- texts: any Unicode, control characters, 100 kB -> token ids, or the documented too-long ValueError;
- weights: cut, lying headers, wrong dtypes, NaNs -> WeightsError (NaN: a ValueError at explanation time);
- the CLI killed with SIGTERM half-way: only whole files, a clear message, and --resume finishes the job.
"""
import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

import mini_clip
from mini_clip import ImageError, WeightsError, load_image, preprocess, tokenize
from mini_clip import image as image_module

FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]


@pytest.fixture(scope="module")
def weights(tiny_weights) -> Path:
    return tiny_weights


def picture(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """Shapes on a gradient, with a little noise: something every codec has to work at."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * xx // max(1, width), 255 * yy // max(1, height), 96 + 0 * xx], -1)
    rgb = np.clip(rgb + rng.integers(-20, 21, rgb.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    ImageDraw.Draw(image).ellipse(box, fill=(230, 40, 40))
    return image


def encoded(fmt: str, image: Image.Image = None) -> bytes:
    buffer = io.BytesIO()
    (image or picture()).save(buffer, format=fmt)
    return buffer.getvalue()


VALID = {fmt: encoded(fmt) for fmt in FORMATS}


def check_loads_or_refuses(path: Path) -> None:
    """The contract of load_image: an RGB image that preprocess accepts, or ImageError naming the file; no
    warnings (a CLI would print them as extra lines)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = load_image(path)
        except ImageError as e:
            assert str(path) in str(e)
            image = None
    assert [str(w.message) for w in caught] == []
    if image is None:
        return
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.width >= 1 and image.height >= 1
    assert preprocess(image, 16).shape == (3, 16, 16)


# ---------------------------------------------------------------------------------------------------------
# Images


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=4096),
       magic=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00",
                              b"MM\x00*", b"RIFF\x00\x10\x00\x00WEBPVP8 "]))
def test_random_bytes_never_crash_load_image(data, magic):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "random.img"
        path.write_bytes(magic + data)
        check_loads_or_refuses(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_images_never_crash_load_image(fmt, edits):
    data = bytearray(VALID[fmt])
    for where, value in edits:
        data[int(where * len(data))] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"mutated.{fmt.lower()}"
        path.write_bytes(bytes(data))
        check_loads_or_refuses(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files_of_every_format(tmp_path, fmt):
    data = VALID[fmt]
    refused = 0
    for length in sorted({0, 1, 4, 8, 16, 32, 64, len(data) // 4, len(data) // 2, 3 * len(data) // 4,
                          len(data) - 16, len(data) - 1}):
        path = tmp_path / f"cut-{length}.{fmt.lower()}"
        path.write_bytes(data[:length])
        check_loads_or_refuses(path)
        try:
            load_image(path)
        except ImageError:
            refused += 1
    assert refused >= 8, f"{fmt}: most cut files must be refused, not half-decoded"
    path = tmp_path / f"whole.{fmt.lower()}"
    path.write_bytes(data)
    assert load_image(path).size == (64, 48)


def test_odd_modes_load_as_rgb(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's advice about palettes with transparency must not surface
        grey16 = Image.fromarray(np.full((20, 30), 32896, dtype=np.uint16))  # 32896 = 128 * 257
        grey16.save(tmp_path / "sixteen.png")
        sixteen = load_image(tmp_path / "sixteen.png")
        # scaled, not clipped
        assert sixteen.mode == "RGB" and np.asarray(sixteen)[0, 0].tolist() == [128, 128, 128]

        Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
        cmyk = load_image(tmp_path / "cmyk.jpg")
        r, g, b = np.asarray(cmyk)[10, 15].tolist()
        assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60  # no cyan, no yellow... full magenta: red

        palette = Image.new("P", (30, 20), 1)
        palette.putpalette([0, 0, 0, 200, 50, 50] + [0] * 762)
        palette.info["transparency"] = 0
        palette.save(tmp_path / "palette.png", transparency=0)
        loaded = load_image(tmp_path / "palette.png")
        assert loaded.mode == "RGB" and np.asarray(loaded)[0, 0].tolist() == [200, 50, 50]


@pytest.mark.parametrize("width, height", [(1, 1), (1, 10000), (10000, 1), (3, 20000)])
def test_slivers_preprocess_quickly(tmp_path, width, height):
    rng = np.random.default_rng(width)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / "sliver.png")
    start = time.perf_counter()
    image = load_image(tmp_path / "sliver.png")
    x, geometry = preprocess(image, 224, return_geometry=True)
    assert time.perf_counter() - start < 2.0
    assert x.shape == (3, 224, 224) and torch.isfinite(x).all()
    assert (geometry.width, geometry.height) == (width, height)


def resize_then_crop(image: Image.Image, size: int) -> np.ndarray:
    """OpenAI's Resize(size) + CenterCrop(size) as plainly as it can be written (from torchvision's
    formulas)."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    rw, rh = (size, int(size * long / short)) if w <= h else (int(size * long / short), size)
    left, top = int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0))
    return np.asarray(image.resize((rw, rh), Image.BICUBIC).crop((left, top, left + size, top + size)))


def crop_of(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(image_module.resize_and_crop(image, size)[0])


# width, height, size: both orientations, up- and downscaling, both pass orders of Pillow 13 (height shrinking
# by more than twice the width's loss goes vertical-first), crop offsets on .5, slivers
SHAPES = [(37, 53, 16), (53, 37, 16), (101, 77, 56), (640, 480, 224), (480, 640, 224), (74, 392, 56),
          (63, 175, 56), (217, 268, 224), (300, 240, 224), (220, 3, 16), (3, 220, 16), (1, 40, 16),
          (40, 1, 16), (19, 16, 16), (16, 21, 16), (352, 9, 100), (9, 352, 100), (116, 67, 224),
          (2, 3000, 16), (3000, 2, 16), (250, 1000, 32), (1000, 250, 32)]


def test_ordinary_images_are_resized_in_full_exactly_as_before():
    """Below MAX_RESIZED_PIXELS nothing changed: bit for bit the plain resize-then-crop."""
    for k, (w, h, size) in enumerate(SHAPES):
        image = picture(w, h, seed=k)
        assert np.array_equal(crop_of(image, size), resize_then_crop(image, size)), (w, h, size)


def test_windowed_resize_matches_the_full_resize(monkeypatch):
    """The path for slivers, forced on shapes where the full resize is still cheap: the same pixels but for
    PIL's float32 box, which moves a few pixels by a level or two."""
    monkeypatch.setattr(image_module, "MAX_RESIZED_PIXELS", 0)
    differing = total = 0
    for k, (w, h, size) in enumerate(SHAPES):
        image = Image.fromarray(np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8))
        got, want = crop_of(image, size).astype(int), resize_then_crop(image, size).astype(int)
        assert got.shape == want.shape == (size, size, 3)
        assert np.abs(got - want).max() <= 2, (w, h, size)
        differing += int((got != want).sum())
        total += got.size
    assert differing / total < 0.005


def test_a_sliver_is_cropped_from_its_middle():
    """1 x 10000 with a vertical ramp at 16 (full resize 16 x 160000, still cheap to compare): the crop comes
    from the centre rows, equal to the full resize within a level."""
    ramp = (np.arange(10000) * 255 // 9999).astype(np.uint8)
    image = Image.fromarray(np.repeat(ramp[:, None, None], 3, axis=2))
    got, want = crop_of(image, 16).astype(int), resize_then_crop(image, 16).astype(int)
    assert np.abs(got - want).max() <= 1
    assert abs(got.mean() - 127.5) < 2


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (24, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(tmp_path / "animated.gif") as check:
        assert check.n_frames == 3
    loaded = load_image(tmp_path / "animated.gif")
    r, g, b = np.asarray(loaded)[8, 12].tolist()
    assert loaded.size == (24, 16) and r > 200 and g < 50 and b < 50


def test_exif_orientation_is_honoured(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20), (10, 200, 10)).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a width x height RGB image, followed by a few bytes of image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded("GIF", Image.new("RGB", (4, 4))))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen, which PIL takes as the image size
    return bytes(data)


@pytest.mark.parametrize("kind", ["png", "gif"])
@pytest.mark.parametrize("side", [30000, 10000])  # far beyond PIL's limit, and just beyond (a warning in PIL)
def test_decompression_bomb_is_refused_quickly(tmp_path, kind, side):
    path = tmp_path / f"bomb.{kind}"
    path.write_bytes(png_claiming(side, side) if kind == "png" else gif_claiming(side, side))
    assert path.stat().st_size < 1000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    start = time.perf_counter()
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(path)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000


# ---------------------------------------------------------------------------------------------------------
# Texts

TOO_LONG = "the model's context is 77"


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(), max_size=300))
def test_any_unicode_tokenizes_or_is_too_long(text):
    try:
        tokens = tokenize(text)
    except ValueError as e:
        assert TOO_LONG in str(e) and "truncate" in str(e)
    else:
        assert tokens.shape == (1, 77) and int(tokens[0, 0]) == 49406 and 49407 in tokens[0].tolist()
    tokens = tokenize(text, truncate=True)
    assert tokens.shape == (1, 77) and 49407 in tokens[0].tolist()


@pytest.mark.parametrize("text", ["".join(map(chr, range(32))) + "\x7f\u200b\ufeff\u202e", "\x00" * 1000,
                                  "a\u0301" * 100, "\U0001F600" * 50, "word " * 20_000, "x" * 100_000])
def test_control_characters_and_huge_texts(text):
    try:
        tokenize(text)
    except ValueError as e:
        assert TOO_LONG in str(e)
    tokens = tokenize(text, truncate=True)
    assert tokens.shape == (1, 77) and 49407 in tokens[0].tolist()


# ---------------------------------------------------------------------------------------------------------
# Weights


def split_safetensors(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8: 8 + n]), raw[8 + n:]


def join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def damaged(weights: Path, how: str) -> bytes:
    raw = weights.read_bytes()
    header, body = split_safetensors(weights)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    if how == "cut short":
        return raw[: len(raw) - 1000]
    if how == "cut in the header":
        return raw[:200]
    if how == "header claims more bytes":  # a consistent header for one more row than the file holds
        assert header[last]["dtype"] == "F32"
        header[last]["shape"][0] += 1
        header[last]["data_offsets"][1] += 4 * int(np.prod(header[last]["shape"][1:]))
        return join_safetensors(header, body)
    if how == "shape larger than its bytes":
        header["visual.proj"]["shape"][0] *= 2
        return join_safetensors(header, body)
    if how == "dtype larger than its bytes":
        header["visual.proj"]["dtype"] = "F64"
        return join_safetensors(header, body)
    if how == "header length beyond the file":
        return struct.pack("<Q", len(raw) * 2) + raw[8:]
    if how == "header length too short":
        return struct.pack("<Q", struct.unpack("<Q", raw[:8])[0] - 10) + raw[8:]
    raise ValueError(how)


DAMAGE = ["cut short", "cut in the header", "header claims more bytes", "shape larger than its bytes",
          "dtype larger than its bytes", "header length beyond the file", "header length too short"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_weights_raise_weights_error(tmp_path, weights, how):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damaged(weights, how))
    with pytest.raises(WeightsError) as info:
        mini_clip.load(path)
    assert str(path) in str(info.value)


def rewrite(weights: Path, target: Path, edit) -> Path:
    sd = load_file(str(weights))
    header, _ = split_safetensors(weights)
    edit(sd)
    save_file(sd, str(target), header["__metadata__"])
    return target


def test_integer_tensor_is_refused(tmp_path, weights):
    path = rewrite(weights, tmp_path / "int.safetensors",
                   lambda sd: sd.update({"visual.proj": sd["visual.proj"].long()}))
    with pytest.raises(WeightsError, match=r"visual\.proj.*int64"):
        mini_clip.load(path)


@pytest.mark.parametrize("edit", ["config is not JSON", "config has an unknown field"])
def test_damaged_config_metadata_raises_weights_error(tmp_path, weights, edit):
    header, body = split_safetensors(weights)
    config = json.loads(header["__metadata__"]["config"])
    if edit == "config is not JSON":
        header["__metadata__"]["config"] = "{embed_dim: 32"
    else:
        header["__metadata__"]["config"] = json.dumps({**config, "bogus": 1})
    path = tmp_path / "config.safetensors"
    path.write_bytes(join_safetensors(header, body))
    with pytest.raises(WeightsError):
        mini_clip.load(path)


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory, weights) -> Path:
    return rewrite(weights, tmp_path_factory.mktemp("nan") / "nan.safetensors",
                   lambda sd: sd["visual.proj"].fill_(float("nan")))


def test_nan_weights_are_refused_at_explanation_time(nan_weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading may warn; it must not crash
        model, _ = mini_clip.load(nan_weights)
    with pytest.raises(ValueError, match="not finite"):
        mini_clip.relevance(model, torch.zeros(1, 3, 32, 32), ["a red square"])


def explain(*args, timeout=120, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model: threads only add overhead
    return subprocess.Popen([sys.executable, "-m", "mini_clip.explain", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def test_nan_weights_make_the_cli_exit_1_with_one_line(tmp_path, nan_weights):
    picture().save(tmp_path / "photo.png")
    out = tmp_path / "out"
    out.mkdir()
    stdout, stderr = explain(tmp_path / "photo.png", "--text", "a red circle", "--weights", nan_weights,
                             "--out", out).communicate(timeout=120)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1 and "not finite" in lines[0], stderr
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# The CLI killed half-way


@pytest.mark.slow  # two CLI runs over 30 images: about 10 s on an idle machine
def test_sigterm_leaves_only_whole_files_and_resume_finishes(tmp_path, weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(30):
        picture(72, 56, seed=k).save(photos / f"photo-{k:02d}.png")
    out = tmp_path / "out"
    args = [photos, "--text", "a red circle", "--weights", weights, "--out", out, "--quiet"]
    proc = explain(*args)
    deadline = time.monotonic() + 60
    while not list(out.glob("*/result.json")):  # the first image finished: the run is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    done = len(list(out.glob("*/result.json")))
    assert done < 30, "the run finished before the signal: make the images bigger"
    assert proc.returncode != 0
    assert "Traceback" not in stderr and "interrupted" in stderr and "--resume" in stderr, stderr
    for png in out.rglob("*.png"):
        with Image.open(png) as image:
            image.load()  # whole, not cut
    assert list(out.rglob(".*.tmp")) == []

    resumed = explain(*args, "--resume")
    _, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and stderr.strip() == "", stderr
    document = json.loads((out / "results.json").read_text())
    assert len(document["results"]) == 30
    assert all((out / f"photo-{k:02d}" / "sheet.png").exists() for k in range(30))
    assert list(out.rglob(".*.tmp")) == []
