"""A real catalog measured end to end with a named recipe: `workbench bench homedepot --recipe NAME`.

    import (once) -> embeddings (cached) -> CQ-SIDs -> the generator's stages -> [the fine-tuned encoder]
    -> the harness

Each recipe gets its own workspace, `workspaces/<dataset>-<recipe>`, holding a copy of the imported
tables and sharing the imported workspace's embedding cache (content-addressed by text, so no text is
embedded twice), so recipes never overwrite each other's SIDs or generators. Steps whose artifacts
exist are kept, so a rerun (or a killed run) continues where it stopped. The evaluation is the
recipe's `EvalConfig` on the test split's queries (`data.splits`): the methods it names with the
channel metrics at the recipe's budgets, and its fusion sets; when it names `dense-tuned`, the
recipe's `EncoderConfig` fine-tunes the encoder first (kept where present).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from workbench.embed import get_embedder
from workbench.encoder import encoder_dir
from workbench.encoder import train as train_encoder
from workbench.pipeline import check, copy_tables
from workbench.recipes import Recipe
from workbench.workspace import Workspace


def recipe_workspace(base: Workspace, recipe: str, root: str | Path = "workspaces") -> Workspace:
    """`<root>/<base name>-<recipe>`: `base`'s tables, its embedding cache linked, its own artifacts."""
    ws = Workspace(Path(root) / f"{base.path.name.removeprefix('bench-')}-{recipe}")
    if not ws.has("products"):
        copy_tables(base, ws)
    shared, mine = (base.cache_dir / "embeddings").resolve(), ws.cache_dir / "embeddings"
    if not mine.exists():
        shared.mkdir(parents=True, exist_ok=True)
        mine.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(shared, mine, target_is_directory=True)
    return ws


def measure(ws: Workspace, recipe: Recipe, embedder: str = "minilm", device: str = "cpu", run=None,
            echo=print) -> pd.DataFrame:
    """SIDs and generator of `recipe` in `ws` (kept where present), then the harness; one row per method."""
    from workbench.eval.harness import evaluate
    from workbench.gen.stages import train_stages
    from workbench.sid.store import train_workspace

    t0 = time.perf_counter()
    if check(ws, "sid"):
        e = get_embedder(embedder, device)
        c = train_workspace(ws, recipe.sid_for(e.dim), e, device)["clusters"]
        echo(f"SIDs {recipe.sid.model.codebook_sizes}: {c['sids']:,} for {c['products']:,} products "
             f"({time.perf_counter() - t0:.0f} s)")
    t1 = time.perf_counter()
    rows = train_stages(ws, recipe.gen, device=device)  # finished stages are kept, a killed one resumes
    echo(f"generator ({recipe.gen.backbone}, stages {recipe.gen.stages}): "
         + ", ".join(f"{r['stage']} kept" if r.get("resumed") else f"{r['stage']} {r['examples_per_s']:,.0f} examples/s"
                     for r in rows)
         + f" ({time.perf_counter() - t1:.0f} s)")
    if "dense-tuned" in recipe.eval.methods and not encoder_dir(ws).exists():
        got = train_encoder(ws, recipe.encoder, device)
        echo(f"fine-tuned encoder: {got['pairs']:,} pairs in {got['seconds']:.0f} s ({got['examples_per_s']:.0f} pairs/s)")
    return evaluate(ws, recipe.eval, run=run)
