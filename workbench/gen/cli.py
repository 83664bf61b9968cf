"""`workbench gen train | search`: the query -> SID generator of a workspace."""

from __future__ import annotations

import click

from workbench.gen.train import TrainConfig


def _ws(ctx):
    return ctx.find_root().obj["ws"]


@click.group()
def gen() -> None:
    """The generator: train it on the workspace's SIDs, decode queries into SIDs and products."""


@gen.command()
@click.option("--backbone", type=click.Choice(["scratch", "minilm"]), default="scratch", show_default=True,
              help="Encoder trained from scratch, or all-MiniLM-L6-v2's pretrained BERT.")
@click.option("--d-model", type=int, default=128, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True, help="Decoder layers (and scratch encoder layers).")
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--d-ff", type=int, default=512, show_default=True)
@click.option("--epochs", type=int, default=12, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--name", default="generator", show_default=True, help="Checkpoint name in <workspace>/gen/.")
@click.option("--eval-width", type=int, default=32, show_default=True, help="Beam width of the per-epoch held-out Recall@K.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def train(ctx, backbone, d_model, layers, heads, d_ff, epochs, batch_size, lr, name, eval_width, seed, device):
    """Train a generator on the catalog (title -> SID) and training queries (query -> SID)."""
    from workbench.gen.stages import train_workspace

    ws = _ws(ctx).require()
    model = dict(d_model=d_model, n_heads=heads, enc_layers=layers, dec_layers=layers, d_ff=d_ff)
    r = train_workspace(ws, backbone, model, TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed),
                        name=name, device=device, eval_width=eval_width)
    click.echo(f"generator {name!r} ({r['params'] / 1e6:.1f}M parameters) on {r['examples']:,} examples: loss {r['loss']:.3f}; "
               f"held-out queries ({r['eval_queries']}) at width {eval_width}: "
               + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith("recall")))


@gen.command()
@click.argument("queries", nargs=-1, required=True)
@click.option("--width", type=int, default=16, show_default=True, help="Beam width: how many SIDs to decode.")
@click.option("--top", type=int, default=5, show_default=True, help="SIDs to show per query.")
@click.option("--name", default="generator", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def search(ctx, queries, width, top, name, device):
    """Decode QUERIES into SIDs and their products (constrained beam search)."""
    from workbench.gen.retrieve import Retriever

    ws = _ws(ctx).require()
    r = Retriever.from_workspace(ws, name, device)
    titles = ws.table("products").set_index("product_id")["title"]
    for q, hits in zip(queries, r.search(list(queries), width)):
        click.echo(f"\n{q!r}: {len(hits)} SIDs, {sum(len(h.products) for h in hits)} products")
        for h in hits[:top]:
            click.echo(f"  {'-'.join(map(str, h.sid)):<14} logp {h.logp:7.3f}  {len(h.products):3d} products: "
                       + "; ".join(titles.get(p, p) for p in h.products[:3]))
