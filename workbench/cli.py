"""`workbench ...` (also `python -m workbench ...`): every verb has --help.

Verbs of later components plug in with `main.add_command(...)` at the bottom of this file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from workbench.bench.dist import JOBS as DIST_JOBS
from workbench.cli_args import ints
from workbench.data.schema import DataError
from workbench.eval import METHODS
from workbench.workspace import Workspace, default_path


class Errors(click.Group):
    """Turn the errors users cause (bad files, missing workspaces) into one clear line, not a traceback."""

    def invoke(self, ctx):
        from workbench import dist

        try:
            out = super().invoke(ctx)
        except (DataError, FileNotFoundError, ValueError, KeyError) as e:
            dist.teardown(wait=False)
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise click.ClickException(f"{type(e).__name__}: {msg}") from None
        dist.teardown()  # under torchrun: every rank leaves together
        return out


def _ws(ctx: click.Context) -> Workspace:
    return ctx.find_root().obj["ws"]


@click.group(cls=Errors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Workspace directory (default: $WORKBENCH_WORKSPACE or ./workspaces/default).")
@click.version_option(package_name="workbench")
@click.pass_context
def main(ctx: click.Context, workspace: Path | None) -> None:
    """Generative e-commerce search workbench: data, semantic IDs, training, decoding, evaluation, logbook."""
    ctx.obj = {"ws": Workspace(workspace or default_path())}


# demo ------------------------------------------------------------------------------------------
@main.command()
@click.option("--rebuild", is_flag=True, help="Delete the workspace and build it again.")
@click.option("--source", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Workspace of tables to build from (default: the repository's sample_data/).")
@click.option("--embedder", default="minilm", show_default=True, help="minilm or hashing[-DIM].")
@click.option("--device", default="cpu", show_default=True, help="Torch device for models (cpu, cuda, cuda:1...).")
@click.option("--app/--no-app", default=True, show_default=True, help="Start the app on http://127.0.0.1:PORT afterwards.")
@click.option("--port", type=int, default=8501, show_default=True)
@click.pass_context
def demo(ctx: click.Context, rebuild: bool, source: Path | None, embedder: str, device: str, app: bool, port: int) -> None:
    """Build the default workspace from sample_data/ (steps already done are skipped), then open the app."""
    from workbench.pipeline import SAMPLE_DATA, build

    ws = _ws(ctx)
    if rebuild and ws.path.exists():
        shutil.rmtree(ws.path)
    click.echo(f"building workspace {ws.path}")
    t0 = time.perf_counter()
    build(ws, source or SAMPLE_DATA, embedder, device, echo=click.echo)
    click.echo(f"done in {time.perf_counter() - t0:.1f} s; logbook {ws.logbook_path}")
    if not app:
        click.echo('next: workbench data stats; workbench sql "SELECT kind, status, started_at FROM runs"')
        return
    script = Path(__file__).resolve().parent.parent / "app.py"
    if not script.exists():
        raise click.ClickException(f"the app is not installed beside the package ({script}); run from a clone of the repository")
    click.echo(f"starting the app on http://127.0.0.1:{port} (Ctrl+C stops it)")
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(ws.path.resolve())}
    sys.exit(subprocess.call([sys.executable, "-m", "streamlit", "run", str(script), "--server.address=127.0.0.1",
                              f"--server.port={port}", "--server.headless=true", "--browser.gatherUsageStats=false"],
                             env=env))


# data ------------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Create, import, validate and inspect the workspace's tables."""


@data.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Workspace to write (default: -w).")
@click.option("--preset", type=click.Choice(["sample"]), default="sample", show_default=True, help="Starting configuration.")
@click.option("--products", "n_products", type=int, default=None, help="Number of products.")
@click.option("--users", "n_users", type=int, default=None, help="Number of users.")
@click.option("--sessions", "n_sessions", type=int, default=None, help="Number of search sessions.")
@click.option("--clickbait-share", type=float, default=None, help="Share of click-bait products.")
@click.option("--seed", type=int, default=None, help="Random seed (same seed, same bytes).")
@click.pass_context
def synth(ctx, out, preset, seed, **sizes) -> None:
    """Generate a synthetic marketplace (catalog, users, queries, search log, judgments, truth)."""
    from workbench.data.synth import PRESETS, generate, synth_meta

    cfg = PRESETS[preset]
    over = {k: v for k, v in {**sizes, "seed": seed}.items() if v is not None}
    cfg = replace(cfg, **over)
    ws = Workspace(out) if out else _ws(ctx)
    t0 = time.perf_counter()
    done = ws.write_tables(generate(cfg))
    ws.init(**synth_meta(cfg))
    click.echo(f"wrote {ws.path} in {time.perf_counter() - t0:.1f} s: " + ", ".join(f"{t} {len(d):,}" for t, d in done.items()))


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
@click.option("--products", type=click.Path(dir_okay=False, path_type=Path), help="Product CSV (product_id, title; optional category, brand, price, attributes, description).")
@click.option("--judgments", type=click.Path(dir_okay=False, path_type=Path), help="Judgment CSV (query, product_id, relevance).")
@click.option("--search-log", type=click.Path(dir_okay=False, path_type=Path), help="Search-log CSV (session_id, user_id, query, product_id, position, impressed, clicked, purchased, time).")
@click.option("--users", type=click.Path(dir_okay=False, path_type=Path), help="User CSV (user_id; optional age_band, region).")
@click.option("--map", "maps", multiple=True, metavar="OURS=THEIRS", help="Column mapping, repeatable; OURS may be table.column.")
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of the files.")
@click.option("--sep", default=",", show_default=True, help="Field separator.")
@click.option("--relevance-threshold", type=float, default=None, help="Grades at or above it count as relevant.")
@click.option("--on-duplicate", type=click.Choice(["error", "mean", "max", "first"]), default="error", show_default=True,
              help="Judgments repeating a (query, product) pair once whitespace is normalised.")
@click.pass_context
def import_csv_cmd(ctx, products, judgments, search_log, users, maps, encoding, sep, relevance_threshold, on_duplicate) -> None:
    """Import product, judgment, search-log and user CSV files.

    Home Depot example: --products products.csv --judgments judgments_dev.csv
    --map product_id=product_uid --map title=product_title --relevance-threshold 2.5 --on-duplicate mean
    """
    from workbench.data.loaders import import_csv

    files = {k: v for k, v in {"products": products, "judgments": judgments, "search_log": search_log, "users": users}.items() if v}
    if not files:
        raise click.UsageError("give at least one file (--products, --judgments, --search-log, --users)")
    counts = import_csv(_ws(ctx), files, _mapping(maps), encoding, sep, relevance_threshold, on_duplicate)
    click.echo(f"imported into {_ws(ctx).path}: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))


@import_.command(name="lcrec")
@click.option("--items", required=True, type=click.Path(dir_okay=False, path_type=Path), help="<name>.item.json")
@click.option("--inter", type=click.Path(dir_okay=False, path_type=Path), help="<name>.inter.json (user -> item sequence)")
@click.pass_context
def import_lcrec_cmd(ctx, items, inter) -> None:
    """Import the LC-Rec json format: item metadata and chronological user sequences."""
    from workbench.data.loaders import import_lcrec

    counts = import_lcrec(_ws(ctx), items, inter)
    click.echo(f"imported into {_ws(ctx).path}: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))


@data.command()
@click.pass_context
def validate(ctx) -> None:
    """Re-check every table of the workspace (types, keys, values, references)."""
    counts = _ws(ctx).require().validate_all()
    click.echo("valid: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))


@data.command()
@click.pass_context
def stats(ctx) -> None:
    """Row counts and the search log's funnel (impressions, clicks, purchases)."""
    ws = _ws(ctx).require()
    for t in ws.tables():
        click.echo(f"{t:<16} {len(ws.table(t)):>10,} rows")
    if ws.has("search_log"):
        from workbench.data.funnel import funnel

        f = funnel(ws.table("search_log")).to_dict("records")[0]
        click.echo(f"\nsearch log: {f['sessions']:,} sessions, {f['impressions']:,} impressions, {f['clicks']:,} clicks "
                   f"(CTR {f['ctr']:.3f}), {f['purchases']:,} purchases (CVR {f['cvr']:.3f})")


@data.command()
def schema() -> None:
    """Print the data model: every table's columns and their meaning."""
    from workbench.data.schema import describe

    click.echo(describe())


# embed -----------------------------------------------------------------------------------------
@main.command()
@click.option("--embedder", default="minilm", show_default=True, help="minilm or hashing[-DIM].")
@click.option("--device", default="cpu", show_default=True, help="Torch device.")
@click.pass_context
def embed(ctx, embedder, device) -> None:
    """Embed the workspace's product titles and queries (cached: a rerun costs nothing)."""
    from workbench.embed import embed_workspace, get_embedder

    ws = _ws(ctx).require()
    t0 = time.perf_counter()
    vecs = embed_workspace(ws, get_embedder(embedder, device))
    click.echo(f"{', '.join(f'{k} {v.shape}' for k, v in vecs.items())} in {time.perf_counter() - t0:.1f} s")


# logbook ---------------------------------------------------------------------------------------
@main.command()
@click.argument("query")
@click.option("--max-rows", type=int, default=100, show_default=True, help="Rows to print.")
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON lines.")
@click.pass_context
def sql(ctx, query, max_rows, as_json) -> None:
    """Run read-only SQL on the workspace logbook (tables: runs, metrics, evals, bench, served)."""
    import duckdb
    import pandas as pd

    try:
        df = _ws(ctx).logbook().query(query, safe=True)
    except duckdb.Error as e:
        raise click.ClickException(f"SQL error: {e}") from None
    if as_json:
        for r in df.head(max_rows).to_dict(orient="records"):
            click.echo(json.dumps(r, default=str))
        return
    with pd.option_context("display.max_columns", 50, "display.width", 200, "display.max_colwidth", 60):
        click.echo(df.head(max_rows).to_string(index=False) if len(df) else "(no rows)")
    if len(df) > max_rows:
        click.echo(f"... {len(df) - max_rows:,} more rows (--max-rows)")


@main.command()
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
def runs(ctx, limit) -> None:
    """List the latest runs in the logbook."""
    ctx.invoke(sql, query=f"SELECT run_id, kind, status, seed, code_version, started_at, ended_at FROM runs "
               f"ORDER BY started_at DESC LIMIT {int(limit)}", max_rows=limit, as_json=False)


@main.command()
@click.argument("other", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def merge(ctx, other: Path) -> None:
    """Copy the runs of another logbook file (e.g. from a GPU machine) into this workspace's logbook."""
    added = _ws(ctx).require().logbook().merge(other)
    click.echo(", ".join(f"{n} {t}" for t, n in added.items()) + f" rows added from {other}")


@main.command(name="eval")
@click.option("--k", "ks", default="10,50", show_default=True, help="Cut-offs, comma-separated.")
@click.option("--width", type=int, default=32, show_default=True, help="Beam width of the generator.")
@click.option("--methods", default=",".join(METHODS), show_default=True)
@click.option("--share", type=float, default=0.3, show_default=True, help="Share of the k slots a supplement gives to generation.")
@click.option("--judgments", "judgments_csv", type=click.Path(dir_okay=False), default=None,
              help="Evaluate these judgments (CSV: query, product_id, relevance) instead of the held-out queries.")
@click.option("--threshold", type=float, default=None, help="Relevance threshold for --judgments (default: the workspace's).")
@click.option("--name", default="generator", show_default=True, help="Which generator checkpoint.")
@click.option("--embedder", default="minilm", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON records.")
@click.pass_context
def eval_(ctx, ks, width, methods, share, judgments_csv, threshold, name, embedder, device, as_json) -> None:
    """Generative retrieval against BM25, dense, hybrid and generation-as-supplement on the same queries."""
    from workbench.eval.harness import EvalConfig, evaluate, judgments_file

    ws = _ws(ctx).require()
    cfg = EvalConfig(ks=ints(ks), width=width, share=share, methods=tuple(m.strip() for m in methods.split(",")),
                     generator=name, embedder=embedder, device=device)
    queries = judgments_file(ws, judgments_csv, threshold) if judgments_csv else None
    with ws.logbook().run("eval", {"eval": cfg, "judgments": judgments_csv}) as run:
        df = evaluate(ws, cfg, queries, run=run, progress=not as_json)
    if as_json:
        click.echo(df.to_json(orient="records", indent=1))
    else:
        click.echo(df.set_index("method").T.to_string(float_format=lambda v: f"{v:.3f}"))


# benchmarks ------------------------------------------------------------------------------------
@main.group()
def bench() -> None:
    """Benchmarks: print a table and record the figures in the logbook's `bench` table."""


@bench.command(name="synth")
@click.option("--sizes", default="3000,100000,1000000", show_default=True, help="Comma-separated product counts.")
@click.option("--sessions-per-product", type=float, default=1.0, show_default=True)
@click.pass_context
def bench_synth(ctx, sizes, sessions_per_product) -> None:
    """Time and peak memory of generating, validating and writing a synthetic marketplace."""
    from workbench.bench import device_name, report
    from workbench.bench.data import synth_scale

    ns = [int(s) for s in sizes.split(",")]
    ws = _ws(ctx)
    with ws.logbook().run("bench", {"bench": "synth", "sizes": ns, "sessions_per_product": sessions_per_product}) as run:
        report("synth", synth_scale(ns, sessions_per_product), run, units={"generate_s": "s", "validate_write_s": "s",
               "total_s": "s", "peak_rss_mib": "MiB"}, device=device_name())


@bench.command(name="embed")
@click.option("--n", type=int, default=2000, show_default=True, help="Number of product titles to embed.")
@click.option("--embedders", default="minilm,hashing", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.pass_context
def bench_embed(ctx, n, embedders, device, batch_size) -> None:
    """Embedding throughput (titles per second) of each embedder, on the workspace's product titles."""
    from workbench.bench import device_name, report
    from workbench.bench.data import embed_speed
    from workbench.embed import product_texts

    ws = _ws(ctx).require()
    titles = product_texts(ws.table("products"))
    titles = (titles * (n // max(len(titles), 1) + 1))[:n]
    with ws.logbook().run("bench", {"bench": "embed", "n": n, "batch_size": batch_size, "device": device}) as run:
        report("embed", embed_speed(titles, embedders.split(","), device, batch_size), run,
               units={"texts_per_s": "1/s", "seconds": "s"}, device=device_name(device))


@bench.command(name="sid")
@click.option("--dataset", type=click.Choice(["workspace", "scientific", "homedepot"]), default="workspace", show_default=True,
              help="The -w workspace, or a real data set imported from --datasets into workspaces/bench-<name>.")
@click.option("--datasets", "datasets_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the real data sets (default: ../shared/datasets beside the repository).")
@click.option("--codebook-sizes", default="256,256,256", show_default=True)
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--variants", default="plain,+category,+query,cq-sid", show_default=True)
@click.option("--embedder", default="minilm", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rotation-trick", is_flag=True, help="Rotation trick instead of straight-through gradients.")
@click.pass_context
def bench_sid(ctx, dataset, datasets_dir, codebook_sizes, epochs, variants, embedder, device, seed, rotation_trick) -> None:
    """CQ-SID ablation (plain, +category, +query, both) with the same seed and budget; published indexes too."""
    from workbench.bench import device_name, report
    from workbench.bench.sid import ablation, base_config, code_stats, lcrec_index
    from workbench.embed import get_embedder
    from workbench.sid.store import workspace_data

    ws = _ws(ctx) if dataset == "workspace" else _bench_workspace(dataset, datasets_dir)
    e = get_embedder(embedder, device)
    data = workspace_data(ws.require(), e)
    base = base_config(e.dim, ints(codebook_sizes), epochs, seed, rotation_trick)
    names = [v.strip() for v in variants.split(",")]
    if data.category is None:
        names = [v for v in names if v not in ("+category",)]  # no categories: +category is plain
    if data.pairs is None or not len(data.pairs):
        names = [v for v in names if v not in ("+query",)]
    params = {"dataset": dataset, "workspace": str(ws.path), "codebook_sizes": base.model.codebook_sizes, "epochs": epochs,
              "rotation_trick": rotation_trick,
              "embedder": e.key, "seed": seed, "products": len(data.x)}
    with ws.logbook().run("bench", {"bench": "sid", **params}, seed=seed) as run:
        rows = ablation(data, base, names, device)
        if dataset == "scientific":
            root = datasets_dir or DATASETS
            for name in ("rqvae_native", "letter_native"):
                codes = lcrec_index(root / "amazon_scientific" / f"{name}__Scientific.index.json", data.product_ids)
                rows.append(code_stats(f"{name} (published, 3 levels)", codes[:, :3], data.category))
                rows.append(code_stats(f"{name} (published, 4 levels)", codes, data.category))
        report("sid", rows, run, params=params, device=device_name(device))


@bench.command(name="beam")
@click.option("--widths", default="1,2,4,8,16,32,64,128,256", show_default=True)
@click.option("--batch-sizes", default="1,32", show_default=True)
@click.option("--k", type=int, default=50, show_default=True, help="Recall@K over the retrieved products.")
@click.option("--tolerance", type=float, default=0.02, show_default=True,
              help="Pick the smallest width whose Recall@K is within this share of the widest width's.")
@click.option("--ids", "modes", default="cluster,unique", show_default=True,
              help="Compare cluster and unique IDs (each in workspaces/bench-beam-<mode>, built from -w's tables), "
                   "or 'workspace' for the workspace's own generator.")
@click.option("--speed/--no-speed", default=True, show_default=True,
              help="Also time our beam search against HF T5 generate (random models, 20k SIDs, width 64).")
@click.option("--speed-batches", default="32", show_default=True, help="Batch sizes of the speed comparison.")
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--embedder", default="minilm", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def bench_beam(ctx, widths, batch_sizes, k, tolerance, modes, speed, speed_batches, rounds, embedder, device) -> None:
    """Beam width vs latency and Recall@K (cluster vs unique IDs); speed against Hugging Face generate."""
    from workbench.bench import beam as bb
    from workbench.bench import device_name, report

    ws = _ws(ctx).require()
    widths, sizes = list(ints(widths)), list(ints(batch_sizes))
    params = {"widths": widths, "batch_sizes": sizes, "k": k, "tolerance": tolerance, "ids": modes, "rounds": rounds}
    with ws.logbook().run("bench", {"bench": "beam", **params, "device": device}) as run:
        for b in list(ints(speed_batches)) if speed else []:
            rows, summary = bb.speed(batch=b, device=device, rounds=rounds)
            rows = [{**r, "case": f"{r['case']}, batch {b}"} for r in rows]
            report("beam-speed", rows, run, units={"s_per_batch": "s", "queries_per_s": "1/s"},
                   params={"batch": b, "width": 64, "sids": summary["sids"]}, device=device_name(device))
            report("beam-speed-summary", [{"case": f"batch {b}, width 64", **summary}], run, device=device_name(device))
        picks = {}
        for mode in [m.strip() for m in modes.split(",")]:
            w = ws if mode == "workspace" else bb.mode_workspace(ws, mode, embedder, device)
            picks[mode] = bb.run_sweep(w, mode, widths, sizes, k, tolerance, rounds, run, device)
        summary = []
        target = min(p["widest_recall"] for _, p in picks.values()) * (1 - tolerance)
        for mode, (rows, p) in picks.items():
            summary.append({"case": mode, **p, "target_recall": target, "width_for_target": bb.width_for_recall(rows, k, target)})
        report("beam-width-choice", summary, run, device=device_name(device))


@bench.command(name="seqrec")
@click.option("--datasets", "datasets_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the real data sets (default: ../shared/datasets beside the repository).")
@click.option("--indexes", default="cq-sid,rqvae_native,letter_native", show_default=True,
              help="SIDs to predict: cq-sid (ours, trained in the bench workspace if missing) and the published indexes.")
@click.option("--codebook-sizes", default="256,256,256", show_default=True, help="CQ-SID's, when it is trained here.")
@click.option("--epochs", default="10,10", show_default=True, help="Epochs of stage 1 (items) and stage 2 (next item).")
@click.option("--d-model", type=int, default=128, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True)
@click.option("--width", type=int, default=32, show_default=True)
@click.option("--history", type=int, default=5, show_default=True, help="History items given as SID tokens.")
@click.option("--embedder", default="minilm", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def bench_seqrec(ctx, datasets_dir, indexes, codebook_sizes, epochs, d_model, layers, width, history, embedder, device,
                 seed) -> None:
    """Next-item prediction on Amazon Scientific (leave-last-item-out): the same generator on our CQ-SID vs
    the published TIGER-style (RQ-VAE) and LETTER indexes."""
    from workbench.bench import device_name, report
    from workbench.bench.seqrec import run_case, sequences, sid_table
    from workbench.bench.sid import lcrec_index
    from workbench.gen.train import TrainConfig
    from workbench.sid.store import load_sids, sid_dir

    ws = _bench_workspace("scientific", datasets_dir)
    e1, e2 = ints(epochs)
    names = [n.strip() for n in indexes.split(",")]
    if "cq-sid" in names and not (sid_dir(ws) / "sids.parquet").exists():
        from workbench.embed import get_embedder
        from workbench.sid.cqsid import CQSIDConfig
        from workbench.sid.rqvae import RQVAEConfig
        from workbench.sid.store import train_workspace

        e = get_embedder(embedder, device)
        train_workspace(ws, CQSIDConfig(model=RQVAEConfig(input_dim=e.dim, codebook_sizes=ints(codebook_sizes)), seed=seed),
                        e, device)
    products = ws.table("products")
    seqs = sequences(ws.table("interactions"))
    root = datasets_dir or DATASETS
    model = {"d_model": d_model, "enc_layers": layers, "dec_layers": layers, "n_heads": 4, "d_ff": 4 * d_model}
    params = {"epochs": [e1, e2], "model": model, "width": width, "history": history, "seed": seed, "users": len(seqs)}
    rows = []
    with ws.logbook().run("bench", {"bench": "seqrec", "indexes": names, **params, "device": device}, seed=seed) as run:
        for name in names:
            if name == "cq-sid":
                sids = load_sids(ws)
            else:
                path = root / "amazon_scientific" / f"{name}__Scientific.index.json"
                sids = sid_table(products["product_id"], lcrec_index(path, products["product_id"].to_numpy()))
            row = run_case(products, seqs, sids, model, TrainConfig(seed=seed), (e1, e2), history, width, device, run, name)
            rows.append(row)
            for key, value in row.items():
                if "@" in key:
                    metric, _, k = key.partition("@")
                    run.log_eval(metric, value, k=int(k), dataset="scientific leave-last-out", method=f"generator on {name}")
        report("seqrec", rows, run, params=params, device=device_name(device))


DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def _bench_workspace(name: str, root: Path | None) -> Workspace:
    """workspaces/bench-<name>, imported from the real data set on first use."""
    from workbench.data.loaders import import_csv, import_lcrec

    root = root or DATASETS
    ws = Workspace(Path("workspaces") / f"bench-{name}")
    if ws.exists() and ws.has("products"):
        return ws
    if not root.exists():
        raise FileNotFoundError(f"real data sets not found at {root}; pass --datasets")
    if name == "scientific":
        d = root / "amazon_scientific"
        import_lcrec(ws, d / "Scientific.item.json", d / "Scientific.inter.json")
    else:
        d = root / "homedepot"
        import_csv(ws, {"products": d / "products.csv", "judgments": d / "judgments_dev.csv"},
                   {"product_id": "product_uid", "title": "product_title"}, relevance_threshold=2.5, on_duplicate="mean")
    return ws


@bench.command(name="app")
@click.option("--sessions", type=int, default=20, show_default=True, help="Browser sessions searching at once.")
@click.option("--seconds", type=float, default=60, show_default=True, help="How long they search.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def bench_app(ctx, sessions, seconds, seed) -> None:
    """Load on the app: concurrent browser sessions (headless chromium) searching; p50/p95 per search."""
    from workbench.bench import report
    from workbench.bench.app import load

    ws = _ws(ctx).require()
    with ws.logbook().run("bench", {"bench": "app", "sessions": sessions, "seconds": seconds}, seed=seed) as run:
        row = load(ws.path.resolve(), sessions, seconds, seed)
        report("app-load", [row], run, units={"p50_s": "s", "p95_s": "s", "max_s": "s", "searches_per_s": "1/s"},
               params={"sessions": sessions, "seconds": seconds})


@bench.command(name="sid-assign")
@click.option("--n", type=int, default=1_000_000, show_default=True, help="Number of products (random vectors).")
@click.option("--dim", type=int, default=384, show_default=True)
@click.option("--codebook-sizes", default="256,256,256", show_default=True)
@click.option("--chunk", type=int, default=65_536, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def bench_sid_assign(ctx, n, dim, codebook_sizes, chunk, device) -> None:
    """Time and peak memory of assigning SIDs to N products with a trained model (target: 1M x 384-d <= 30 s)."""
    from workbench.bench import device_name, report
    from workbench.bench.sid import assign_scale
    
    params = {"n": n, "dim": dim, "codebook_sizes": codebook_sizes, "chunk": chunk}
    with _ws(ctx).logbook().run("bench", {"bench": "sid-assign", **params}) as run:
        report("sid-assign", [assign_scale(n, dim, ints(codebook_sizes), chunk, device)], run, params=params,
               units={"seconds": "s", "products_per_s": "1/s", "peak_rss_mib": "MiB", "peak_rss_growth_mib": "MiB", "input_mib": "MiB"},
               device=device_name(device))

@bench.command(name="dist")
@click.option("--job", type=click.Choice(DIST_JOBS), default="train", show_default=True,
              help="Which trainer: the generator (workbench train), CQ-SID (sid train) or stage 4 (rl).")
@click.option("--procs", default="1,2", show_default=True, help="Process counts to compare (the first is the baseline).")
@click.option("--epochs", type=int, default=3, show_default=True, help="Epochs (RL: steps) per run.")
@click.option("--device", default="cpu", show_default=True, help="cuda: one GPU per process.")
@click.option("--args", "job_args", default="", help='More options for the trainer, e.g. "--stages 1 --d-model 256".')
@click.pass_context
def bench_dist(ctx, job, procs, epochs, device, job_args) -> None:
    """Data-parallel throughput: a trainer on 1 process and under torchrun on N, examples/s.

    Runs in a scratch copy of the workspace (links, its own logbook): the workspace is not changed."""
    import shlex

    from workbench.bench import device_name, report
    from workbench.bench.dist import throughput

    ws = _ws(ctx).require()
    extra = ["--device", device, *shlex.split(job_args)]
    params = {"job": job, "procs": procs, "epochs": epochs, "args": job_args}
    with ws.logbook().run("bench", {"bench": "dist", **params}) as run:
        report("dist-throughput", throughput(ws, ints(procs), job, epochs, extra), run, params=params,
               units={"examples_per_s": "1/s", "wall_s": "s"}, device=device_name(device))


@bench.command(name="batch")
@click.option("--n", "sizes", default="1000000", show_default=True, help="Catalog sizes, e.g. 100000,1000000.")
@click.option("--jobs", default="embed,sids,decode", show_default=True)
@click.option("--chunk", type=int, default=65_536, show_default=True)
@click.option("--embedder", default=None, help="Default: the one the workspace's SIDs were built with.")
@click.option("--width", type=int, default=16, show_default=True, help="Decoding beam width.")
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def bench_batch(ctx, sizes, jobs, chunk, embedder, width, device) -> None:
    """Batch jobs at scale: embed, assign SIDs and decode N products in chunks; time and peak memory."""
    from workbench.bench import device_name, report
    from workbench.bench.batch import scale
    from workbench.serve import workspace_embedder

    ws = _ws(ctx).require()
    embedder = embedder or workspace_embedder(ws)
    params = {"sizes": sizes, "jobs": jobs, "chunk": chunk, "embedder": embedder, "width": width}
    with ws.logbook().run("bench", {"bench": "batch", **params}) as run:
        rows = [r for n in ints(sizes) for r in scale(ws, n, jobs.split(","), chunk, embedder, width, device=device)]
        report("batch-scale", rows, run, params=params, device=device_name(device),
               units={"seconds": "s", "rows_per_s": "1/s", "peak_rss_mib": "MiB", "output_mib": "MiB"})


from workbench.batch_cli import batch  # noqa: E402
from workbench.gen.cli import gen, train  # noqa: E402
from workbench.rl.cli import bench_rl, ranker, rl  # noqa: E402
from workbench.sid.cli import sid  # noqa: E402  (later components' verbs plug in here)

main.add_command(sid)
main.add_command(batch)
main.add_command(gen)
main.add_command(train)
main.add_command(ranker)
main.add_command(rl)
bench.add_command(bench_rl)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
