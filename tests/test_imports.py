"""The package's modules import one way: no module imports, directly or through others, one that imports it,
and none imports part of the package inside a function to get round that (issue 17)."""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mini_clip"


def module_name(path: Path) -> str:
    """mini_clip.weights for mini_clip/weights.py, mini_clip.scenes for mini_clip/scenes/__init__.py."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path, modules: set[str]) -> tuple[set[str], list[int]]:
    """(the package's modules that `path` imports, the lines where it imports one inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    here = module_name(path) if path.stem == "__init__" else module_name(path).rpartition(".")[0]
    found = set()
    nested = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(here.split(".")[: len(here.split(".")) - node.level + 1]) if node.level else ""
            source = ".".join(filter(None, (base, node.module)))
            names = {source} | {f"{source}.{alias.name}" for alias in node.names}  # a name may be a module
        elif isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        else:
            continue
        imported = names & modules
        found |= imported
        if imported and id(node) not in top_level:
            nested.append(node.lineno)
    return found, nested


def test_imports_form_no_cycle_and_none_hides_in_a_function():
    files = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        graph[name], nested = package_imports(path, set(files) - {"mini_clip"})
        assert not nested, f"{path.name} imports the package inside a function, at lines {nested}"
    # the check sees imports: `from . import pretrained` and `from .weights import ...`
    assert graph["mini_clip.loading"] >= {"mini_clip.pretrained", "mini_clip.weights"}
    done = set()

    def visit(module: str, chain: list[str]) -> None:
        assert module not in chain, f"import cycle: {' -> '.join(chain[chain.index(module):] + [module])}"
        if module in done:
            return
        for imported in sorted(graph[module]):
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
