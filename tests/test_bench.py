"""scripts/bench.py --quick runs end to end: every section, the cross-checks between implementations, the
table.

No timing is asserted: the numbers depend on the machine. The benchmark itself exits non-zero when two
implementations disagree on the numbers it times (logits, relevance maps, token ids).
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADER = ("what", "mini_clip", "reference", "ratio", "target", "met?")


@pytest.mark.slow
def test_bench_quick(openai_clip_dir):
    pytest.importorskip("transformers")
    # Run as a user runs it: the script puts tests/ on its path for the references and imports torchvision
    # beside CPU torch itself (reference.import_torchvision_beside_cpu_torch).
    bench = str(ROOT / "scripts" / "bench.py")
    out = subprocess.run([sys.executable, bench, "--quick", "--openai-dir", str(openai_clip_dir)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "torch threads 1" in lines[0]
    header = next((line for line in lines if line.startswith("| what")), None)
    assert header is not None, out.stdout
    assert [cell.strip() for cell in header.strip("|").split("|")] == list(HEADER)
    table = [line for line in lines if line.startswith("| ") and line != header]
    for section in ("explain ViT-B/32", "forward ViT-B/32", "encode_image ViT-B/32",
                    "tokenize 2,000 captions", "load B/32", "peak extra RSS", "end to end: CLI",
                    "per photo, 1 thread, CPU time: the model", "folder,", "cold start", "torchrun"):
        assert any(section in row for row in table), f"no row for {section!r}:\n{out.stdout}"
    for row in table:  # every row complete: a figure for mini_clip, the reference, a ratio
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == len(HEADER) and all(cells[:4]), row
