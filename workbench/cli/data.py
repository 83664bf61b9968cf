"""`workbench data synth | import csv | import lcrec | validate | stats | schema` and `workbench embed`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from workbench.cli.options import FINITE, apply, config_options, device_option, embedder_option, path_option, writes, ws_of
from workbench.data.funnel import funnel
from workbench.data.pseudo import PseudoConfig
from workbench.data.schema import describe
from workbench.data.synth import PRESETS, SynthConfig, generate, synth_meta
from workbench.embed import embed_workspace, get_embedder
from workbench.pipeline import report
from workbench.workspace import Workspace, clean_temps


@click.group()
def data() -> None:
    """Create, import, validate and inspect the workspace's tables."""


def replace_option():
    return click.option("--replace", is_flag=True, help="Replace tables that trained artifacts (SIDs, generator, ranker) were "
                        "built from; they are then refused until rebuilt (`workbench data validate` lists them).")


def _stale_after(ws: Workspace, had: list[str]) -> None:
    """After a write: the derived tables it dropped (`had`: the tables before), which artifacts it left
    stale, and how to rebuild each."""
    for t in had:
        if not ws.has(t):
            click.echo(f"  dropped {t}: drawn from the replaced rows (`workbench data pseudo` draws them again)")
    if not ws.artifacts():
        return

    bad = [r for r in report(ws) if r["status"] != "ok"]
    for r in bad:
        click.echo(f"  {r['status']}: {r['artifact']}: {r['detail']}")


@data.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Workspace to write (default: -w).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="sample", show_default=True, help="Starting configuration.")
@config_options(SynthConfig, "n_products", "n_users", "n_sessions", "clickbait_share", "seed",
                flags={"n_products": "--products", "n_users": "--users", "n_sessions": "--sessions"})
@replace_option()
@click.pass_context
@writes(to="out")
def synth(ctx, out, preset, replace, **kw) -> None:
    """Generate a synthetic marketplace (catalog, users, queries, search log, judgments, truth); options
    given override the preset."""
    cfg = apply(ctx, PRESETS[preset], kw)
    ws = Workspace(out) if out else ws_of(ctx)
    t0, had = time.perf_counter(), ws.tables()
    done = ws.write_tables(generate(cfg), replace=replace, meta=synth_meta(cfg))
    click.echo(f"wrote {ws.path} in {time.perf_counter() - t0:.1f} s: " + ", ".join(f"{t} {len(d):,}" for t, d in done.items()))
    _stale_after(ws, had)


def _mapping(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"{p!r}: expected OURS=THEIRS, e.g. product_id=product_uid", param_hint="--map")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


@data.group(name="import")
def import_() -> None:
    """Import real data (CSV files or the LC-Rec json format) into a workspace."""


@import_.command(name="csv")
@path_option("--products", help="Product CSV (product_id, title; optional category, brand, price, attributes, description).")
@path_option("--judgments", help="Judgment CSV (query, product_id, relevance).")
@path_option("--search-log", help="Search-log CSV (session_id, user_id, query, product_id, position, impressed, clicked, purchased, time).")
@path_option("--users", help="User CSV (user_id; optional age_band, region).")
@click.option("--map", "maps", multiple=True, metavar="OURS=THEIRS", help="Column mapping, repeatable; OURS may be table.column.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the files.")
@click.option("--sep", default=",", show_default=True, help="Field separator.")
@click.option("--relevance-threshold", type=FINITE, default=None, help="Grades at or above it count as relevant.")
@click.option("--on-duplicate", type=click.Choice(["error", "mean", "max", "first"]), default="error", show_default=True,
              help="Judgments repeating a (query, product) pair once whitespace is normalised.")
@replace_option()
@click.pass_context
@writes
def import_csv_cmd(ctx, products, judgments, search_log, users, maps, encoding, sep, relevance_threshold, on_duplicate,
                   replace) -> None:
    """Import product, judgment, search-log and user CSV files.

    Home Depot example: --products products.csv --judgments judgments_dev.csv
    --map product_id=product_uid --map title=product_title --relevance-threshold 2.5 --on-duplicate mean
    """
    files = {k: v for k, v in {"products": products, "judgments": judgments, "search_log": search_log, "users": users}.items() if v}
    if not files:
        raise click.UsageError("give at least one file (--products, --judgments, --search-log, --users)")
    ws = ws_of(ctx)
    had = ws.tables()
    counts = ws.import_csv(files, _mapping(maps), encoding=encoding, sep=sep, relevance_threshold=relevance_threshold,
                           on_duplicate=on_duplicate, replace=replace)
    click.echo(f"imported into {ws.path}: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    _stale_after(ws, had)


@import_.command(name="lcrec")
@path_option("--items", required=True, help="<name>.item.json")
@path_option("--inter", help="<name>.inter.json (user -> item sequence)")
@replace_option()
@click.pass_context
@writes
def import_lcrec_cmd(ctx, items, inter, replace) -> None:
    """Import the LC-Rec json format: item metadata and chronological user sequences."""
    ws = ws_of(ctx)
    had = ws.tables()
    counts = ws.import_lcrec(items, inter, replace=replace)
    click.echo(f"imported into {ws.path}: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    _stale_after(ws, had)


@data.command()
@click.pass_context
def validate(ctx) -> None:
    """Re-check every table (types, keys, values, references), then load every artifact and check its
    lineage (workbench.lineage): exits 1 when an artifact is stale or broken, naming the rebuild."""
    ws = ws_of(ctx).require()
    counts = ws.validate_all()
    click.echo("valid: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    if gone := clean_temps(ws.path):
        click.echo(f"removed {len(gone)} temporary file(s) of killed jobs")
    rows = report(ws)
    for r in rows:
        click.echo(f"{r['status']:<9}{r['artifact']}" + (f": {r['detail']}" if r["detail"] else ""))
    bad = [r["artifact"] for r in rows if r["status"] in ("stale", "broken")]
    if bad:
        raise click.ClickException(f"{len(bad)} artifact(s) stale or broken: {', '.join(bad)}")


@data.command()
@click.pass_context
def stats(ctx) -> None:
    """Row counts and the search log's funnel (impressions, clicks, purchases)."""
    ws = ws_of(ctx).require()
    for t in ws.tables():
        click.echo(f"{t:<16} {len(ws.table(t)):>10,} rows")
    if ws.has("search_log"):
        f = funnel(ws.table("search_log")).to_dict("records")[0]
        click.echo(f"\nsearch log: {f['sessions']:,} sessions, {f['impressions']:,} impressions, {f['clicks']:,} clicks "
                   f"(CTR {f['ctr']:.3f}), {f['purchases']:,} purchases (CVR {f['cvr']:.3f})")


@data.command()
@config_options(PseudoConfig, "per_product", "min_words", "max_words", "seed")
@click.pass_context
@writes
def pseudo(ctx, **kw) -> None:
    """Draw pseudo-queries from the product text into the pseudo_queries table (never equal to a
    validation or test query); `workbench train --pseudo N` trains stage 1 on them."""
    from workbench.gen.data import write_pseudo_queries

    ws = ws_of(ctx).require()
    df = write_pseudo_queries(ws, apply(ctx, PseudoConfig(), kw))
    click.echo(f"{len(df):,} pseudo-queries for {df['product_id'].nunique():,} products: "
               + ", ".join(f"{k} {n:,}" for k, n in df["kind"].value_counts().items()))
    for r in df.head(6).itertuples():
        click.echo(f"  {r.product_id}: {r.query!r} ({r.kind})")


@data.command()
def schema() -> None:
    """Print the data model: every table's columns and their meaning."""
    click.echo(describe())


@click.command()
@embedder_option()
@device_option("Torch device.")
@click.pass_context
def embed(ctx, embedder, device) -> None:
    """Embed the workspace's product titles and queries (cached: a rerun costs nothing)."""
    ws = ws_of(ctx).require()
    t0 = time.perf_counter()
    vecs = embed_workspace(ws, get_embedder(embedder, device, ws.path))
    click.echo(f"{', '.join(f'{k} {v.shape}' for k, v in vecs.items())} in {time.perf_counter() - t0:.1f} s")
