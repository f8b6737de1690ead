"""The wsiproc package's import graph has no cycle (issue 18: the stream flows one way).

Every ``import`` statement of every module counts, wherever it stands: at the top, inside a
function (a lazy import is still a dependency) and under ``if TYPE_CHECKING:``. The graph is
read from the source with :mod:`ast`, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import wsiproc

PACKAGE_DIR = Path(wsiproc.__file__).resolve().parent


def module_name(path: Path) -> str:
    """``wsiproc/stream/engine.py`` -> ``wsiproc.stream.engine``; a package's ``__init__``
    is the package."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import submodule` depends on the submodule; `from mod import name`
            # on the module. (A package's __init__ runs before any of its submodules, as
            # for every import, so that implicit edge is not counted.)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = package_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search).

    Examples
    --------
    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    True
    >>> find_cycle({"a": {"b"}, "b": {"a"}})
    ['a', 'b', 'a']
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path = [root]
        stack = [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return None


def test_import_graph_reads_relative_and_type_checking_imports():
    """The walker sees the edges the cycle check relies on (else an empty graph would pass)."""
    graph = import_graph()
    assert "wsiproc.stream.request" in graph["wsiproc.stream.pipeline"]
    assert "wsiproc.stream.pipeline" in graph["wsiproc.stream.engine"]
    # a lazy import inside a function counts
    assert "wsiproc.stream.engine" in graph["wsiproc.cli.infer"]


def test_cycle_finder_reports_a_type_checking_only_cycle(tmp_path):
    """A cycle through an ``if TYPE_CHECKING:`` import is found and named."""
    pkg = tmp_path / "wsiproc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import B\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\n"
    )
    known = {"wsiproc", "wsiproc.a", "wsiproc.b"}
    graph = {
        "wsiproc.a": imported_modules("wsiproc.a", pkg / "a.py", known),
        "wsiproc.b": imported_modules("wsiproc.b", pkg / "b.py", known),
    }
    assert find_cycle(graph) == ["wsiproc.a", "wsiproc.b", "wsiproc.a"]


def test_package_import_graph_has_no_cycle():
    """No module of wsiproc imports, directly or through others, a module that imports it."""
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_engine_still_exports_the_request():
    """``from wsiproc.stream.engine import InferRequest`` keeps working for callers."""
    from wsiproc.stream import InferRequest as lazy
    from wsiproc.stream.engine import InferRequest
    from wsiproc.stream.request import InferRequest as defined

    assert InferRequest is defined is lazy


def test_quiet_builtin_model_run_loads_no_heavy_module(tiff_slide, tmp_path):
    """A quiet ``builtin:`` run with tissue detection pays for none of the heavy imports, nor
    for tqdm's when no bar is shown (issue 17: start-up dominates small slides)."""
    import subprocess
    import sys

    out = tmp_path / "windows.csv"
    code = (
        "import sys; from wsiproc.cli import main; "
        f"rc = main(['infer', {str(tiff_slide)!r}, '--out', {str(out)!r}, '--kernel-size', "
        "'64', '--stride', '64', '--workers', '1', '--quiet']); "
        "heavy = ('scipy', 'pandas', 'torch', 'tqdm'); "
        "print(rc, sorted(m for m in heavy if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split("\n")[0] == "0 []", proc.stdout + proc.stderr
    assert out.exists()
