"""The architecture DESIGN.md draws, checked: the web side loads no torch, `app` reaches `trainer`
only through app/runs/inline.py, and no two modules import each other in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "accelerate", "trainer")


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return [m for m in out.stdout.split() if m.split(".")[0] in HEAVY]


def test_the_cli_and_the_web_app_load_no_torch_and_no_trainer_module() -> None:
    assert _loaded_after("import app.cli") == []
    assert _loaded_after("from app.main import create_app") == []


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("app", "trainer"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` is not a runtime import
            continue
    return out


def test_app_reaches_trainer_only_through_the_inline_module() -> None:
    offenders = [
        name
        for name, path in _modules().items()
        if name.startswith("app.")
        and name != "app.runs.inline"
        and any(m.split(".")[0] == "trainer" for m in _imports(path, name, top_level_only=False))
    ]
    assert offenders == []


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {
        name: {m for m in _imports(path, name, top_level_only=True) if m in modules and m != name}
        for name, path in modules.items()
    }
    # A package imports its own submodules freely; a circle through an __init__ is not one.
    packages = {n for n, p in modules.items() if p.name == "__init__.py"}
    graph = {n: {m for m in deps if m not in packages} for n, deps in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []


def test_the_web_install_has_no_torch_and_the_train_extra_does() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in project["dependencies"]}
    train = {d.split(">")[0].split("=")[0].strip() for d in project["optional-dependencies"]["train"]}
    assert not names & {"torch", "transformers", "accelerate"}
    assert {"torch", "transformers", "accelerate"} <= train
