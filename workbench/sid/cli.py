"""`workbench sid train | assign | stats`: semantic IDs for the workspace's catalog."""

from __future__ import annotations

import time

import click
import pandas as pd

from workbench.cli_args import ints
from workbench.sid.cqsid import MODES, CQSIDConfig, variant
from workbench.sid.rqvae import RQVAEConfig


def _ws(ctx):
    return ctx.find_root().obj["ws"]


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


@click.group()
def sid() -> None:
    """Semantic cluster IDs (CQ-SID): train the RQ-VAE, assign new products, inspect the IDs."""


@sid.command()
@click.option("--codebook-sizes", default="256,256,256", show_default=True, help="K per level, comma-separated (L = how many).")
@click.option("--latent-dim", type=int, default=64, show_default=True)
@click.option("--variant", "which", type=click.Choice(["plain", "+category", "+query", "cq-sid"]), default="cq-sid", show_default=True,
              help="Which constraints: none, category, query or both.")
@click.option("--mode", type=click.Choice(MODES), default="cluster", show_default=True, help="cluster IDs, or unique IDs with a dedup token.")
@click.option("--epochs", type=int, default=80, show_default=True)
@click.option("--batch-size", type=int, default=512, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--category-depth", type=int, default=None, help="Cut category paths at this depth (default: the full path).")
@click.option("--rotation-trick", is_flag=True, help="Rotation trick instead of straight-through gradients.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--embedder", default="minilm", show_default=True, help="minilm or hashing[-DIM].")
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def train(ctx, codebook_sizes, latent_dim, which, mode, epochs, batch_size, lr, category_depth, rotation_trick, seed, embedder, device):
    """Train CQ-SID on the workspace's products; write weights, SID table and index.

    Data-parallel under torchrun, e.g. `torchrun --nproc_per_node 2 -m workbench sid train`:
    --batch-size is the global batch, split over the processes; only rank 0 writes."""
    from workbench import dist
    from workbench.embed import get_embedder
    from workbench.sid.store import train_workspace

    device = dist.setup(device)
    e = get_embedder(embedder, device)
    model = RQVAEConfig(input_dim=e.dim, codebook_sizes=ints(codebook_sizes), latent_dim=latent_dim, rotation_trick=rotation_trick)
    cfg = variant(CQSIDConfig(model=model, epochs=epochs, batch_size=batch_size, lr=lr, category_depth=category_depth,
                              mode=mode, seed=seed), which)
    t0 = time.perf_counter()
    stats = train_workspace(_ws(ctx).require(), cfg, e, device)
    if not dist.is_main():
        return
    click.echo(f"trained {cfg.variant} ({mode} IDs) in {time.perf_counter() - t0:.1f} s; wrote {_ws(ctx).path / 'sid'}\n")
    print_stats(stats)


@sid.command()
@click.option("--embedder", default="minilm", show_default=True, help="The embedder the SID model was trained on.")
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def assign(ctx, embedder, device):
    """Give products without a SID one from the trained model (no retraining); update table and index."""
    from workbench.embed import get_embedder
    from workbench.sid.store import assign_new

    c = assign_new(_ws(ctx).require(), get_embedder(embedder, device), device)
    share = c["into_existing"] / c["new"] if c["new"] else 0.0
    click.echo(f"{c['new']:,} new products: {c['into_existing']:,} ({share:.1%}) into existing clusters; "
               f"{c['removed']:,} removed; SIDs {c['sids_before']:,} -> {c['sids_after']:,}")


@sid.command()
@click.pass_context
def stats(ctx):
    """Usage, cluster sizes, category purity and query coherence of the workspace's SIDs."""
    from workbench.sid.store import log_stats, workspace_stats

    ws = _ws(ctx).require()
    s = workspace_stats(ws)
    with ws.logbook().run("sid-stats") as run:
        log_stats(run, s, s["config"])
    print_stats(s)
