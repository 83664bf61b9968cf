"""Imports run one way: a module may import its own layer and the layers below it, never one above.

The order is the Architecture page's (docs/contributing/architecture.md), read bottom-up:

    foundation  config, dist, logbook, metrics, report     (no other workbench module)
    data        schema, synth, loaders, ...                 (returns frames; never writes a workspace)
    workspace   workspace, checkpoint, lineage              (writes tables and artifacts; fingerprints them)
    embed -> sid -> gen -> rl -> eval                       (the method, layer on layer)
    recipes     recipes, pipeline, batch                    (whole-workspace settings and jobs)
    surfaces    bench, engine, service, app_data           (what people measure, search, see and call)
    cli         cli/, __main__                              (the only place that imports click)

Both `import x` and `from x import y` count, at any depth (function-level imports too).

Internal imports sit at the top of each module. The one exception: a module that does not load a heavy
library (`HEAVY`, listed here and nowhere else) may import, inside a function, a workbench module that
does, so that its light callers (`workbench --help`, `sql`, the app's first page) never pay for torch.
A module that already loads a heavy library imports everything at its top, and no two modules import
each other, at any depth: a function-level import cannot hide a cycle.
"""

import ast

from .conftest import ROOT

LAYERS = [
    {"config", "dist", "logbook", "metrics", "report"},
    {"data"},
    {"workspace", "checkpoint", "lineage"},
    {"embed", "baselines", "ann", "encoder"},
    {"sid"},
    {"gen"},
    {"rl"},
    {"eval"},
    {"recipes", "pipeline", "batch"},
    {"bench", "engine", "service", "app_data"},
    {"cli", "__main__"},
]
HEAVY = {"torch", "transformers", "sentence_transformers", "umap", "litserve", "locust", "streamlit", "playwright"}
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
PACKAGE = ROOT / "workbench"


def top(module: str) -> str | None:
    """workbench.gen.beam -> gen; the package itself (its __version__, Workspace re-export) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported(node) -> list[str]:
    """The modules an import statement names; `from workbench.gen import store` names workbench.gen.store,
    `from workbench import Workspace` the package workbench."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.module is None or node.module.split(".")[0] != "workbench":
        return [node.module or ""]
    folder = ROOT / node.module.replace(".", "/")
    return sorted({f"{node.module}.{a.name}" if (folder / a.name).is_dir() or (folder / f"{a.name}.py").exists() else node.module
                   for a in node.names})


def scan(path) -> list[tuple[str, int, bool]]:
    """Every module `path` imports: (module, line, at the top level or not)."""
    out = []

    def visit(node, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.level:
                raise AssertionError(f"{path}: relative import at line {child.lineno}; write workbench.<module>")
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.extend((m, child.lineno, not inside) for m in imported(child))
            visit(child, inside or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return out


def imports(path) -> list[tuple[str, int]]:
    """Every workbench module `path` imports, with its line."""
    return [(m, line) for m, line, _ in scan(path) if m.split(".")[0] == "workbench"]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield ".".join(rel.parts).removesuffix(".__init__"), path


def test_every_module_has_a_layer():
    missing = {top(m) for m, _ in modules()} - set(RANK) - {None}
    assert not missing, f"modules without a layer in tests/test_layers.py: {sorted(missing)}"


def test_imports_run_one_way():
    bad = []
    for module, path in modules():
        me = top(module)
        for target, line in imports(path):
            other = top(target)
            if me is not None and other is not None and RANK[other] > RANK[me]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({me}) imports {target} ({other}, a layer above)")
    assert not bad, "\n".join(bad)


def test_only_the_cli_imports_click():
    bad = []
    for module, path in modules():
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        if any(n.split(".")[0] == "click" for n in names) and top(module) != "cli":
            bad.append(str(path.relative_to(ROOT)))
    assert not bad, f"click outside workbench/cli/: {bad}"


def heaviness() -> dict[str, bool]:
    """Per module: whether importing it loads a HEAVY library (itself, through a workbench module it
    imports at its top, or through its package's __init__)."""
    tops = {m: [n for n, _, top in scan(p) if top] for m, p in modules()}
    memo: dict[str, bool] = {}

    def heavy(m: str, path: tuple = ()) -> bool:
        if m not in memo:
            packages = [".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 1)]
            memo[m] = any(n.split(".")[0] in HEAVY for n in tops.get(m, ())) or any(
                heavy(n, (*path, m)) for n in [*tops.get(m, ()), *packages] if n in tops and n != m and n not in path)
        return memo[m]

    return {m: heavy(m) for m in tops}


def misplaced(items, heavy: dict[str, bool]) -> list[str]:
    """The function-level internal imports of (module, path) `items` that belong at the top."""
    bad = []
    for module, path in items:
        for target, line, top in scan(path):
            if top or target not in heavy:
                continue
            if heavy[module]:
                bad.append(f"{path}:{line} imports {target} inside a function, but {module} already loads a heavy library: "
                           "import it at the top")
            elif not heavy[target]:
                bad.append(f"{path}:{line} imports {target} inside a function, but it is light: import it at the top")
    return bad


def test_internal_imports_are_at_the_top_unless_they_spare_a_light_module_a_heavy_one(tmp_path):
    heavy = heaviness()
    bad = misplaced(modules(), heavy)
    assert not bad, "\n".join(bad)
    p = tmp_path / "x.py"  # the check itself: a light import hidden in a function, and any from a heavy module
    p.write_text("import torch\n\n\ndef f():\n    from workbench.gen.beam import beam_search\n    from workbench.config import to_dict\n")
    assert len(misplaced([("workbench.x", p)], {**heavy, "workbench.x": True})) == 2
    assert [b.split(" imports ")[1].split()[0] for b in misplaced([("workbench.x", p)], {**heavy, "workbench.x": False})] == ["workbench.config"]
    assert not heavy["workbench.cli"] and not heavy["workbench.recipes"] and heavy["workbench.gen.model"]  # the check means something


def test_no_import_cycles():
    """No module reaches itself through imports, top-level or inside functions (Tarjan's strongly
    connected components over the import graph)."""
    names = dict(modules())
    graph = {m: {n for n, _, _ in scan(p) if n in names and n != m} for m, p in names.items()}
    index, low, stack, cycles = {}, {}, [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = [stack.pop()]
            while comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_check_catches_a_back_edge(tmp_path):
    """The checker itself: an upward import in a scratch module is reported."""
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from workbench.gen.beam import beam_search\n")
    ((target, line),) = imports(p)
    assert top(target) == "gen" and line == 2 and RANK["gen"] > RANK["sid"]
