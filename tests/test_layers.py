"""The package's import graph: no cycles; the core imports no front end and no shapes world.

Layers: the core (models, inversion, regions, attention, both editors, the request API) ->
the shapes world (its scenes, training recipes, judge) -> the front ends (CLI, web page,
batch, Ray, bench, demo). A layer imports only the layers before it.
"""

import ast
from pathlib import Path

import regionedit

PACKAGE = Path(regionedit.__file__).parent
FRONT_ENDS = ("regionedit.cli", "regionedit.flags", "regionedit.demo", "regionedit.ui", "regionedit.batch",
              "regionedit.bench", "regionedit.shapes.cli")  # fmt: skip
SHAPES = ("regionedit.shapes",)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _packages_run(target: str, importer: str, files: dict) -> set[str]:
    """The modules importing ``target`` from ``importer`` runs: the target and the ``__init__`` of
    every package above it that is not already running above ``importer`` itself."""
    parts = target.split(".")
    above = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 2)}
    run = {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - above
    return {m for m in run if m in files}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules importing it runs, from imports anywhere in its body (lazy
    imports inside functions too) and the package ``__init__`` files they pass through."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                targets = [a.value for a in node.args if isinstance(a, ast.Constant)]
            for t in targets:
                edges |= _packages_run(t, name, files)
        graph[name] = edges - {name}
    return graph


def compared_strings(root: Path, words: set[str], allowed: set[str]) -> list[str]:
    """``file:line`` of every comparison (``==``, ``!=``, ``in``) with one of ``words`` as a string
    literal, alone or in a literal tuple, list or set, in the files below ``root`` but ``allowed``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                items = sides + [
                    e for c in sides if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts
                ]
                if words & {
                    c.value for c in items if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }:
                    found.append(f"{rel}:{node.lineno}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def layer(name: str) -> int:
    if name.startswith(FRONT_ENDS):
        return 2
    return 1 if name.startswith(SHAPES) else 0


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_layers_import_only_layers_below():
    graph = import_graph()
    assert "regionedit.edit_api" in graph["regionedit.cli"]  # a lazy import counts as an edge
    wrong = sorted(f"{a} -> {b}" for a, edges in graph.items() for b in edges if layer(b) > layer(a))
    assert wrong == []


def test_the_core_is_what_the_library_exports():
    graph = import_graph()
    seen, todo = set(), ["regionedit"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph[name]
    assert seen and all(layer(name) == 0 for name in seen), sorted(n for n in seen if layer(n))


LOOP = {  # the shape of a loop the package once had, through a package __init__ and a lazy import
    "pkg/__init__.py": "",
    "pkg/options.py": "from .lomoe.options import LoMOEOptions\n",
    "pkg/lomoe/__init__.py": "from .editor import edit\n",
    "pkg/lomoe/options.py": "X = 1\n",
    "pkg/lomoe/editor.py": "def edit():\n    from ..options import make_options\n",
}


def test_the_graph_follows_package_inits_and_lazy_imports(tmp_path):
    for rel, text in LOOP.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.options"] == {"pkg.lomoe", "pkg.lomoe.options"}  # the package's __init__ runs first
    assert cycles(graph) == [["pkg.lomoe", "pkg.lomoe.editor", "pkg.options"]]
    (tmp_path / "pkg/lomoe/__init__.py").write_text("")  # without the __init__'s import: no loop
    assert cycles(import_graph(tmp_path / "pkg")) == []
