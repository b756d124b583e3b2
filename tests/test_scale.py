"""Many photos: batched explanations equal one-at-a-time ones, texts prepared once, the folder pipeline's
order, errors, resume and shards, progress lines, and torchrun with 2 CPU processes on the loopback
interface."""
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mini_clip
from mini_clip.folder import explain_folder
from mini_clip.relevance import prepare_texts, relevance
from mini_clip.terminal import Progress

from conftest import TINY
from reference import max_rel_diff, perturb_, tolerance

TEXTS = ["a red square", "a blue circle on grey", "a green triangle"]
CONFIG = mini_clip.CLIPConfig(embed_dim=32, image_resolution=48, vision_layers=3, vision_width=64,
                              vision_patch_size=16, transformer_width=64, transformer_heads=2,
                              transformer_layers=3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturb_(mini_clip.CLIP(CONFIG)).eval()


# (method, start_layer, start_layer_text): the text blocks before start_layer_text are what `prepare_texts`
# runs
SETTINGS = [("chefer", 1, 1), ("chefer", 0, 2), ("gradcam", -1, -1), ("rollout", 0, 1), ("attention", -1, 2),
            ("legrad", -2, -1)]


@pytest.mark.parametrize("method, start, start_text", SETTINGS)
def test_a_batch_with_prepared_texts_equals_one_image_at_a_time(model, method, start, start_text):
    """The numbers must not change: a batch of 5 images with the texts prepared once against each image
    alone with the texts given as strings. Only the order of sums may differ (batch shapes): fp32 tolerance
    over the longest reduction (the MLP's 4 x width) and the chain of blocks, forward and backward."""
    images = torch.randn(5, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    prepared = prepare_texts(model, TEXTS, method, start_text)
    batch = relevance(model, images, prepared, start, start_text, method)
    tol = tolerance(torch.float32, 4 * CONFIG.vision_width,
                    2 * (CONFIG.vision_layers + CONFIG.transformer_layers))
    for i in range(len(images)):
        alone = relevance(model, images[i: i + 1], TEXTS, start, start_text, method)
        assert max_rel_diff(batch.logits[i: i + 1], alone.logits) <= tol
        assert max_rel_diff(batch.image[i: i + 1], alone.image) <= tol
        if method != "legrad":
            for j in range(len(TEXTS)):
                assert max_rel_diff(batch.text[j][i: i + 1], alone.text[j]) <= tol
        if batch.image_matrix is not None:
            assert max_rel_diff(batch.image_matrix[i: i + 1], alone.image_matrix) <= tol
        assert batch.labels == alone.labels and torch.equal(batch.tokens, alone.tokens)


def test_prepared_texts_are_refused_for_other_settings(model):
    prepared = prepare_texts(model, TEXTS, "chefer", 1)
    with pytest.raises(ValueError, match="prepared for chefer, text block 1"):
        relevance(model, torch.zeros(1, 3, 48, 48), prepared, -1, 2, "chefer")
    with pytest.raises(ValueError, match="prepared for chefer"):
        relevance(model, torch.zeros(1, 3, 48, 48), prepared, -1, 1, "legrad")


def photos(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        size = (60 + 13 * k, 90 - 7 * k)  # landscape and portrait, odd sizes
        path = root / f"p{k}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def grids(results) -> list[np.ndarray]:
    return [np.array([t["grid"] for t in r.record["texts"]]) for r in results]


def test_folder_keeps_input_order_and_one_bad_image_fails_alone(model, tmp_path):
    paths = photos(tmp_path, 6)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    order = [paths[0], broken, *paths[1:]]
    threaded = list(explain_folder(model, order, TEXTS, tmp_path / "a", batch_size=4, workers=2))
    assert [r.path for r in threaded] == order
    assert threaded[1].error is not None and "broken.png" in threaded[1].error and threaded[1].record is None
    good = [r for r in threaded if r.error is None]
    assert len(good) == 6 and all(r.relevance is not None and not r.resumed for r in good)
    inline = list(explain_folder(model, paths, TEXTS, tmp_path / "b", batch_size=1, workers=0))
    tol = tolerance(torch.float32, 4 * CONFIG.vision_width,
                    2 * (CONFIG.vision_layers + CONFIG.transformer_layers))
    for a, b in zip(grids(good), grids(inline)):
        assert max_rel_diff(torch.from_numpy(a), torch.from_numpy(b)) <= tol
    for r in good:  # every output written, at the photo's size (below the default --max-size)
        for entry in r.record["texts"]:
            with Image.open(entry["overlay"]) as picture, Image.open(r.path) as photo:
                assert picture.size == photo.size and picture.format == "JPEG"


def test_folder_resume_skips_finished_images_and_shards_split_the_list(model, tmp_path):
    paths = photos(tmp_path, 5)
    out = tmp_path / "out"
    first = list(explain_folder(model, paths, TEXTS, out, resume=True, batch_size=2))
    again = list(explain_folder(model, paths, TEXTS, out, resume=True, batch_size=2))
    assert all(r.resumed for r in again) and [r.record for r in again] == [r.record for r in first]
    png = list(explain_folder(model, paths[:1], TEXTS, out, resume=True, format="png", max_size=40))
    assert not png[0].resumed  # another format and size: redone
    with Image.open(png[0].record["texts"][0]["overlay"]) as picture:
        assert picture.format == "PNG" and max(picture.size) == 40
    overlays = ["01-a-red-square.png", "02-a-blue-circle-on-grey.png", "03-a-green-triangle.png"]
    assert sorted(p.name for p in (out / "p0").iterdir())[:3] == overlays  # the jpegs removed
    halves = [list(explain_folder(model, paths, TEXTS, tmp_path / "s", shard=(k, 2))) for k in range(2)]
    assert [r.path for r in halves[0]] == paths[0::2] and [r.path for r in halves[1]] == paths[1::2]


def test_folder_refuses_bad_options_before_any_work(model, tmp_path):
    for options, words in (({"batch_size": 0}, "batch_size"), ({"workers": -1}, "workers"),
                           ({"max_size": -5}, "max_size"), ({"format": "gif"}, "format"),
                           ({"shard": (2, 2)}, "shard"), ({"method": "nope"}, "unknown method")):
        with pytest.raises(ValueError, match=words):
            next(explain_folder(model, [tmp_path / "x.png"], TEXTS, tmp_path / "out", **options))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="must be an int, got 2.0"):
        next(explain_folder(model, [tmp_path / "x.png"], TEXTS, tmp_path / "out", batch_size=2.0))
    prepared = prepare_texts(model, TEXTS, "chefer", 1)
    for options in ({"method": "rollout", "start_layer_text": 1}, {"start_layer_text": 2}):
        with pytest.raises(ValueError, match="texts were prepared for chefer, text block 1"):
            next(explain_folder(model, [tmp_path / "x.png"], TEXTS, tmp_path / "out", prepared=prepared,
                                **options))
    with pytest.raises(ValueError, match="prepared texts are 3 .* this run has 2"):
        next(explain_folder(model, [tmp_path / "x.png"], TEXTS[:2], tmp_path / "out", prepared=prepared,
                            start_layer_text=1))
    assert not (tmp_path / "out").exists()


def test_folder_with_texts_prepared_before_writes_the_same_records(model, tmp_path):
    """The CLI prepares the texts (and checks them) before any image is read, and hands them over: the
    records are those of a run that prepares them itself, number for number."""
    paths = photos(tmp_path, 3)
    alone = list(explain_folder(model, paths, TEXTS, tmp_path / "a", method="rollout", start_layer_text=1))
    prepared = prepare_texts(model, TEXTS, "rollout", 1)
    handed = list(explain_folder(model, paths, TEXTS, tmp_path / "b", method="rollout", start_layer_text=1,
                                 prepared=prepared))
    assert len(alone) == len(handed) == 3
    for a, b in zip(alone, handed):
        assert a.error is None and b.error is None
        for record in (a.record, b.record):  # the output folders differ, nothing else
            record["sheet"] = None
            for entry in record["texts"]:
                entry["overlay"] = None
        assert a.record == b.record


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_log_is_a_line_every_few_seconds_with_rate_and_time_left():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(100, "log", stream, every=30, clock=clock)
    for n in range(1, 21):
        clock.now = n * 5.0  # 5 s an image
        progress.done(n, Path(f"p{n}.png"), worked=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # at 30, 60, 90 s
    assert lines[0] == "mini_clip.explain: progress: 6/100 images, 0.20 images/s, 7 min 50 s left"


def test_progress_on_a_terminal_shows_done_rate_and_time_left_and_erases_itself():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(10, "terminal", stream, clock=clock)
    progress.done(1, Path("resumed.png"), worked=False)  # resumed: no rate yet
    clock.now = 4.0
    progress.done(2, Path("a.png"), worked=True)
    progress.clear()
    assert stream.getvalue() == ("\r\033[K[1/10] -- images/s  resumed.png"
                                 "\r\033[K[2/10] 0.25 images/s, 32 s left  a.png\r\033[K")
    quiet = io.StringIO()
    Progress(10, None, quiet).done(1, Path("a.png"), worked=True)
    assert quiet.getvalue() == ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_split_the_images_and_process_0_merges(tmp_path, tiny_weights):
    paths = photos(tmp_path, 5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    common = [str(tmp_path), "--weights", str(tiny_weights), *[a for t in TEXTS for a in ("--text", t)],
              "--quiet"]
    runner = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
              "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "mini_clip.explain"]
    proc = subprocess.run([*runner, *common, "--out", str(tmp_path / "two")], capture_output=True, text=True,
                          env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "mini_clip.explain", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert one.returncode == 0, one.stderr
    two = json.loads((tmp_path / "two" / "results.json").read_text())["results"]
    alone = json.loads((tmp_path / "one" / "results.json").read_text())["results"]
    assert [r["image"] for r in two] == [str(p) for p in paths]  # every image once, in input order
    tol = tolerance(torch.float32, 4 * TINY["vision_width"],
                    2 * (TINY["vision_layers"] + TINY["transformer_layers"]))
    for a, b in zip(two, alone):  # other batches (rank 0: images 0, 2, 4): only the order of sums differs
        got, want = (torch.tensor([t["grid"] for t in r["texts"]]) for r in (a, b))
        assert max_rel_diff(got, want) <= tol
        assert all(Path(t["overlay"]).is_file() for t in a["texts"]) and Path(a["sheet"]).is_file()
