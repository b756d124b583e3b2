"""`python -m mini_clip.explain` end to end, in subprocesses, with a tiny random model saved by the tests.

The shipped scenes model is not used: the CLI is pointed at a small random CLIP with --weights, so these tests
do not depend on it. Each real run costs a few seconds of start-up (importing torch), so the bad-input matrix
runs in ONE subprocess that calls `main(argv)` once per case with stdout and stderr captured at the file
descriptors (an escaping exception is printed there as a traceback, which the tests reject); the good runs,
the mixed batch and --resume are separate `python -m mini_clip.explain` processes.
"""
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import mini_clip

TEXTS = ["a red square", "a blue circle on grey", "a green triangle"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: more threads only add overhead


def cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mini_clip.explain", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


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
    assert [Path(r["image"]).name for r in results] == ["landscape.png", "square.jpg", "portrait.png"]  # folder sorted
    for record in results:
        with Image.open(record["image"]) as original:
            size = original.size
        assert (record["width"], record["height"]) == size
        assert [t["text"] for t in record["texts"]] == TEXTS
        for entry in record["texts"]:
            assert Path(entry["overlay"]).is_file()
            with Image.open(entry["overlay"]) as picture:
                assert picture.size == size and picture.format == "PNG"
        assert Path(record["sheet"]).is_file()
        with Image.open(record["sheet"]) as sheet:
            sheet.load()
            assert sheet.height > 256 and sheet.width >= (len(TEXTS) + 1) * round(size[0] * 256 / size[1])
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
            np.testing.assert_allclose([t["relevance"] for t in entry["tokens"]], rel.text[j][0].numpy(), atol=1e-5)
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
    assert "portrait.png" in proc.stdout and "landscape.png" not in proc.stdout  # only the redone image reported
    assert temp_files(out) == []


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, weights, pictures):
    root = tmp_path_factory.mktemp("mixed")
    bad = root / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 10)
    out = root / "out"
    proc = cli(pictures["portrait"], bad, pictures["folder"] / "landscape.png", "--weights", weights, "--out", out,
               *[a for t in TEXTS for a in ("--text", t)])
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
    assert len(blocks) == 2
    for block, name in zip(blocks, ("portrait", "landscape")):
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

DRIVER = textwrap.dedent("""
    import json, os, sys, tempfile, traceback
    from mini_clip.explain import main

    results = []
    for argv in json.loads(open(sys.argv[1]).read()):
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
            results.append({"rc": rc, "stdout": out.read().decode(errors="replace"),
                            "stderr": err.read().decode(errors="replace")})
    print(json.dumps(results))
""")

GOOD = "<good image>"
W = "<weights>"
# name: (arguments (--out is added), exit status, words the error line must contain)
BAD = {
    "missing image": (["missing.png", "--text", "a", "--weights", W], 1, ["missing.png", "no such file"]),
    "text file named .png": (["<text.png>", "--text", "a", "--weights", W], 1, ["text.png", "not a readable image"]),
    "empty .jpg": (["<empty.jpg>", "--text", "a", "--weights", W], 1, ["empty.jpg"]),
    "truncated png": (["<truncated.png>", "--text", "a", "--weights", W], 1, ["truncated.png", "truncated"]),
    "truncated tiff": (["<truncated.tif>", "--text", "a", "--weights", W], 1, ["truncated.tif"]),  # PIL warns
    "no text": ([GOOD, "--weights", W], 2, ["no text"]),
    "empty text": ([GOOD, "--text", "", "--weights", W], 2, ["text 1", "empty"]),
    "whitespace text": ([GOOD, "--text", "ok", "--text", " \t ", "--weights", W], 2, ["text 2", "whitespace"]),
    "text too long": ([GOOD, "--text", "dog " * 80, "--weights", W], 2, ["77", "--truncate"]),
    "missing texts file": ([GOOD, "--texts-file", "<missing.txt>", "--weights", W], 2, ["--texts-file"]),
    "missing weights": ([GOOD, "--text", "a", "--weights", "<missing.safetensors>"], 1, ["missing.safetensors"]),
    "random weights": ([GOOD, "--text", "a", "--weights", "<random.safetensors>"], 1, ["random.safetensors"]),
    "start layer too big": ([GOOD, "--text", "a", "--weights", W, "--start-layer", "2"], 2,
                            ["--start-layer 2", "0 .. 1", "-2 .. -1"]),
    "start layer too small": ([GOOD, "--text", "a", "--weights", W, "--start-layer-text", "-3"], 2,
                              ["--start-layer-text -3", "0 .. 1", "-2 .. -1"]),
    "signed with rollout": ([GOOD, "--text", "a", "--weights", W, "--method", "rollout", "--signed"], 2, ["--signed"]),
    "unknown method": ([GOOD, "--text", "a", "--weights", W, "--method", "magic"], 2, ["magic"]),
    "unknown flag": ([GOOD, "--text", "a", "--weights", W, "--frobnicate"], 2, ["--frobnicate", "--help"]),
    "no image": (["--text", "a", "--weights", W], 2, ["IMAGE"]),
    "folder without images": (["<empty folder>", "--text", "a", "--weights", W], 2, ["no images"]),
    "out under a regular file": ([GOOD, "--text", "a", "--weights", W, "--out", "<regular>/out"], 1,
                                 ["--out", "cannot write"]),
}
EXTRA = {  # runs that must work, in the same driver
    "text too long, truncated": [GOOD, "--text", "dog " * 80, "--truncate", "--weights", W],
    "help": ["--help"],
    "resume, first texts": [GOOD, "--text", "a red square", "--weights", W, "--out", "<resume-out>"],
    "resume, other texts": [GOOD, "--text", "a blue circle", "--weights", W, "--out", "<resume-out>", "--resume"],
}


@pytest.fixture(scope="module")
def driver_runs(tmp_path_factory, weights, pictures):
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
    cases = root / "cases.json"
    cases.write_text(json.dumps(list(runs.values())))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(cases)], capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
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
