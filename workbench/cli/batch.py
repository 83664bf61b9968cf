"""`workbench batch ...`: the chunked jobs of workbench/batch.py, each logged as a `batch` run."""

from __future__ import annotations

from pathlib import Path

import click

from workbench import batch as b
from workbench import dist
from workbench.cli.options import NAME, apply, config_options, device_option, embedder_option, ws_of
from workbench.embed import get_embedder
from workbench.eval.width import served_width
from workbench.gen import names
from workbench.gen.config import ORDERS, ChannelConfig
from workbench.gen.retrieve import Channel, Retriever
from workbench.sid.store import load_model, workspace_embedder

IO = [click.argument("src", type=click.Path(path_type=Path)), click.argument("dst", type=click.Path(path_type=Path)),
      click.option("--chunk", type=click.IntRange(min=1), default=65_536, show_default=True, help="Rows in memory at a time."),
      device_option()]


def io_options(f):
    for deco in reversed(IO):
        f = deco(f)
    return click.pass_context(f)


def _run(ctx, job: str, src: Path, dst: Path, columns: list[str], fn, chunk: int, config: dict) -> None:
    ws = ws_of(ctx).require()
    if src.resolve() == dst.resolve():
        raise click.UsageError("the output would overwrite the input; give another path")
    if not dist.is_main():  # under torchrun: rank 0 logs and reports
        b.stream(src, dst, columns, fn, chunk, desc=job)
        return
    with ws.logbook().run("batch", {"job": job, "src": str(src), "dst": str(dst), "chunk": chunk, "processes": dist.world(),
                                    **config}, name=f"batch {job}") as run:
        stats = b.stream(src, dst, columns, fn, chunk, desc=job)
        run.log(0, stage=job, **{k: float(v) for k, v in stats.items()})
    click.echo(f"{job}: {stats['rows']:,} rows in {stats['seconds']:.1f} s ({stats['rows_per_s']:,.0f}/s), "
               f"peak memory {stats['peak_rss_mib']:,.0f} MiB -> {dst}")


@click.group()
def batch() -> None:
    """Chunked jobs over catalogs larger than memory (Parquet in, Parquet out).

    Under torchrun (e.g. `torchrun --nproc_per_node 8 -m workbench batch decode ... --device cuda`)
    the chunks are dealt out over the processes and rank 0 merges their parts in order."""


@batch.command()
@io_options
@embedder_option()
def embed(ctx, src, dst, chunk, device, embedder) -> None:
    """Embed products: SRC (product_id, title, [brand, category, description]) -> DST (product_id, vector)."""
    device = dist.setup(device)
    e = get_embedder(embedder, device)
    _run(ctx, "embed", src, dst, b.product_columns(src), b.embed_fn(e), chunk, {"embedder": embedder})


@batch.command()
@io_options
@click.option("--vectors", is_flag=True, help="SRC holds vectors (the output of `batch embed`), not product text.")
def sids(ctx, src, dst, chunk, device, vectors) -> None:
    """Assign SIDs with the workspace's SID model: products (or their vectors) -> product_id, sid_1..sid_L."""
    device = dist.setup(device)
    ws = ws_of(ctx).require()
    model, cfg, _ = load_model(ws, device)
    e = None if vectors else get_embedder(workspace_embedder(ws), device)
    cols = ["product_id", "vector"] if vectors else b.product_columns(src)
    _run(ctx, "sids", src, dst, cols, b.sids_fn(model, e, device), chunk, {"vectors": vectors, "levels": cfg.model.levels})


@batch.command()
@io_options
@click.option("--column", default="title", show_default=True, help="The text column to decode (title, query...).")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="Beam width [default: the width the workspace serves: its sweep's choice, else the stated default].")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="SIDs kept per row.")
@click.option("--model", "name", type=NAME, default=names.DEPLOYED, show_default=True)
@click.option("--products", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also keep the channel's first N products per row (the decoded SIDs' products, ranked inside).")
@config_options(ChannelConfig, "budget", "order", "logp_weight", "popularity_weight", "pool", "compact", choices={"order": ORDERS})
def decode(ctx, src, dst, chunk, device, column, width, top, name, products, **kw) -> None:
    """Decode every row's text into its top SIDs with the generator (offline, batched beam search)."""
    device = dist.setup(device)
    ws = ws_of(ctx).require()
    retriever = Retriever.from_workspace(ws, name, device)
    width = served_width(ws) if width is None else width
    cfg = apply(ctx, ChannelConfig(), kw)
    channel = Channel.from_workspace(ws, cfg, device) if products else None
    cols = list(dict.fromkeys(["product_id", column])) if column == "title" else [column]
    _run(ctx, "decode", src, dst, cols, b.decode_fn(retriever, column, width, top, channel=channel, products=products), chunk,
         {"column": column, "width": width, "top": top, "model": name, "products": products, "channel": cfg})
