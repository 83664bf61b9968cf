"""Imports run one way: a module may import its own layer and the layers below it, never one above.

The order is the README's ARCHITECTURE section, read bottom-up:

    foundation  config, dist, logbook, metrics, report     (no other workbench module)
    data        schema, synth, loaders, ...                 (returns frames; never writes a workspace)
    workspace   workspace, checkpoint, lineage              (writes tables and artifacts; fingerprints them)
    embed -> sid -> gen -> rl -> eval                       (the method, layer on layer)
    recipes     recipes, pipeline, batch                    (whole-workspace settings and jobs)
    surfaces    bench, engine, service, app_data           (what people measure, search, see and call)
    cli         cli/, __main__                              (the only place that imports click)

Both `import x` and `from x import y` count, at any depth (function-level imports too).
"""

import ast

from .conftest import ROOT

LAYERS = [
    {"config", "dist", "logbook", "metrics", "report"},
    {"data"},
    {"workspace", "checkpoint", "lineage"},
    {"embed", "baselines"},
    {"sid"},
    {"gen"},
    {"rl"},
    {"eval"},
    {"recipes", "pipeline", "batch"},
    {"bench", "engine", "service", "app_data"},
    {"cli", "__main__"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
PACKAGE = ROOT / "workbench"


def top(module: str) -> str | None:
    """workbench.gen.beam -> gen; the package itself (its __version__, Workspace re-export) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imports(path) -> list[tuple[str, int]]:
    """Every workbench module `path` imports, with its line; `from workbench import gen` names workbench.gen."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("workbench")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "workbench":
            if node.module == "workbench":
                out += [(f"workbench.{a.name}", node.lineno) for a in node.names
                        if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").exists()]
            else:
                out.append((node.module, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import at line {node.lineno}; write workbench.<module>")
    return out


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


def test_the_check_catches_a_back_edge(tmp_path):
    """The checker itself: an upward import in a scratch module is reported."""
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from workbench.gen.beam import beam_search\n")
    ((target, line),) = imports(p)
    assert top(target) == "gen" and line == 2 and RANK["gen"] > RANK["sid"]
