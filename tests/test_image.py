"""Image preprocessing against a test-side replica of OpenAI's torchvision pipeline, and image loading.

The reference below is written from torchvision's documented formulas (torchvision is not installed next to
CPU torch here): Resize(n) makes the short side n and the long side int(n * long / short) with PIL bicubic;
CenterCrop(n) cuts at int(round((side - n) / 2.0)); ToTensor divides uint8 by 255 into float32 CHW;
Normalize subtracts OpenAI's mean and divides by its std. One step moves: OpenAI's clip._transform
converts to RGB after the crop (Resize, CenterCrop, _convert_image_to_rgb, ToTensor, Normalize),
mini_clip's `preprocess` before resizing (`to_rgb`), so that a palette image is resampled as colours, not
as palette indices (PIL resizes "P" images nearest-neighbour); for RGB photos the two orders agree. The
reference converts first too, and scales 16-bit greyscale to 8 bits by round(v * 255 / 65535), as `to_rgb`.
"""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mini_clip import CropGeometry, ImageError, load_image, preprocess

# OpenAI's clip._transform:
# Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------------------------------------
# The reference


def ref_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16"):
        v = np.asarray(image).astype(np.int64)
        v8 = ((v * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257); v * 255 / 65535 is never x.5
        return Image.fromarray(np.stack([v8, v8, v8], axis=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's advice to go through RGBA for palettes with transparency
        return image.convert("RGB")


def ref_sizes(width: int, height: int, n: int):
    """torchvision's Resize(n) output size and CenterCrop(n) offsets: (new_w, new_h, left, top)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = n, int(n * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_w, new_h, int(round((new_w - n) / 2.0)), int(round((new_h - n) / 2.0))


def ref_preprocess(image: Image.Image, n: int) -> torch.Tensor:
    image = ref_rgb(image)
    new_w, new_h, left, top = ref_sizes(image.width, image.height, n)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    image = image.crop((left, top, left + n, top + n))
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
    mean, std = torch.tensor(MEAN, dtype=torch.float32), torch.tensor(STD, dtype=torch.float32)
    return (x - mean[:, None, None]) / std[:, None, None]


# ---------------------------------------------------------------------------------------------------------
# Test images


def photo(width: int, height: int, mode: str, seed: int = 0) -> Image.Image:
    """Noise over smooth gradients (bicubic has something to do), in the requested PIL mode."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([255 * xx // width, 255 * yy // height, 128 + 0 * xx], axis=-1)
    rgb = np.clip(smooth + rng.integers(-60, 61, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "RGB":
        return image
    if mode == "RGBA":
        alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha], axis=-1))
    if mode in ("P", "P+transparency"):  # 16 random palette colours in smooth bands plus noise
        index = (16 * xx // width + 16 * yy // height + rng.integers(0, 3, (height, width))) % 16
        p = Image.frombytes("P", (width, height), index.astype(np.uint8).tobytes())
        p.putpalette(rng.integers(0, 256, 16 * 3, dtype=np.uint8).tobytes())
        if mode == "P+transparency":
            p.info["transparency"] = 3
        return p
    if mode == "I;16":
        grey = (xx * 977 + yy * 1531 + rng.integers(0, 4000, (height, width))) % 65536
        out = Image.fromarray(grey.astype(np.uint16))
        assert out.mode == "I;16"
        return out
    return image.convert(mode)  # L, LA, CMYK, 1


# (width, height, n): odd sizes, both orientations, crop offsets landing on .5 (0.5 -> 0, 1.5 -> 2, 2.5 -> 2,
# 8.5 -> 8 by Python's round), slivers, images already n x n, up- and downscaling, n = 224 and unusual n.
SIZES = [
    (37, 53, 16), (53, 37, 16), (101, 77, 56),
    (16, 17, 16), (16, 19, 16), (16, 21, 16), (17, 16, 16), (19, 16, 16), (21, 16, 16),
    (448, 450, 224), (225, 224, 224), (224, 227, 224), (300, 240, 224),
    (1, 40, 16), (40, 1, 16),
    (16, 16, 16), (56, 56, 56), (224, 224, 224),
    (10, 7, 56), (300, 200, 100),
]
# The same geometry worked out by hand: (resized width, resized height, left, top).
EXPECTED_GEOMETRY = {
    (37, 53, 16): (16, 22, 0, 3), (53, 37, 16): (22, 16, 3, 0), (101, 77, 56): (73, 56, 8, 0),
    (16, 17, 16): (16, 17, 0, 0), (16, 19, 16): (16, 19, 0, 2), (16, 21, 16): (16, 21, 0, 2),
    (17, 16, 16): (17, 16, 0, 0), (19, 16, 16): (19, 16, 2, 0), (21, 16, 16): (21, 16, 2, 0),
    (448, 450, 224): (224, 225, 0, 0), (225, 224, 224): (225, 224, 0, 0), (224, 227, 224): (224, 227, 0, 2),
    (300, 240, 224): (280, 224, 28, 0),
    (1, 40, 16): (16, 640, 0, 312), (40, 1, 16): (640, 16, 312, 0),
    (16, 16, 16): (16, 16, 0, 0), (56, 56, 56): (56, 56, 0, 0), (224, 224, 224): (224, 224, 0, 0),
    (10, 7, 56): (80, 56, 12, 0), (300, 200, 100): (150, 100, 25, 0),
}
MODES = ["RGB", "RGBA", "P", "P+transparency", "L", "LA", "CMYK", "1", "I;16"]


def test_reference_geometry_is_torchvisions():
    """The reference's arithmetic against sizes worked out by hand (guards the reference itself)."""
    for (w, h, n), want in EXPECTED_GEOMETRY.items():
        assert ref_sizes(w, h, n) == want, (w, h, n)
    assert set(EXPECTED_GEOMETRY) == set(SIZES)


@pytest.mark.parametrize("mode", MODES)
def test_preprocess_equals_reference(mode):
    exact = 0
    for i, (w, h, n) in enumerate(SIZES):
        image = photo(w, h, mode, seed=i)
        want = ref_preprocess(image, n)
        got, geometry = preprocess(image, n, return_geometry=True)
        assert got.shape == (3, n, n) and got.dtype == torch.float32
        assert float((got - want).abs().max()) <= 1e-6, f"{mode} {w}x{h} at n={n}"
        exact += torch.equal(got, want)
        new_w, new_h, left, top = ref_sizes(w, h, n)
        assert geometry == CropGeometry(w, h, new_w, new_h, left, top, n), (mode, w, h, n)
        assert torch.equal(preprocess(image, n), got)  # return_geometry only adds the geometry
    print(f"\n{mode}: {exact}/{len(SIZES)} sizes bit-identical to the reference")


def test_sixteen_bit_is_scaled_not_clipped():
    """Guard for the I;16 case: PIL's own convert("RGB") would clip at 255 and give a different tensor."""
    image = photo(40, 30, "I;16")
    clipped = ref_preprocess(image.convert("RGB"), 16)  # PIL clips 16-bit values at 255
    assert not torch.allclose(preprocess(image, 16), clipped, atol=1e-2)
    v = np.asarray(image).astype(np.int64)
    assert v.max() > 60000  # the full 16-bit range is used


def test_default_size_is_224():
    image = photo(300, 240, "RGB")
    torch.testing.assert_close(preprocess(image), ref_preprocess(image, 224), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P+transparency", "L", "I;16"])
def test_preprocess_path_equals_opened_image(tmp_path, mode):
    image = photo(45, 31, mode, seed=3)
    path = tmp_path / "image.png"
    image.save(path, transparency=3) if mode == "P+transparency" else image.save(path)
    with Image.open(path) as opened:
        opened.load()
        assert opened.mode == image.mode.split("+")[0] or mode == "P+transparency"
        want = ref_preprocess(opened, 32)
        assert torch.equal(preprocess(opened, 32), preprocess(path, 32))
    torch.testing.assert_close(preprocess(str(path), 32), want, atol=1e-6, rtol=0)


def test_crop_box_maps_the_crop_back():
    _, geometry = preprocess(photo(300, 200, "RGB"), 100, return_geometry=True)
    assert (geometry.resized_width, geometry.resized_height, geometry.left, geometry.top) == (150, 100, 25, 0)
    assert geometry.crop_box() == pytest.approx((50, 0, 250, 200))
    _, geometry = preprocess(photo(200, 300, "RGB"), 100, return_geometry=True)
    assert geometry.crop_box() == pytest.approx((0, 50, 200, 250))


def test_crop_box_is_a_centred_square_inside_the_image():
    for w, h, n in SIZES:
        _, g = preprocess(photo(w, h, "RGB"), n, return_geometry=True)
        x0, y0, x1, y1 = g.crop_box()
        scale_x, scale_y = w / g.resized_width, h / g.resized_height
        assert 0 <= x0 < x1 <= w + 1e-9 and 0 <= y0 < y1 <= h + 1e-9, (w, h, n)
        assert x1 - x0 == pytest.approx(n * scale_x) and y1 - y0 == pytest.approx(n * scale_y)
        # centred to within one resized pixel (the crop offset is rounded)
        assert abs((x0 + x1) / 2 - w / 2) <= scale_x / 2 + 1e-9
        assert abs((y0 + y1) / 2 - h / 2) <= scale_y / 2 + 1e-9
        # the short side is covered entirely
        assert (x0, x1) == pytest.approx((0, w)) if w <= h else (y0, y1) == pytest.approx((0, h))


# ---------------------------------------------------------------------------------------------------------
# Loading


def _png_bytes(image: Image.Image) -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["missing", "text_named_png", "empty_jpg", "truncated_png", "directory"])
def test_load_image_errors_name_the_path(tmp_path, kind):
    if kind == "missing":
        path = tmp_path / "nowhere.jpg"
    elif kind == "text_named_png":
        path = tmp_path / "notes.png"
        path.write_text("this is not an image\n")
    elif kind == "empty_jpg":
        path = tmp_path / "empty.jpg"
        path.write_bytes(b"")
    elif kind == "truncated_png":
        path = tmp_path / "cut.png"
        data = _png_bytes(photo(64, 64, "RGB"))
        path.write_bytes(data[: len(data) // 2])
    else:
        path = tmp_path / "folder.png"
        path.mkdir()
    for call in (load_image, preprocess):
        with pytest.raises(Exception) as info:
            call(path)
        assert type(info.value) is ImageError, f"{type(info.value).__name__}: {info.value}"
        assert isinstance(info.value, ValueError) and str(path) in str(info.value)
        assert "_io." not in str(info.value)  # the path, not the repr of a file object


def test_exif_orientation_is_honoured(tmp_path):
    """Orientation 6: the stored image must be turned 90 degrees clockwise to be seen upright, so its left
    half (red) becomes the top half of the upright image and its right half (blue) the bottom half."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:
        assert raw.size == (40, 20)  # as stored
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    assert np.abs(pixels[5, 10] - (255, 0, 0)).max() < 30
    assert np.abs(pixels[35, 10] - (0, 0, 255)).max() < 30
    _, geometry = preprocess(path, 16, return_geometry=True)
    assert (geometry.width, geometry.height) == (20, 40)


FDS = Path("/proc/self/fd")  # this process's open files (Linux)


@pytest.mark.skipif(not FDS.is_dir(), reason="counts open files through /proc/self/fd (Linux only)")
@pytest.mark.parametrize("suffix, options", [
    (".jpg", {}), (".png", {}), (".gif", {"save_all": True}), (".tif", {"save_all": True}),
    (".png", {"save_all": True}), (".mpo", {"format": "MPO", "save_all": True}), (".webp", {})])
def test_load_image_gives_the_first_frame_and_leaves_no_file_open(tmp_path, suffix, options):
    """Single pictures and files of two frames (GIF, TIFF, APNG, MPO, which PIL keeps open for the other
    frames): the image is the first frame, in RGB, usable after loading, and the file is closed."""
    first, second = photo(30, 20, "RGB"), photo(30, 20, "RGB", seed=1)
    path = tmp_path / f"frames{suffix}"
    first.save(path, **({"append_images": [second]} if options.get("save_all") else {}), **options)
    with Image.open(path) as raw:
        expected = np.asarray(raw.convert("RGB"))  # PIL's own first frame (GIF: through its palette)
    before = len(list(FDS.iterdir()))
    image = load_image(path)
    assert len(list(FDS.iterdir())) == before
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected)
    assert image.resize((15, 10)).size == (15, 10)  # the pixels outlive the file


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "alpha.png"
    image = photo(30, 20, "RGBA")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and np.array_equal(np.asarray(loaded), np.asarray(image)[..., :3])
    path16 = tmp_path / "deep.png"
    photo(30, 20, "I;16").save(path16)
    assert np.array_equal(np.asarray(load_image(path16)), np.asarray(ref_rgb(Image.open(path16))))


def test_load_image_gives_the_first_frame_of_an_animation(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    pixels = np.asarray(load_image(path)).astype(int)
    assert pixels.shape == (10, 12, 3) and np.abs(pixels - (255, 0, 0)).max() < 10


@pytest.mark.parametrize("w, h, n", [(1, 1400, 56), (1400, 1, 56), (3, 5000, 56), (8200, 2, 32)])
def test_extreme_slivers_stay_within_one_level(w, h, n):
    """Aspect ratios whose full short-side resize would be millions of pixels: whatever shortcut the package
    takes, the result stays within one 8-bit level of OpenAI's full resize, and the geometry is unchanged."""
    image = photo(w, h, "RGB", seed=w + h)
    want = ref_preprocess(image, n)
    got, geometry = preprocess(image, n, return_geometry=True)
    one_level = 1 / 255 / min(STD)
    diff = (got - want).abs()
    assert float(diff.max()) <= one_level + 1e-5
    assert float((diff > 1e-6).float().mean()) < 0.05  # and only a few pixels differ at all
    new_w, new_h, left, top = ref_sizes(w, h, n)
    assert geometry == CropGeometry(w, h, new_w, new_h, left, top, n)
