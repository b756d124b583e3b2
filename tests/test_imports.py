"""The package's modules import one way: no module imports, directly or through others, one that imports it,
and none imports part of the package inside a function to get round that (issue 17)."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mini_clip"


def package_imports(path: Path) -> tuple[set[str], list[int]]:
    """(the package's modules `path` imports, the lines where it imports one inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = set()
    nested = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = f"mini_clip.{node.module}" if node.level == 1 and node.module else node.module
            names = [f"mini_clip.{a.name}" for a in node.names] if node.level == 1 and not node.module \
                else [source or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        modules = {n.split(".")[1] for n in names if n.startswith("mini_clip.")}
        modules = {m for m in modules if (PACKAGE / f"{m}.py").exists() or (PACKAGE / m).is_dir()}
        found |= modules
        if modules and id(node) not in top_level:
            nested.append(node.lineno)
    return found, nested


def test_imports_form_no_cycle_and_none_hides_in_a_function():
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue
        graph[path.stem], nested = package_imports(path)
        assert not nested, f"{path.name} imports the package inside a function, at lines {nested}"
    done = set()

    def visit(module: str, chain: list[str]) -> None:
        assert module not in chain, f"import cycle: {' -> '.join(chain[chain.index(module):] + [module])}"
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, chain + [module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_command_lines_run_once():
    """`python -m mini_clip.download` runs a module that `import mini_clip` does not import (else runpy
    warns and runs it twice)."""
    for module in ("mini_clip.download", "mini_clip.explain"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0 and result.stderr == "", (module, result.stderr)
