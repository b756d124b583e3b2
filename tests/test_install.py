"""A plain install carries the embedded model: a wheel built from the repository, installed into a fresh
folder and run from another directory, explains an image with no --weights (.ci/run repeats this on every
run)."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What the build reads. Built from a copy, so the build leaves no build/ or *.egg-info in the repository.
BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "mini_clip", "weights")


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_wheel_carries_the_embedded_model(tmp_path):
    # the build runs offline, with this environment's backend
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here, so the wheel cannot be built without a download")
    source = tmp_path / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(tmp_path / "dist"), str(source), cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("mini_clip-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "mini_clip/embedded/scenes-vit-t8.safetensors" in names, sorted(names)
    assert "mini_clip/bpe_simple_vocab_16e6.txt.gz" in names, sorted(names)

    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel),
        cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(ROOT / "docs" / "example.png", elsewhere / "example.png")
    # only the installed copy is importable
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    proc = run(sys.executable, "-m", "mini_clip.explain", "example.png", "--text", "a red star", "--text",
               "a blue circle", "--out", "out", cwd=elsewhere, env=env)
    assert "a red star" in proc.stdout
    result = json.loads((elsewhere / "out" / "example" / "result.json").read_text())
    assert sorted(entry["text"] for entry in result["texts"]) == ["a blue circle", "a red star"]
    pictures = [p for p in (elsewhere / "out" / "example").iterdir() if p.suffix in (".png", ".jpg")]
    assert len(pictures) == 3 and all(p.stat().st_size > 0 for p in pictures), pictures  # 2 overlays, a sheet
    where = run(sys.executable, "-c", "import mini_clip; print(mini_clip.__file__)", cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout  # not the repository's copy
