"""The default pipeline: build a workspace end to end with a named recipe, skipping steps whose
artifacts exist.

`build(ws)` is what `workbench demo` (the README's first command) runs, with the `demo` recipe
(`workbench.recipes`); the notebooks call `open_or_build`, which builds only when a step is missing.
A step counts as done when its artifacts load and are current (`check`, the same test the
benchmarks and stage 4's ranker make): a damaged or stale artifact is rebuilt, not served. `report(ws)` checks every artifact (`workbench data validate`).
Each step reads the workspace and writes its artifacts there, so a rerun only does what is missing and
an interrupted build resumes: data, embeddings, SIDs, the generator's stages, the beam-width sweep,
then stage 4 (ranker, GRPO and EG-GRPO).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from workbench.data.synth import PRESETS, generate, synth_meta
from workbench.embed import embed_workspace, get_embedder
from workbench.gen import names
from workbench.logbook import tagged
from workbench.recipes import Recipe, get
from workbench.workspace import Workspace

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"


def copy_tables(src: Workspace, dst: Workspace) -> dict[str, int]:
    """Validate and write every table of `src` into `dst`, then its metadata (minus its name)."""
    src.require()
    frames = {t: src.table(t) for t in src.tables()}
    meta = {**{k: v for k, v in src.meta.items() if k not in ("name", "copied_from")}, "copied_from": str(src.path)}
    done = dst.write_tables(frames, {t: str(src.table_path(t)) for t in frames}, meta=meta)
    return {t: len(d) for t, d in done.items()}


# what each step leaves behind, loaded with every check its readers make (checksums, finite weights,
# lineage): a loader raises FileNotFoundError, CheckpointError (StaleError among them) or ValueError when
# the step's artifacts are missing, damaged or stale. Embeddings are a cache, recomputed on demand, so
# they never count as missing.
def _tables(ws: Workspace) -> None:
    if not (ws.exists() and ws.has("products")):
        raise FileNotFoundError(f"workspace {ws.path} has no products table")


def _sids(ws: Workspace) -> None:
    from workbench.sid.store import load_model, load_sids

    load_model(ws)
    load_sids(ws)


def _the_map(ws: Workspace) -> None:
    from workbench.sid.store import load_map

    load_map(ws)


def _generator(ws: Workspace) -> None:
    from workbench.gen.store import load

    load(ws, names.DEPLOYED)


def _width(ws: Workspace) -> None:
    """The width the workspace serves was chosen by a sweep of its current generator."""
    from workbench.eval import width
    from workbench.lineage import StaleError

    if why := width.outdated(ws):
        raise StaleError(f"{width.choice_path(ws)} is stale: {why}")


def _ranker(ws: Workspace) -> None:
    from workbench.rl.ranker import load_checked

    load_checked(ws)


def _refined(ws: Workspace) -> None:
    """Stage 4's models (with the ranker that rewarded them), unless the workspace cannot have them: without
    a search log there is no ranker to reward them."""
    from workbench.gen.store import load

    if ws.has("products") and not ws.has("search_log"):
        return
    _ranker(ws)
    load(ws, names.refined(names.DEPLOYED, "eg-grpo"))


CHECKS = {"data": _tables, "sid": _sids, "map": _the_map, "gen": _generator, "sweep": _width, "ranker": _ranker, "rl": _refined}


def check(ws: Workspace, step: str) -> str:
    """Why `step`'s artifacts cannot be used as they are: "" when they exist, load and are current, else
    the loader's words (missing, damaged, stale). The one test of "is this step done?" that the demo's
    build, the benchmarks' workspaces and stage 4's ranker all make."""
    from workbench.checkpoint import CheckpointError

    if step not in CHECKS:
        raise ValueError(f"unknown step {step!r}; steps: {', '.join(CHECKS)}")
    try:
        CHECKS[step](ws)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return ""


def _data(ws: Workspace, source: Path, run, recipe: Recipe, **_) -> str:
    if not check(ws, "data"):
        return "tables present"
    if source.exists():
        counts = copy_tables(Workspace(source), ws)
    else:  # an installed package without the repo's sample_data/: generate the same marketplace
        counts = {t: len(d) for t, d in ws.write_tables(generate(PRESETS["sample"]), meta=synth_meta(PRESETS["sample"])).items()}
    run.log(0, stage="data", **{f"rows_{t}": n for t, n in counts.items()})
    return ", ".join(f"{t} {n:,}" for t, n in counts.items())


def _embed(ws: Workspace, run, embedder: str, device: str, **_) -> str:
    t0 = time.perf_counter()
    vecs = embed_workspace(ws, get_embedder(embedder, device))
    run.log(0, stage="embed", seconds=time.perf_counter() - t0, **{f"n_{k}": len(v) for k, v in vecs.items()})
    return f"{embedder}: " + ", ".join(f"{k} {v.shape[0]:,}x{v.shape[1]}" for k, v in vecs.items())


def _sid(ws: Workspace, run, recipe: Recipe, embedder: str, device: str, **_) -> str:
    from workbench.sid.store import train_workspace

    if not check(ws, "sid"):
        return "SIDs present"
    e = get_embedder(embedder, device)
    cfg = recipe.sid_for(e.dim)
    c = train_workspace(ws, cfg, e, device)["clusters"]
    run.log(0, stage="sid", sids=c["sids"], collision_rate=c["collision_rate"])
    return f"CQ-SID {cfg.model.codebook_sizes}: {c['sids']:,} SIDs, cluster size median {c['size_median']:g}, max {c['size_max']}"


def _map(ws: Workspace, run, embedder: str, device: str, **_) -> str:
    from workbench.sid.store import write_map

    if not check(ws, "map"):
        return "map present"
    return f"Codebooks map of {len(write_map(ws, get_embedder(embedder, device), progress=False)):,} products"


def _gen(ws: Workspace, run, recipe: Recipe, device: str, **_) -> str:
    from workbench.gen.stages import train_stages

    if not check(ws, "gen"):
        return "generator present"
    rows = train_stages(ws, recipe.gen, device=device)
    last = rows[-1]
    run.log(0, stage="gen", **{k: v for k, v in last.items() if "@" in k})
    return (f"generator, stages {', '.join(r['stage'] for r in rows)}: validation "
            + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if "@" in k))


def _rl(ws: Workspace, run, recipe: Recipe, embedder: str, device: str, **_) -> str:
    """Stage 4, both algorithms, for their curves; `generator` stays the stage-3 model (on the sample,
    RL against this ranker lowers hit rates: see the docs' results)."""
    from workbench.rl.ranker import train_workspace
    from workbench.rl.train import train_rl

    if not ws.has("search_log"):
        return "skipped: stage 4 rewards the generator with a ranker fitted on a search log, and this catalog has none"
    if not check(ws, "rl"):
        return "stage-4 models present"
    if check(ws, "ranker"):
        train_workspace(ws, embedder, device, progress=False)
    out = []
    for algo in ("grpo", "eg-grpo"):
        last = train_rl(ws, replace(recipe.rl, algo=algo), device=device)[-1]
        out.append(f"{algo} click hit@10 {last['click_hit@10']:.3f}")
    return f"ranker; {recipe.rl.steps} steps each: " + ", ".join(out)


def _sweep(ws: Workspace, run, recipe: Recipe, device: str, **_) -> str:
    from workbench.eval.width import run_sweep
    from workbench.report import report

    if not check(ws, "sweep"):
        return "width sweep present"
    rows, pick = run_sweep(ws, "workspace", recipe.sweep, run, device)
    report("beam-width-choice", [{"case": "workspace", **pick}], run)
    return f"width {pick['width']} (recall@50 {pick['recall']:.3f} vs {pick['widest_recall']:.3f} at {pick['widest']})"


STEPS = [("data", _data), ("embed", _embed), ("sid", _sid), ("map", _map), ("gen", _gen), ("sweep", _sweep), ("rl", _rl)]


def missing(ws: Workspace) -> list[str]:
    """The pipeline steps whose artifacts `ws` lacks, in order (empty: fully built)."""
    return [name for name, _ in STEPS if name in CHECKS and check(ws, name)]


def open_or_build(path: str | Path, embedder: str = "minilm", device: str = "cpu", echo=print, recipe: str = "demo") -> Workspace:
    """The workspace at `path`, built from `sample_data/` first if any step is missing (how the notebooks
    and the demo open theirs); a fully built workspace is opened without touching its logbook."""
    ws = Workspace(path)
    if ws.path.is_file() or (ws.path.is_dir() and any(ws.path.iterdir()) and not ws.exists()):
        raise FileExistsError(f"{ws.path} is not a workspace (no workspace.json) and not empty: point at a workspace, "
                              "or at a new path to build the sample one there")
    if todo := missing(ws):
        echo(f"building {ws.path} (missing: {', '.join(todo)})")
        build(ws, embedder=embedder, device=device, echo=echo, recipe=recipe)
    return ws


def build(ws: Workspace, source: str | Path = SAMPLE_DATA, embedder: str = "minilm", device: str = "cpu",
          echo=print, recipe: str = "demo") -> Workspace:
    """Run every step of the pipeline on `ws` (from `source`, a workspace of tables) with the named
    recipe; log it as one run, and tag every run it starts with the recipe."""
    r = get(recipe)
    config = {"workspace": str(ws.path), "source": str(source), "embedder": embedder, "device": device, "recipe": r.to_dict()}
    ws.path.mkdir(parents=True, exist_ok=True)
    with tagged(recipe=r.name), ws.logbook().run("build", config) as run:
        for name, step in STEPS:
            t0 = time.perf_counter()
            what = step(ws, source=Path(source), run=run, recipe=r, embedder=embedder, device=device)
            echo(f"  {name:<8} {what} ({time.perf_counter() - t0:.1f} s)")
    return ws


def report(ws) -> list[dict]:
    """Every artifact of the workspace, loaded and checked: artifact, status (ok, outdated, partial,
    stale, broken), detail. Loading is the check: checksums, finite weights, SIDs complete, lineage current."""
    from workbench import checkpoint, lineage
    from workbench.eval import width
    from workbench.gen import store as gen_store
    from workbench.rl import ranker
    from workbench.sid import store as sid_store

    rows = []

    def add(artifact: str, load, noted: str = "outdated") -> None:
        """`load()` raises when the artifact is unusable, else returns a note ("" for none): why it is
        outdated, or what a partial checkpoint holds."""
        try:
            detail = load() or ""
            rows.append({"artifact": artifact, "status": noted if detail else "ok", "detail": detail})
        except lineage.StaleError as e:
            rows.append({"artifact": artifact, "status": "stale", "detail": str(e)})
        except (checkpoint.CheckpointError, FileNotFoundError, ValueError, KeyError, OSError) as e:
            rows.append({"artifact": artifact, "status": "broken", "detail": f"{type(e).__name__}: {e}"})

    sid = sid_store.sid_dir(ws)
    if (sid / "rqvae.safetensors").exists() or (sid / "sids.parquet").exists():
        add("sid/rqvae.safetensors", lambda: sid_store.load_model(ws) and "")
        add("sid/sids.parquet", lambda: sid_store.load_sids(ws).empty and "no rows")
        if (sid / "map.parquet").exists():
            add("sid/map.parquet", lambda: sid_store.load_map(ws).empty and "no rows")
    if ranker.ranker_path(ws).exists():
        add("rl/ranker.safetensors", lambda: ranker.load_checked(ws) and "")
    gdir = gen_store.gen_dir(ws)
    for path in sorted(gdir.glob("*.safetensors")) if gdir.is_dir() else []:
        if names.is_partial(path.stem):  # an interrupted stage: weights + optimizer state
            add(f"gen/{path.name}", lambda name=path.stem: f"epoch {gen_store.load_partial(ws, name)[1]['epoch']} of an "
                "interrupted stage (`workbench train` resumes it)", noted="partial")
        else:
            add(f"gen/{path.name}", lambda name=path.stem: gen_store.outdated(ws, name))
    if width.choice_path(ws).exists():
        add("gen/width.json", lambda: width.outdated(ws))
    return rows
