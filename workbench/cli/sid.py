"""`workbench sid train | assign | stats | labels | map`: semantic IDs for the workspace's catalog."""

from __future__ import annotations

import time

import click
import pandas as pd

from workbench import dist, recipes
from workbench.cli.options import apply, config_options, device_option, embedder_option, recipe_option, writes, ws_of
from workbench.embed import get_embedder
from workbench.logbook import tagged
from workbench.sid.config import MODES, CQSIDConfig
from workbench.sid.cqsid import variant
from workbench.sid.map import POINTS
from workbench.sid.store import (
    assign_new,
    load_labels,
    log_stats,
    train_workspace,
    workspace_embedder,
    workspace_stats,
    write_map,
)


def print_stats(stats: dict) -> None:
    c = stats["clusters"]
    click.echo(f"SIDs: {c['sids']:,} for {c['products']:,} products; unique rate {c['unique_rate']:.3f}, collision rate "
               f"{c['collision_rate']:.3f}; cluster size max {c['size_max']}, median {c['size_median']:g}, p99 {c['size_p99']:.1f}")
    if "unique_ids" in stats:
        u = stats["unique_ids"]
        click.echo(f"with the dedup token: {u['sids']:,} IDs, collision rate {u['collision_rate']:.3f}")
    click.echo("\n" + pd.DataFrame(stats["usage"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if stats.get("purity"):
        p = pd.DataFrame(stats["purity"]).pivot(index="level", columns="depth", values="purity")
        click.echo("\ncategory purity (rows: prefix length; columns: category depth)\n" + p.to_string(float_format=lambda v: f"{v:.3f}"))
    if stats.get("coherence"):
        click.echo("\nquery coherence\n" + pd.DataFrame(stats["coherence"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if (r := stats.get("reach")) and r["pairs"]:
        click.echo(f"\nvalidation answers the training queries teach ({r['pairs']:,} pairs): the product itself {r['product']:.3f}, "
                   f"its SID {r['sid']:.3f}")
    if stats.get("labels"):
        click.echo("\ncluster labels: share of each label's category (products weighted) "
                   + ", ".join(f"level {k.split('@')[1]} {v:.3f}" for k, v in stats["labels"].items()))


@click.group()
def sid() -> None:
    """Semantic cluster IDs (CQ-SID): train the RQ-VAE, assign new products, inspect the IDs."""


@sid.command()
@recipe_option("the SIDs")
@config_options(CQSIDConfig, "model.codebook_sizes", "model.latent_dim", help={"model.codebook_sizes": "K per level, comma-separated (L = how many)."})
@click.option("--variant", "which", type=click.Choice(["plain", "+category", "+query", "cq-sid"]), default="cq-sid", show_default=True,
              help="Which constraints: none, category, query or both.")
@config_options(CQSIDConfig, "mode", "epochs", "batch_size", "lr", "category_depth", "model.rotation_trick", "seed",
                choices={"mode": MODES})
@embedder_option()
@device_option()
@click.pass_context
@writes
def train(ctx, recipe, which, embedder, device, **kw):
    """Train CQ-SID on the workspace's products; write weights, SID table and index.

    Data-parallel under torchrun, e.g. `torchrun --nproc_per_node 2 -m workbench sid train`:
    --batch-size is the global batch, split over the processes; only rank 0 writes."""
    device = dist.setup(device)
    e = get_embedder(embedder, device, ws_of(ctx).path)
    r = recipes.get(recipe)
    cfg = variant(apply(ctx, r.sid_for(e.dim), kw), which)
    t0 = time.perf_counter()
    with tagged(recipe=r.name):
        stats = train_workspace(ws_of(ctx).require(), cfg, e, device)
    if not dist.is_main():
        return
    click.echo(f"trained {cfg.variant} ({cfg.mode} IDs) in {time.perf_counter() - t0:.1f} s; wrote {ws_of(ctx).path / 'sid'}\n")
    print_stats(stats)
    if gens := ws_of(ctx).artifacts().get("gen"):
        click.echo(f"\nthe {len(gens)} file(s) in gen/ were trained on the previous SIDs and are now refused: "
                   "`workbench train` trains the generator again")


@sid.command()
@embedder_option("The embedder the SID model was trained on.")
@device_option()
@click.pass_context
@writes
def assign(ctx, embedder, device):
    """Give products without a SID one from the trained model (no retraining); update table and index."""
    c = assign_new(ws_of(ctx).require(), get_embedder(embedder, device, ws_of(ctx).path), device)
    both = c["new"] + c["changed"]
    share = c["into_existing"] / both if both else 0.0
    click.echo(f"{c['new']:,} new products, {c['changed']:,} whose text now maps to another cluster (assigned again): "
               f"{c['into_existing']:,} ({share:.1%}) into existing clusters; {c['removed']:,} removed; "
               f"SIDs {c['sids_before']:,} -> {c['sids_after']:,}")
    total = len(ws_of(ctx).table("products"))
    if c["changed"] > 0.2 * total:
        click.echo(f"{c['changed']:,} of {total:,} products changed since the SID model was trained on them: its "
                   f"clusters were fit to another catalog; train the SIDs again with `workbench sid train`")


@sid.command()
@click.pass_context
def stats(ctx):
    """Usage, cluster sizes, category purity and query coherence of the workspace's SIDs."""
    ws = ws_of(ctx).require()
    s = workspace_stats(ws)
    with ws.logbook().run("sid-stats") as run:
        log_stats(run, s, s["config"])
    print_stats(s)


@sid.command()
@click.option("--level", type=click.IntRange(min=1), default=None, help="Only this level (1 = the first code; default: all).")
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Clusters per level, largest first.")
@click.pass_context
def labels(ctx, level, top):
    """The clusters' labels: dominant category (with its share) and distinctive title words per SID prefix."""
    lab = load_labels(ws_of(ctx).require()).reset_index()
    if level is not None:
        if level > lab["level"].max():
            raise click.BadParameter(f"the SIDs have {lab['level'].max()} levels, not {level}", param_hint="--level")
        lab = lab[lab["level"] == level]
    for lvl, g in lab.groupby("level"):
        g = g.sort_values(["products", "prefix"], ascending=[False, True]).head(top)
        click.echo(f"\nlevel {lvl}: {int((lab['level'] == lvl).sum()):,} clusters (largest {len(g)})")
        click.echo(g[["prefix", "products", "label"]].to_string(index=False))


@sid.command(name="map")
@click.option("--points", type=click.IntRange(min=3), default=POINTS, show_default=True, help="Products on the map (a seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option()
@click.pass_context
@writes
def map_(ctx, points, seed, device):
    """Draw the Codebooks page's 2-D map (UMAP of the product embeddings) and store it with the SIDs."""
    ws = ws_of(ctx).require()
    t0 = time.perf_counter()
    df = write_map(ws, get_embedder(workspace_embedder(ws), device), points, seed)
    click.echo(f"drew a map of {len(df):,} products in {time.perf_counter() - t0:.1f} s; wrote {ws.path / 'sid' / 'map.parquet'}")
