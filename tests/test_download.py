"""mini_clip.download against a real HTTP server on loopback (these machines have no internet), and golden
tests on OpenAI's real ViT-B/32 weights, skipped unless they are in the cache.

The server serves a TorchScript checkpoint traced from OpenAI's own `CLIP` (random weights, small shape),
registered under a fake model name with its true SHA-256, and supports Range requests (206 + Content-Range)
like Azure's blob storage. Switches on the server cut a response half-way, ignore Range, or stall.
"""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mini_clip
from mini_clip import WeightsError, pretrained
from mini_clip.image import load_image, resize_and_crop
from mini_clip.pretrained import DownloadError, fetch

from reference import SHAPES, max_rel_diff, openai_clip, random_tokens, tolerance

NAME, FILE = "ViT-T/test", "ViT-T-test.pt"
CONVERTED = "ViT-T-test.safetensors"
REPO = Path(__file__).resolve().parents[1]
CLIP_PNG = Path(__file__).resolve().parents[2] / "shared" / "data" / "CLIP.png"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, openai_model):
    """A traced OpenAI CLIP as OpenAI publishes them: its bytes, SHA-256, inputs and reference logits."""
    model = openai_clip(openai_model, SHAPES[1])
    images = torch.randn(2, 3, SHAPES[1][1], SHAPES[1][1], generator=torch.Generator().manual_seed(0))
    tokens = random_tokens(3, SHAPES[1][5])
    path = tmp_path_factory.mktemp("ckpt") / FILE
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings
        # check_trace off: OpenAI's blocks reassign self.attn_mask on first call, so re-traces differ
        torch.jit.save(torch.jit.trace(model, (images, tokens), check_trace=False), str(path))
        logits = model(images, tokens)[0]
    data = path.read_bytes()
    return SimpleNamespace(data=data, sha=hashlib.sha256(data).hexdigest(), inputs=(images, tokens),
                           logits=logits)


@pytest.fixture
def server():
    """A loopback HTTP server; `files` maps URL paths to bytes, `ranges` records each GET's Range header."""
    state = SimpleNamespace(files={}, ranges=[], cut=0, ignore_range=False, stall=0.0)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

        def do_GET(self):
            state.ranges.append(self.headers.get("Range"))
            time.sleep(state.stall)
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            start = 0
            if self.headers.get("Range") and not state.ignore_range:
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))  # the full length, even when cut
            self.end_headers()
            body = data[start:]
            if state.cut:
                state.cut -= 1
                body = body[: len(body) // 2]  # then the connection closes (HTTP/1.0)
            try:
                self.wfile.write(body)
            except OSError:  # the client gave up (timeout test)
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.block_on_close = False  # a stalled handler must not hold up teardown
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)  # quick shutdown
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_port}/"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def served(monkeypatch, server, checkpoint):
    """The checkpoint registered as NAME and served at its <sha>/<file> path."""
    monkeypatch.setitem(pretrained.MODELS, NAME, (checkpoint.sha, FILE))
    server.files[f"/{checkpoint.sha}/{FILE}"] = checkpoint.data
    monkeypatch.delenv("MINI_CLIP_OFFLINE", raising=False)
    return server


def check_logits(path, checkpoint):
    model, _ = mini_clip.load(path)
    with torch.no_grad():
        got = model(*checkpoint.inputs)[0]
    shape = SHAPES[1]  # the checkpoint's: an MLP's sum over 4 * width, both towers' blocks
    tol = tolerance(torch.float32, 4 * max(shape[3], shape[7]), shape[2] + shape[9])
    assert max_rel_diff(got, checkpoint.logits) < tol


def test_fresh_download_verifies_and_converts(tmp_path, served, checkpoint, capsys):
    path = fetch(NAME, tmp_path, served.url, progress=True)
    assert path == tmp_path / CONVERTED
    assert (tmp_path / FILE).read_bytes() == checkpoint.data  # the .pt is kept beside the conversion
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE, CONVERTED]
    assert "100% " in capsys.readouterr().err
    check_logits(path, checkpoint)
    assert fetch(NAME, tmp_path, served.url) == path and len(served.ranges) == 1  # cached: no request


def test_cached_pt_is_reverified_then_converted_without_network(tmp_path, served, checkpoint):
    (tmp_path / FILE).write_bytes(checkpoint.data)
    check_logits(fetch(NAME, tmp_path, served.url), checkpoint)
    assert served.ranges == []
    (tmp_path / CONVERTED).unlink()
    damaged = bytearray(checkpoint.data)
    damaged[len(damaged) // 2] ^= 1
    (tmp_path / FILE).write_bytes(damaged)
    with pytest.raises(DownloadError, match=f"SHA-256 is {hashlib.sha256(damaged).hexdigest()}, "
                                            f"expected {checkpoint.sha}"):
        fetch(NAME, tmp_path, served.url)
    assert served.ranges == []


def test_cut_off_download_resumes_with_range(tmp_path, served, checkpoint):
    served.cut = 1  # first request only
    half, n = len(checkpoint.data) // 2, len(checkpoint.data)
    closed = f"connection closed after {half} of {n} bytes; run again to resume"
    with pytest.raises(DownloadError, match=closed):
        fetch(NAME, tmp_path, served.url, progress=False)
    assert (tmp_path / (FILE + ".part")).stat().st_size == half
    assert not (tmp_path / FILE).exists()
    path = fetch(NAME, tmp_path, served.url, progress=False)
    assert served.ranges == [None, f"bytes={half}-"]
    assert (tmp_path / FILE).read_bytes() == checkpoint.data
    assert not (tmp_path / (FILE + ".part")).exists()
    check_logits(path, checkpoint)


@pytest.mark.parametrize("part, ignore_range", [("junk", True), ("complete", False)])
def test_resume_when_server_ignores_range_or_part_is_complete(tmp_path, served, checkpoint, part,
                                                              ignore_range):
    """200 to a Range request: restart from zero; 416 (nothing after the part): verify the part as it is."""
    served.ignore_range = ignore_range
    (tmp_path / (FILE + ".part")).write_bytes(b"x" * 1000 if part == "junk" else checkpoint.data)
    fetch(NAME, tmp_path, served.url, progress=False)
    assert served.ranges == [f"bytes={1000 if part == 'junk' else len(checkpoint.data)}-"]
    assert (tmp_path / FILE).read_bytes() == checkpoint.data


def test_wrong_hash_is_refused_and_cleaned_up(tmp_path, monkeypatch, served, checkpoint):
    wrong = "0" * 64
    monkeypatch.setitem(pretrained.MODELS, NAME, (wrong, FILE))
    served.files[f"/{wrong}/{FILE}"] = checkpoint.data
    (tmp_path / "ViT-B-32.safetensors").write_bytes(b"someone else's file")
    with pytest.raises(DownloadError) as e:
        fetch(NAME, tmp_path, served.url, progress=False)
    assert f"SHA-256 mismatch: expected {wrong}, got {checkpoint.sha}" in str(e.value)
    assert f"{served.url}{wrong}/{FILE}" in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["ViT-B-32.safetensors"]  # no .part, no .pt, other kept


def test_404_is_one_clear_line(tmp_path, monkeypatch, server, checkpoint):
    monkeypatch.setitem(pretrained.MODELS, NAME, (checkpoint.sha, FILE))  # registered but not served
    with pytest.raises(DownloadError) as e:
        fetch(NAME, tmp_path, server.url, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{server.url}{checkpoint.sha}/{FILE}: HTTP 404") and "\n" not in msg
    assert "--base-url" in msg
    assert isinstance(e.value, WeightsError)  # so the CLIs' handling of weights errors catches it


def test_refused_connection_is_one_clear_line(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setitem(pretrained.MODELS, NAME, (checkpoint.sha, FILE))
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError) as e:
        fetch(NAME, tmp_path, f"http://127.0.0.1:{port}/", progress=False)
    msg = str(e.value)
    assert msg.startswith(f"http://127.0.0.1:{port}/{checkpoint.sha}/{FILE}: could not download (")
    assert "refused" in msg.lower() and "\n" not in msg
    assert not (tmp_path / (FILE + ".part")).exists()


def test_timeout_is_one_clear_line(tmp_path, monkeypatch, served):
    monkeypatch.setattr(pretrained, "TIMEOUT_S", 0.2)
    served.stall = 1.0
    with pytest.raises(DownloadError, match=r"could not download \(.*timed out") as e:
        fetch(NAME, tmp_path, served.url, progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_never_opens_a_socket(tmp_path, monkeypatch, served, checkpoint, how):
    def no_network(*args, **kwargs):
        raise AssertionError("offline mode opened a connection")

    offline = True if how == "argument" else None
    if how == "environment":
        monkeypatch.setenv("MINI_CLIP_OFFLINE", "1")
    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(DownloadError) as e:
        fetch(NAME, tmp_path, served.url, offline=offline)
    assert str(e.value).startswith(f"{tmp_path / FILE}: missing, and offline mode is on")
    assert f"python -m mini_clip.download {NAME}" in str(e.value)
    (tmp_path / FILE).write_bytes(checkpoint.data)  # a cache copied from elsewhere
    path = fetch(NAME, tmp_path, served.url, offline=offline)
    assert fetch(NAME, tmp_path, served.url, offline=offline) == path == tmp_path / CONVERTED
    check_logits(path, checkpoint)
    assert served.ranges == []


def run_cli(*args, code=None):
    env = {k: v for k, v in os.environ.items() if k not in ("MINI_CLIP_OFFLINE", "MINI_CLIP_CACHE")}
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "mini_clip.download"]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)


def test_cli_fetches_and_prints_the_path(tmp_path, served, checkpoint):
    # the fake name exists only in this process: register it in the child, then run the CLI's main()
    code = (f"import sys, mini_clip.pretrained as p, mini_clip.download as d; "
            f"p.MODELS[{NAME!r}] = ({checkpoint.sha!r}, {FILE!r}); "
            "sys.exit(d.main(sys.argv[1:]))")
    result = run_cli(NAME, "--cache", tmp_path, "--base-url", served.url, code=code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tmp_path / CONVERTED}\n"
    assert (tmp_path / FILE).read_bytes() == checkpoint.data


def test_cli_errors_are_one_line(tmp_path, server):
    bad = run_cli("ViT-B/99", "--cache", tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    assert "unknown model 'ViT-B/99'; valid names: ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px" in bad.stderr
    missing = run_cli("ViT-B/32", "--cache", tmp_path, "--base-url", server.url)  # the server has no files
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert f"{server.url}{pretrained.MODELS['ViT-B/32'][0]}/ViT-B-32.pt: HTTP 404" in missing.stderr


def test_load_by_name(tmp_path, monkeypatch, checkpoint):
    with pytest.raises(WeightsError, match=r"unknown model 'ViT-B/99'.*valid names: ViT-B/32, ViT-B/16, "
                                           r"ViT-L/14, ViT-L/14@336px") as by_load:
        mini_clip.load("ViT-B/99")
    with pytest.raises(WeightsError) as by_name:
        pretrained.check_name("ViT-B/99")
    assert str(by_load.value) == str(by_name.value)  # one check of a name, one message
    monkeypatch.setenv("MINI_CLIP_CACHE", str(tmp_path))
    monkeypatch.setenv("MINI_CLIP_OFFLINE", "1")
    with pytest.raises(DownloadError, match=f"{tmp_path / 'ViT-B-32.pt'}: missing, and offline"):
        mini_clip.load("ViT-B/32")
    # the name resolves to the cache's converted file (here a stand-in: the small checkpoint converted)
    (tmp_path / FILE).write_bytes(checkpoint.data)
    mini_clip.save(mini_clip.load(tmp_path / FILE)[0], tmp_path / "ViT-B-32.safetensors")
    check_logits("ViT-B/32", checkpoint)


# ---- golden tests on OpenAI's real weights (skipped here: these machines have no internet) ----

@pytest.fixture(scope="module")
def real_b32():
    """OpenAI's ViT-B/32 from the cache (converted or the original .pt) and the README's CLIP.png."""
    folder = pretrained.cache_dir()
    found = [p for p in (folder / "ViT-B-32.safetensors", folder / "ViT-B-32.pt") if p.exists()]
    if not found:
        pytest.skip(f"needs {folder / 'ViT-B-32.safetensors'} (or ViT-B-32.pt): download ViT-B/32 with "
                    "python -m mini_clip.download ViT-B/32 (these machines have no internet)")
    if not CLIP_PNG.exists():
        pytest.skip(f"needs {CLIP_PNG}, the image of OpenAI's README example")
    model, preprocess = mini_clip.load(found[0])
    return model, preprocess(CLIP_PNG)


def test_real_b32_readme_example(real_b32):
    """OpenAI's README: ViT-B/32 on CLIP.png gives probs ≈ [0.9927937, 0.00421068, 0.00299572]."""
    model, image = real_b32
    with torch.no_grad():
        probs = model(image[None], mini_clip.tokenize(["a diagram", "a dog", "a cat"]))[0].softmax(dim=-1)
    assert torch.allclose(probs[0], torch.tensor([0.9927937, 0.00421068, 0.00299572]), atol=1e-3), probs


def test_real_b32_relevance_lies_on_the_drawing(real_b32):
    """Chefer's map for "a diagram" puts its mass where the diagram is drawn.

    CLIP.png's background is transparent, which RGB conversion (OpenAI's and ours) turns black; the boxes,
    arrows and text are the drawing. Per patch, take the fraction of drawn pixels (any channel > 25 of 255)
    in the crop the model sees. A uniform map's mass-weighted drawn fraction is the mean over patches
    (0.41 here); the relevance map must put more of its mass on drawn pixels than that.
    """
    model, image = real_b32
    heat = mini_clip.relevance(model, image, ["a diagram"]).image[0, 0].double()  # (7, 7)
    assert torch.isfinite(heat).all() and (heat >= 0).all() and heat.sum() > 0
    crop = np.asarray(resize_and_crop(load_image(CLIP_PNG), model.config.image_resolution)[0])
    g, p = heat.shape[0], model.config.vision_patch_size
    drawn = torch.from_numpy((crop.max(axis=2) > 25).reshape(g, p, g, p).mean(axis=(1, 3)))
    weighted = float((heat * drawn).sum() / heat.sum())
    assert weighted > float(drawn.mean()), (weighted, float(drawn.mean()), heat)
