"""`python -m mini_clip.explain` end to end, in subprocesses, with a tiny random model saved by the tests.

The shipped scenes model is not used: the CLI is pointed at a small random CLIP with --weights, so these tests
do not depend on it. Each real run costs a few seconds of start-up (importing torch), so the bad-input matrix
and the runs that build on each other (--resume, reruns into one --out) go to ONE long-lived subprocess that
calls `main(argv)` once per request with stdout and stderr captured at the file descriptors (an escaping
exception is printed there as a traceback, which the tests reject); the good runs, the mixed batch, the first
--resume and the terminal (a pseudo-terminal) are separate `python -m mini_clip.explain` processes.
"""
import io
import json
import math
import os
import pty
import re
import subprocess
import sys
import textwrap
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import mini_clip

from conftest import TINY

TEXTS = ["a red square", "a blue circle on grey", "a green triangle"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: more threads only add overhead


def cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mini_clip.explain", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def tables(stdout: str) -> list[str]:
    """The report's lines after its first block, the settings line."""
    head, _, rest = stdout.partition("\n\n")
    assert head.startswith("settings: "), stdout
    return rest.splitlines()


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def weights(tiny_weights) -> Path:
    return tiny_weights


def draw(path: Path, size: tuple[int, int], shape: str, colour: tuple[int, int, int]) -> Path:
    image = Image.new("RGB", size, (128, 128, 128))
    w, h = size
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    d = ImageDraw.Draw(image)
    if shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "circle":
        d.ellipse(box, fill=colour)
    else:
        d.polygon([(w // 2, h // 5), (w // 5, 4 * h // 5), (4 * w // 5, 4 * h // 5)], fill=colour)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pictures")
    folder = root / "folder"
    folder.mkdir()
    found = {
        "landscape": draw(folder / "landscape.png", (120, 80), "square", (220, 30, 30)),
        "square": draw(folder / "square.jpg", (64, 64), "circle", (30, 30, 220)),
        "portrait": draw(root / "portrait.png", (70, 110), "triangle", (30, 200, 30)),
        "folder": folder,
    }
    (folder / "notes.txt").write_text("not an image: a directory means its images only")
    return found


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, weights, pictures):
    """A directory and a file, three texts, --json: (process, out, results.json as first written)."""
    out = tmp_path_factory.mktemp("good") / "out"
    args = [pictures["folder"], pictures["portrait"], "--weights", weights, "--out", out, "--json"]
    proc = cli(*args, *[a for t in TEXTS for a in ("--text", t)])
    assert proc.returncode == 0, proc.stderr
    return proc, out, json.loads((out / "results.json").read_text()), args


def test_run_writes_overlays_at_the_original_size_and_a_sheet(good_run, pictures):
    proc, out, document, _ = good_run
    assert "Traceback" not in proc.stderr and error_lines(proc.stderr) == []
    results = document["results"]
    names = [Path(r["image"]).name for r in results]
    assert names == ["landscape.png", "square.jpg", "portrait.png"]  # the folder's, sorted; then the file
    for record in results:
        with Image.open(record["image"]) as original:
            size = original.size
        assert (record["width"], record["height"]) == size
        assert [t["text"] for t in record["texts"]] == TEXTS
        for entry in record["texts"]:
            assert Path(entry["overlay"]).is_file()
            with Image.open(entry["overlay"]) as picture:
                assert picture.size == size and picture.format == "JPEG"  # the default --format
        assert Path(record["sheet"]).is_file()
        with Image.open(record["sheet"]) as sheet:
            sheet.load()
            fitted = [round(side * 256 / max(size)) for side in size]  # each picture fits a 256 x 256 box
            assert sheet.height > fitted[1] and sheet.width >= (len(TEXTS) + 1) * fitted[0]
            assert sheet.width <= 8 + (len(TEXTS) + 1) * (256 + 8)  # four panels, one row
    assert temp_files(out) == []


def test_json_on_stdout_equals_results_json_and_states_the_settings(good_run, weights):
    proc, out, document, _ = good_run
    assert json.loads(proc.stdout) == document
    settings = document["settings"]
    assert settings["weights"] == str(weights)
    assert settings["method"] == "chefer"
    for key in ("start_layer", "start_layer_text", "signed", "truncate"):
        assert key in settings


def test_json_agrees_with_relevance_called_directly(good_run, weights):
    _, _, document, _ = good_run
    model, _ = mini_clip.load(weights)
    for record in document["results"]:
        x = mini_clip.preprocess(mini_clip.load_image(record["image"]), model.config.image_resolution)
        rel = mini_clip.relevance(model, x[None], TEXTS)
        for j, entry in enumerate(record["texts"]):
            assert entry["logit"] == pytest.approx(float(rel.logits[0, j]), abs=1e-5)
            assert entry["prob"] == pytest.approx(float(rel.probs[0, j]), abs=1e-5)
            np.testing.assert_allclose(np.array(entry["grid"]), rel.image[0, j].numpy(), atol=1e-5)
            assert [t["token"] for t in entry["tokens"]] == rel.labels[j]
            scores = [t["relevance"] for t in entry["tokens"]]
            np.testing.assert_allclose(scores, rel.text[j][0].numpy(), atol=1e-5)
        assert math.isclose(sum(e["prob"] for e in record["texts"]), 1.0, abs_tol=1e-5)
        assert len(record["crop_box"]) == 4


def test_resume_skips_finished_images_and_still_lists_all(good_run, tmp_path):
    _, out, first, args = good_run
    portrait = out / "portrait"
    (portrait / "result.json").unlink()  # as if the run had stopped before finishing this image
    finished = {p: p.stat().st_mtime_ns for p in files_in(out) if p.parent.name in ("landscape", "square")}
    assert len(finished) == 2 * (len(TEXTS) + 2)
    proc = cli(*[a for a in args if a != "--json"], "--resume", *[a for t in TEXTS for a in ("--text", t)])
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"
    assert (portrait / "result.json").exists()
    document = json.loads((out / "results.json").read_text())
    assert [r["image"] for r in document["results"]] == [r["image"] for r in first["results"]]
    assert "portrait.png" in proc.stdout  # only the redone image reported
    assert "landscape.png" not in proc.stdout
    assert temp_files(out) == []


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, weights, pictures):
    root = tmp_path_factory.mktemp("mixed")
    bad = root / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    out = root / "out"
    proc = cli(pictures["portrait"], bad, pictures["folder"] / "landscape.png", "--weights", weights,
               "--out", out, *[a for t in TEXTS for a in ("--text", t)])
    return proc, out


def test_mixed_batch_explains_the_good_images_and_reports_the_bad(mixed_run):
    proc, out = mixed_run
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert any("broken.png" in line for line in lines), proc.stderr
    assert len(lines) == 2  # the image's own line and the summary
    document = json.loads((out / "results.json").read_text())
    assert [Path(r["image"]).name for r in document["results"]] == ["portrait.png", "landscape.png"]
    for name in ("portrait", "landscape"):
        assert (out / name / "result.json").exists() and (out / name / "sheet.png").exists()
    assert not (out / "broken").exists()
    assert temp_files(out) == []


def test_terminal_table_sorts_texts_best_first(mixed_run, weights, pictures):
    proc, _ = mixed_run
    model, _ = mini_clip.load(weights)
    blocks = [b for b in proc.stdout.split("\n\n") if b.strip()]
    assert len(blocks) == 3
    assert blocks[0] == ("settings: chefer, image blocks 1..1, text blocks 1..1 "
                         "(the rest the method's defaults)")
    for block, name in zip(blocks[1:], ("portrait", "landscape")):
        lines = block.splitlines()
        assert lines[0].endswith(f"{name}.png") and lines[1].split() == ["prob", "logit", "text"]
        rows = lines[2: 2 + len(TEXTS)]
        probs = [float(row.split()[0].rstrip("%")) for row in rows]
        texts = [row.split(None, 2)[2] for row in rows]
        assert sorted(texts) == sorted(TEXTS) and probs == sorted(probs, reverse=True)
        assert sum(probs) == pytest.approx(100, abs=0.05)
        path = pictures["portrait"] if name == "portrait" else pictures["folder"] / "landscape.png"
        rel = mini_clip.relevance(model, mini_clip.preprocess(path, 32)[None], TEXTS)
        assert texts[0] == TEXTS[int(rel.probs[0].argmax())]
        assert f"words for {texts[0]!r}:" in block


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: one line on stderr, the right exit status, no traceback, nothing left in --out

SERVER = textwrap.dedent("""
    import json, os, sys, tempfile, traceback
    from mini_clip.explain import main

    replies = os.fdopen(os.dup(1), "w")
    for request in sys.stdin:
        argv = json.loads(request)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            sys.stdout.flush(); sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
            try:
                try:
                    rc = main(argv)
                except SystemExit as e:  # argparse's --help
                    rc = e.code if isinstance(e.code, int) else int(e.code is not None)
                except BaseException:
                    traceback.print_exc()
                    rc = "escaped"
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os.dup2(saved[0], 1); os.dup2(saved[1], 2)
                os.close(saved[0]); os.close(saved[1])
            out.seek(0); err.seek(0)
            replies.write(json.dumps({"rc": rc, "stdout": out.read().decode(errors="replace"),
                                      "stderr": err.read().decode(errors="replace")}) + "\\n")
            replies.flush()
""")


class Explain:
    """`main(argv)` of the CLI run in one long-lived subprocess, a request per run, output captured at the
    file descriptors: torch's import is paid once, so runs that depend on each other (--resume, reruns) are
    cheap."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)

    def __call__(self, *args, timeout: float = 120) -> dict:
        """{"rc": exit status or "escaped", "stdout": ..., "stderr": ...} of one run."""
        self.proc.stdin.write(json.dumps([str(a) for a in args]) + "\n")  # lone surrogates travel as escapes
        self.proc.stdin.flush()
        reply = []
        reader = threading.Thread(target=lambda: reply.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not reply or not reply[0]:
            self.proc.kill()
            raise AssertionError(f"no answer within {timeout} s for {args}")
        return json.loads(reply[0])


@pytest.fixture(scope="module")
def explain():
    server = Explain()
    yield server
    server.proc.stdin.close()
    server.proc.wait(timeout=60)


GOOD = "<good image>"
W = "<weights>"
# name: (arguments (--out is added), exit status, words the error line must contain)
BAD = {
    "missing image": (["missing.png", "--text", "a", "--weights", W], 1, ["missing.png", "no such file"]),
    "text file named .png": (["<text.png>", "--text", "a", "--weights", W], 1,
                             ["text.png", "not a readable image"]),
    "empty .jpg": (["<empty.jpg>", "--text", "a", "--weights", W], 1, ["empty.jpg"]),
    "truncated png": (["<truncated.png>", "--text", "a", "--weights", W], 1, ["truncated.png", "truncated"]),
    "truncated tiff": (["<truncated.tif>", "--text", "a", "--weights", W], 1, ["truncated.tif"]),  # PIL warns
    "no text": ([GOOD, "--weights", W], 2, ["no text"]),
    "empty text": ([GOOD, "--text", "", "--weights", W], 2, ["text 1", "empty"]),
    "whitespace text": ([GOOD, "--text", "ok", "--text", " \t ", "--weights", W], 2,
                        ["text 2", "whitespace"]),
    "text too long": ([GOOD, "--text", "a", "--text", "dog " * 80, "--weights", W], 2,
                      ["text 2 ('dog dog", "82 tokens", "context is 77", "--truncate"]),
    "missing texts file": ([GOOD, "--texts-file", "<missing.txt>", "--weights", W], 2, ["--texts-file"]),
    "missing weights": ([GOOD, "--text", "a", "--weights", "<missing.safetensors>"], 1,
                        ["missing.safetensors"]),
    "random weights": ([GOOD, "--text", "a", "--weights", "<random.safetensors>"], 1, ["random.safetensors"]),
    "start layer too big": ([GOOD, "--text", "a", "--weights", W, "--start-layer", "2"], 2,
                            ["--start-layer 2", "0 .. 1", "-2 .. -1"]),
    "start layer too small": ([GOOD, "--text", "a", "--weights", W, "--start-layer-text", "-3"], 2,
                              ["--start-layer-text -3", "0 .. 1", "-2 .. -1"]),
    "signed with rollout": ([GOOD, "--text", "a", "--weights", W, "--method", "rollout", "--signed"], 2,
                            ["--signed"]),
    "unknown method": ([GOOD, "--text", "a", "--weights", W, "--method", "magic"], 2, ["magic"]),
    "unknown flag": ([GOOD, "--text", "a", "--weights", W, "--frobnicate"], 2, ["--frobnicate", "--help"]),
    "no image": (["--text", "a", "--weights", W], 2, ["IMAGE"]),
    "folder without images": (["<empty folder>", "--text", "a", "--weights", W], 2, ["no images"]),
    "out under a regular file": ([GOOD, "--text", "a", "--weights", W, "--out", "<regular>/out"], 1,
                                 ["--out", "cannot write"]),
    "out is a regular file": ([GOOD, "--text", "a", "--weights", W, "--out", "<regular>"], 1,
                              ["--out", "regular"]),
    "device nonsense": ([GOOD, "--text", "a", "--weights", W, "--device", "nonsense"], 2,
                        ["nonsense", "cpu"]),
    "device cuda:99": ([GOOD, "--text", "a", "--weights", W, "--device", "cuda:99"], 2, ["cuda:99", "cpu"]),
    "device meta": ([GOOD, "--text", "a", "--weights", W, "--device", "meta"], 2, ["meta", "cpu"]),
    "texts file is a folder": ([GOOD, "--texts-file", "<empty folder>", "--weights", W], 2,
                               ["--texts-file", "not a regular file"]),
    "texts file is a fifo": ([GOOD, "--texts-file", "<fifo.txt>", "--weights", W], 2,
                             ["fifo.txt", "not a regular"]),
    "image is a fifo": (["<fifo.png>", "--text", "a", "--weights", W], 1, ["fifo.png", "not a regular file"]),
    "image is a device": (["/dev/zero", "--text", "a", "--weights", W], 1,
                          ["/dev/zero", "not a regular file"]),
    "missing image, odd name": (["<odd\nname\x1b[2J.png>", "--text", "a", "--weights", W], 1,
                                ["odd\\nname\\x1b[2J.png", "no such file"]),
    "text without tokens": ([GOOD, "--text", "\x1b\x07", "--weights", W], 2, ["text 1", "no words"]),
    "batch size 0": ([GOOD, "--text", "a", "--weights", W, "--batch-size", "0"], 2,
                     ["--batch-size", "at least 1"]),
    "negative max size": ([GOOD, "--text", "a", "--weights", W, "--max-size", "-1"], 2,
                          ["--max-size", "at least 0"]),
    "negative workers": ([GOOD, "--text", "a", "--weights", W, "--workers", "-2"], 2,
                         ["--workers", "at least 0"]),
    "unknown format": ([GOOD, "--text", "a", "--weights", W, "--format", "gif"], 2, ["--format", "gif"]),
}
if not torch.backends.mps.is_available():
    BAD["device mps"] = ([GOOD, "--text", "a", "--weights", W, "--device", "mps"], 2, ["mps", "cpu"])
EXTRA = {  # runs that must work, in the same driver
    "text too long, truncated": [GOOD, "--text", "dog " * 80, "--truncate", "--weights", W],
    "help": ["--help"],
    "resume, first texts": [GOOD, "--text", "a red square", "--weights", W, "--out", "<resume-out>"],
    "resume, other texts": [GOOD, "--text", "a blue circle", "--weights", W, "--out", "<resume-out>",
                            "--resume"],
    "one text": [GOOD, "--text", "a red square", "--weights", W],
    "bom and control characters": [GOOD, "--texts-file", "<bom.txt>", "--text", "one\ntwo\x1b[2J",
                                   "--weights", W],
    "odd file name": ["<odd-\udcff-\u202e.png>", "--text", "a shape", "--weights", W],
}


@pytest.fixture(scope="module")
def driver_runs(tmp_path_factory, weights, pictures, explain):
    root = tmp_path_factory.mktemp("bad")
    (root / "text.png").write_text("hello, I am text\n")
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.png").write_bytes(pictures["portrait"].read_bytes()[:200])
    tiff = io.BytesIO()
    Image.open(pictures["portrait"]).save(tiff, format="TIFF")
    (root / "truncated.tif").write_bytes(tiff.getvalue()[:32])  # PIL warns "Corrupt EXIF data" on the way
    (root / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "regular").write_text("a file, not a folder")
    (root / "empty folder").mkdir()
    os.mkfifo(root / "fifo.txt")  # reading would block forever
    os.mkfifo(root / "fifo.png")
    (root / "bom.txt").write_bytes("\ufeffa red square\n".encode())
    (root / "odd-\udcff-\u202e.png").write_bytes(pictures["portrait"].read_bytes())  # an undecodable byte
    names = {GOOD: str(pictures["portrait"]), W: str(weights)}

    def resolve(arg: str) -> str:
        if arg in names:
            return names[arg]
        if arg.startswith("<"):
            head, _, tail = arg[1:].partition(">")
            return str(root / head) + tail
        return arg

    runs, outs = {}, {}
    for name, argv in [*((n, c[0]) for n, c in BAD.items()), *EXTRA.items()]:
        argv = [resolve(a) for a in argv]
        if "--out" not in argv and name != "help":
            outs[name] = root / "outs" / name.replace(" ", "-")
            outs[name].mkdir(parents=True)  # exists and is empty: must stay so
            argv += ["--out", str(outs[name])]
        runs[name] = argv
    results = [explain(*argv, timeout=60) for argv in runs.values()]
    return dict(zip(runs, results)), outs, root


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_gives_one_line_and_the_right_status(driver_runs, name):
    runs, outs, root = driver_runs
    _, status, words = BAD[name]
    run = runs[name]
    assert run["rc"] == status, run
    assert "Traceback" not in run["stderr"]
    lines = error_lines(run["stderr"])
    assert len(lines) == 1, run["stderr"]
    assert lines[0].startswith("mini_clip.explain: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    if name in outs:
        assert list(outs[name].iterdir()) == [], f"{name} left files in --out"
    assert not (root / "regular" / "out").exists()


def test_truncate_makes_a_long_text_work(driver_runs):
    runs, outs, _ = driver_runs
    run = runs["text too long, truncated"]
    assert run["rc"] == 0 and error_lines(run["stderr"]) == [], run
    document = json.loads((outs["text too long, truncated"] / "results.json").read_text())
    tokens = document["results"][0]["texts"][0]["tokens"]
    assert len(tokens) == 75 and document["settings"]["truncate"] is True  # 77 minus start and end of text
    assert temp_files(outs["text too long, truncated"]) == []


def test_resume_redoes_an_image_finished_with_other_texts(driver_runs):
    runs, _, root = driver_runs
    assert runs["resume, first texts"]["rc"] == 0 and runs["resume, other texts"]["rc"] == 0
    document = json.loads((root / "resume-out" / "results.json").read_text())
    assert [t["text"] for t in document["results"][0]["texts"]] == ["a blue circle"]


def test_help_exits_0_and_shows_an_example(driver_runs):
    run = driver_runs[0]["help"]
    assert run["rc"] == 0 and run["stderr"] == ""
    assert "example" in run["stdout"] and "python -m mini_clip.explain" in run["stdout"]
    assert "--weights" in run["stdout"] and "--resume" in run["stdout"]


# ---------------------------------------------------------------------------------------------------------
# Field-hardening (issue 13): sizes, names, --resume, partial failures, the terminal


def texts_args(texts) -> list[str]:
    return [a for t in texts for a in ("--text", t)]


def test_sheet_is_bounded_whatever_the_aspect_ratio(tmp_path, weights, explain):
    """A 10000 x 1 photo used to give a sheet 5,120,024 px wide (every panel 256 px high): each panel now fits
    a 256 x 256 box and panels wrap into rows, so 20 texts over a sliver stay a small sheet, made quickly."""
    Image.new("RGB", (10000, 1), (200, 40, 40)).save(tmp_path / "wide.png")
    Image.new("RGB", (1, 10000), (40, 40, 200)).save(tmp_path / "tall.png")
    texts = [f"a picture number {k}" for k in range(20)]
    out = tmp_path / "out"
    start = time.monotonic()
    proc = explain(tmp_path / "wide.png", tmp_path / "tall.png", "--weights", weights, "--out", out,
                   "--quiet", *texts_args(texts))
    assert proc["rc"] == 0 and error_lines(proc["stderr"]) == [], proc["stderr"]
    assert time.monotonic() - start < 60
    for name, size in (("wide", (1024, 1)), ("tall", (1, 1024))):  # the default --max-size 1024
        with Image.open(out / name / "sheet.png") as sheet:
            assert sheet.width <= 1600 and sheet.height <= 4000, sheet.size  # 6 panels of 256 + gaps a row
            assert sheet.width * sheet.height < Image.MAX_IMAGE_PIXELS
        with Image.open(out / name / "01-a-picture-number-0.jpg") as picture:
            assert picture.size == size  # the photo's frame, its long side bounded


def test_names_derived_from_files_stay_inside_out(tmp_path, weights, pictures, explain):
    """'...png' (stem '..') used to write into the parent of --out; 'results.json.png' clashed with
    results.json. Every folder is a plain, distinct, visible child of --out, whatever the file name."""
    source = tmp_path / "in"
    source.mkdir()
    names = ["...png", "..png", ".hidden.png", "a\nb\x1b.png", "results.json.png", "RESULTS.JSON.png",
             "CON.png", "x" * 250 + ".png", "é" * 125 + ".png", " . .png"]
    for name in names:
        (source / name).write_bytes(pictures["portrait"].read_bytes())
    out = tmp_path / "deep" / "out"
    proc = explain(source, "--weights", weights, "--out", out, "--text", "a shape", "--json")
    assert proc["rc"] == 0 and error_lines(proc["stderr"]) == [], proc["stderr"]
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["out"]  # nothing written beside --out
    assert (out / "results.json").is_file()
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == len(names) and len({p.name.casefold() for p in folders}) == len(names)
    for folder in folders:
        assert not folder.name.startswith(".") and folder.name not in (".", "..")
        assert folder.name.strip() == folder.name
        assert not any(unicodedata.category(c)[0] == "C" for c in folder.name)
        assert len(os.fsencode(folder.name)) <= 255 - len(".sheet.png.9999999.tmp")  # room for temp files
        assert sorted(p.name for p in folder.iterdir()) == ["01-a-shape.jpg", "result.json", "sheet.png"]
    document = json.loads((out / "results.json").read_text())
    assert sorted(Path(r["image"]).name for r in document["results"]) == sorted(names)
    assert len({Path(r["sheet"]).parent for r in document["results"]}) == len(names)
    for record in document["results"]:
        assert Path(record["sheet"]).resolve().parent.parent == out.resolve()


def test_output_folders_are_unique_and_the_same_on_every_run(tmp_path, weights, pictures, explain):
    """x/a.png, x/a-3.png, y/a.png: y/a.png used to get 'a-3' and overwrite x/a-3.png's outputs."""
    for folder, name, picture in (("x", "a.png", "portrait"), ("x", "a-3.png", "square"),
                                  ("y", "a.png", "landscape")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(pictures[picture].read_bytes())
    x_a, x_a3, y_a = tmp_path / "x" / "a.png", tmp_path / "x" / "a-3.png", tmp_path / "y" / "a.png"
    out = tmp_path / "out"

    def folders(*images) -> dict[str, str]:
        proc = explain(*images, "--weights", weights, "--out", out, "--text", "a shape", "--json")
        assert proc["rc"] == 0, proc["stderr"]
        document = json.loads(proc["stdout"])
        for record in document["results"]:  # each sheet's record names its own image
            own = json.loads((Path(record["sheet"]).parent / "result.json").read_text())
            assert own["image"] == record["image"]
        return {r["image"]: Path(r["sheet"]).parent.name for r in document["results"]}

    first = folders(x_a, x_a3, y_a, tmp_path / "x", x_a)  # x/a.png named three times: explained once
    assert len(first) == 3 and len(set(first.values())) == 3
    assert first[str(x_a3)] == "a-3"  # no clash: the plain stem
    assert folders(y_a, x_a3, x_a) == first  # another order, the same folders


def test_resume_redoes_what_changed_and_survives_foreign_records(tmp_path, weights, pictures, explain):
    """--resume used to trust any result.json whose texts matched: another image of the same name, other
    settings, deleted overlays; a foreign result.json gave a KeyError traceback."""
    for k, picture in enumerate(("portrait", "landscape")):
        (tmp_path / f"d{k}").mkdir()
        (tmp_path / f"d{k}" / "photo.png").write_bytes(pictures[picture].read_bytes())
    other = tmp_path / "other.png"
    other.write_bytes(pictures["square"].read_bytes())
    local = tmp_path / "tiny.safetensors"
    local.write_bytes(weights.read_bytes())
    out = tmp_path / "out"

    def run(photo, *extra) -> set[str]:
        """The images explained (not skipped) by one run."""
        proc = explain(photo, other, "--weights", local, "--out", out, "--resume", *texts_args(TEXTS[:2]),
                       *extra)
        assert proc["rc"] == 0 and "Traceback" not in proc["stderr"], proc["stderr"]
        assert error_lines(proc["stderr"]) == [], proc["stderr"]
        return {Path(line).name for line in proc["stdout"].splitlines() if line.endswith(".png")}

    assert run(tmp_path / "d0" / "photo.png") == {"photo.png", "other.png"}
    assert run(tmp_path / "d0" / "photo.png") == set()  # all finished: nothing to do
    (out / "other" / "02-a-blue-circle-on-grey.jpg").unlink()
    assert run(tmp_path / "d1" / "photo.png") == {"photo.png", "other.png"}  # another photo; a lost overlay
    assert (out / "other" / "02-a-blue-circle-on-grey.jpg").is_file()
    redone = json.loads((out / "photo" / "result.json").read_text())
    assert redone["image"] == str(tmp_path / "d1" / "photo.png")
    rollout = ("--method", "rollout", "--start-layer", "1")  # other settings
    assert run(tmp_path / "d1" / "photo.png", *rollout) == {"photo.png", "other.png"}
    record = json.loads((out / "photo" / "result.json").read_text())
    assert run(tmp_path / "d1" / "photo.png", *rollout) == set()
    (out / "photo" / "result.json").write_text("[" * 100000)  # broken; nested past Python's recursion limit
    (out / "other" / "result.json").write_text(json.dumps({**record, "stamp": None, "texts": 5}))
    assert run(tmp_path / "d1" / "photo.png", *rollout) == {"photo.png", "other.png"}
    torch.manual_seed(1)  # other weights at the same path
    mini_clip.save(mini_clip.CLIP(mini_clip.CLIPConfig(**TINY)), local)
    assert run(tmp_path / "d1" / "photo.png", *rollout) == {"photo.png", "other.png"}
    assert temp_files(out) == []


def test_a_rerun_leaves_only_the_current_outputs_and_never_user_files(tmp_path, weights, pictures, explain):
    out = tmp_path / "out"
    proc = explain(pictures["portrait"], "--weights", weights, "--out", out, *texts_args(TEXTS))
    assert proc["rc"] == 0, proc["stderr"]
    (out / "portrait" / "notes.txt").write_text("mine")
    (out / "portrait" / "my-drawing.png").write_bytes(b"mine")
    proc = explain(pictures["portrait"], "--weights", weights, "--out", out, "--text", TEXTS[1])
    assert proc["rc"] == 0, proc["stderr"]
    assert sorted(p.name for p in (out / "portrait").iterdir()) == [
        "01-a-blue-circle-on-grey.jpg", "my-drawing.png", "notes.txt", "result.json", "sheet.png"]


def test_one_unwritable_output_fails_its_image_only(tmp_path, weights, pictures, explain):
    """A folder that cannot take an output used to abort the run at the first image, naming a temp file,
    with no results.json; 'results.json.png' ended the run with 'Is a directory'; a link planted in --out
    was followed out of it."""
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png", "results.json.png"):
        (source / name).write_bytes(pictures["portrait"].read_bytes())
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "a" / "sheet.png").mkdir(parents=True)  # a directory where a's sheet goes
    elsewhere.mkdir()
    (out / "b").symlink_to(elsewhere, target_is_directory=True)
    (out / "c").write_text("a file where c's folder goes")
    proc = explain(source, "--weights", weights, "--out", out, "--text", "a shape", "--quiet")
    assert proc["rc"] == 1 and "Traceback" not in proc["stderr"]
    lines = error_lines(proc["stderr"])
    assert len(lines) == 4, proc["stderr"]  # a, b, c, and the summary
    assert str(out / "a" / "sheet.png") in lines[0] and ".tmp" not in lines[0]
    assert str(out / "b") in lines[1] and "link" in lines[1] and list(elsewhere.iterdir()) == []
    assert str(out / "c") in lines[2] and "3 of 5" in lines[3]
    document = json.loads((out / "results.json").read_text())
    assert sorted(Path(r["image"]).name for r in document["results"]) == ["d.png", "results.json.png"]
    assert temp_files(out) == []

    (tmp_path / "out2" / "results.json").mkdir(parents=True)  # the run's own record cannot be written
    proc = explain(source / "d.png", "--weights", weights, "--out", tmp_path / "out2", "--text", "a shape",
                   "--quiet")
    lines = error_lines(proc["stderr"])
    assert proc["rc"] == 1 and len(lines) == 1 and str(tmp_path / "out2" / "results.json") in lines[0], proc
    assert (tmp_path / "out2" / "d" / "sheet.png").is_file() and temp_files(tmp_path / "out2") == []


def words_table(block: str) -> dict[str, list[tuple[str, str, float]]]:
    """Per text, its (word, bar, value) rows from one image's terminal block."""
    table, current = {}, None
    for line in block.splitlines():
        if line.startswith("  words for '"):
            current = table.setdefault(line[len("  words for '"):-2], [])
        elif current is not None and line.startswith("    "):
            word, bar, value = line.split()
            current.append((word, bar, float(value)))
    return table


def test_signed_words_share_one_scale_in_the_terminal_and_the_json(tmp_path, weights, pictures, explain):
    """--signed used to divide by the signed sum: the full bar could sit on a word against the text. Now each
    value is relevance / the text's largest |relevance|, stated in the header; '-' bars mark negatives."""
    out = tmp_path / "out"
    proc = explain(pictures["portrait"], "--weights", weights, "--out", out, "--signed", *texts_args(TEXTS))
    assert proc["rc"] == 0, proc["stderr"]
    assert "relevance / the text's largest |relevance|" in proc["stdout"]
    table = words_table(proc["stdout"])
    record = json.loads((out / "portrait" / "result.json").read_text())
    negatives = 0
    for entry in record["texts"]:
        raw = np.array([t["relevance"] for t in entry["tokens"]])
        want = raw / np.abs(raw).max()
        rows = table[entry["text"]]
        assert [w for w, _, _ in rows] == [t["token"] for t in entry["tokens"]]
        np.testing.assert_allclose([v for _, _, v in rows], want, atol=0.006)
        for (_, bar, _), value in zip(rows, want):
            assert len(bar) == 20 and bar.count("#" if value >= 0 else "-") == round(abs(value) * 20)
        negatives += int((want < 0).sum())
    assert negatives > 0  # the case the old scale got wrong is exercised


def screen(data: bytes) -> list[str]:
    """What a terminal shows for `data`: carriage return, line feed and erase-to-end-of-line (ESC [ K)."""
    lines, row, col = [""], 0, 0
    text = data.decode(errors="replace")
    k = 0
    while k < len(text):
        if text.startswith("\x1b[K", k):
            lines[row] = lines[row][:col]
            k += 3
            continue
        c = text[k]
        if c == "\r":
            col = 0
        elif c == "\n":
            row, col = row + 1, 0
            lines.append("")
        else:
            lines[row] = lines[row][:col].ljust(col) + c + lines[row][col + 1:]
            col += 1
        k += 1
    return lines


def test_progress_line_is_erased_before_results_and_errors(tmp_path, weights, pictures):
    """On a terminal, '[n/N] image' used to stay behind ('[1/3] a.png...'), errors and tables printed onto
    it."""
    long_name = tmp_path / ("a-long-name-" * 3 + ".png")
    long_name.write_bytes(pictures["portrait"].read_bytes())
    broken = tmp_path / "b.png"
    broken.write_bytes(b"not an image")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "mini_clip.explain", long_name, broken,
                               pictures["square"], "--weights", weights, "--out", tmp_path / "out",
                               "--text", "a shape"],
                              stdout=secondary, stderr=secondary, env=ENV, timeout=120)
        os.close(secondary)
        data = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other end is closed and all was read
                break
            if not chunk:
                break
            data += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 1
    shown = [line for line in screen(data) if line.strip()]
    assert not any(re.search(r"\[\d/3\]", line) for line in shown), shown
    assert "[2/3]" in data.decode(errors="replace")  # progress was shown, then erased
    errors = [line for line in shown if line.startswith("mini_clip.explain: error: ")]
    assert len(errors) == 2 and "b.png" in errors[0], shown
    assert any(line.endswith(long_name.name) for line in shown)
    assert any(line.endswith("square.jpg") for line in shown)


def test_one_text_says_its_probability_is_always_100_percent(driver_runs):
    run = driver_runs[0]["one text"]
    assert run["rc"] == 0 and error_lines(run["stderr"]) == [], run
    lines = tables(run["stdout"])
    assert lines[1].split() == ["logit", "prob", "text"]  # the logit first: the probability says nothing
    assert "always 100 %" in run["stdout"]


def test_texts_file_bom_is_dropped_and_control_characters_stay_on_one_line(driver_runs):
    runs, outs, _ = driver_runs
    run = runs["bom and control characters"]
    assert run["rc"] == 0 and error_lines(run["stderr"]) == [], run
    document = json.loads((outs["bom and control characters"] / "results.json").read_text())
    assert [t["text"] for t in document["results"][0]["texts"]] == ["one\ntwo\x1b[2J", "a red square"]
    lines = tables(run["stdout"])
    assert lines[1].split() == ["prob", "logit", "text"]
    rows = lines[2:4]
    assert sorted(row.split(None, 2)[2] for row in rows) == ["a red square", "one\\ntwo\\x1b[2J"]
    assert "\x1b" not in run["stdout"]


def test_an_odd_file_name_is_explained_and_printed_escaped(driver_runs):
    runs, outs, _ = driver_runs
    run = runs["odd file name"]
    assert run["rc"] == 0 and error_lines(run["stderr"]) == [], run
    assert tables(run["stdout"])[0].endswith("odd-\\udcff-\\u202e.png")
    folders = [p.name for p in outs["odd file name"].iterdir() if p.is_dir()]
    assert folders == ["odd-_-_"]


def test_settings_come_from_the_weights_unless_given_and_are_recorded(tmp_path, weights, pictures):
    model, _ = mini_clip.load(weights)
    model.recommended = {"method": "chefer", "start_layer": 0, "start_layer_text": 0}
    advised = tmp_path / "advised.safetensors"
    mini_clip.save(model, advised)
    proc = cli(pictures["square"], "--weights", advised, "--text", "a red square", "--out", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    assert tables(proc.stdout) and proc.stdout.startswith(
        "settings: chefer, image blocks 0..1, text blocks 0..1 (the rest as the weights recommend)\n")
    used = json.loads((tmp_path / "a" / "results.json").read_text())["settings"]
    assert (used["method"], used["start_layer"], used["start_layer_text"]) == ("chefer", 0, 0)
    assert used["recommended_by_weights"] == model.recommended
    proc = cli(pictures["square"], "--weights", advised, "--text", "a red square", "--out", tmp_path / "b",
               "--start-layer", "-1", "--method", "legrad")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("settings: legrad, image blocks 1..1 (given: --method, --start-layer)\n")
    assert "words: none (legrad explains the image only)" in proc.stdout
    record = json.loads((tmp_path / "b" / "results.json").read_text())
    assert record["settings"]["method"] == "legrad" and record["results"][0]["texts"][0]["tokens"] == []
    proc = cli(pictures["square"], "--weights", advised, "--text", "a red square", "--out", tmp_path / "c",
               "--method", "legrad", "--signed")
    assert proc.returncode == 2 and "--signed works with --method chefer only" in proc.stderr
