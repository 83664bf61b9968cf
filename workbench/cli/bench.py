"""`workbench bench ...`: every benchmark prints a table and records its figures in the logbook's
`bench` table (`workbench.report`); the measuring code lives in `workbench.bench` and `workbench.eval.width`."""

from __future__ import annotations

from pathlib import Path

import click

from workbench import recipes
from workbench.bench import beam as bb
from workbench.bench.app import load as browser_load
from workbench.bench.backbone import throughput as backbone_throughput
from workbench.bench.batch import scale
from workbench.bench.catalog import measure, recipe_workspace
from workbench.bench.compact import run as compact_run
from workbench.bench.compact import scoring as compact_scoring
from workbench.bench.data import DATASETS, bench_workspace, embed_speed, synth_scale
from workbench.bench.decode import MODES as DECODE_MODES
from workbench.bench.decode import run as decode_run
from workbench.bench.dist import JOBS as DIST_JOBS
from workbench.bench.dist import throughput as dist_throughput
from workbench.bench.pages import tour
from workbench.bench.psearch import run as psearch_run
from workbench.bench.rl import compare
from workbench.bench.scale import CHANNELS as SCALE_CHANNELS
from workbench.bench.scale import capacity as scale_capacity
from workbench.bench.scale import chart as scale_chart
from workbench.bench.scale import paired as scale_paired
from workbench.bench.scale import run as scale_run
from workbench.bench.seqrec import run_case, sequences, sid_table
from workbench.bench.serve import batching_gain, capacity, grow
from workbench.bench.serve import load as serve_load
from workbench.bench.sid import ablation, assign_scale, base_config, code_stats, lcrec_index
from workbench.bench.stage4 import study
from workbench.cli.options import (
    Finite,
    apply,
    config_options,
    device_option,
    embedder_option,
    given,
    ints,
    names,
    p99_budgets,
    set_fields,
    ws_of,
)
from workbench.cli.rl import ensure_ranker, rl_config, rl_options
from workbench.data.market import Market
from workbench.embed import DTYPES, get_embedder, product_texts
from workbench.eval.config import ABConfig, SweepConfig
from workbench.eval.width import run_sweep, served_width, width_for_recall
from workbench.gen.config import ChannelConfig, TrainConfig
from workbench.logbook import tagged
from workbench.pipeline import check
from workbench.report import device_name, report
from workbench.service import CHANNELS, ServeConfig
from workbench.sid.config import CQSIDConfig, RQVAEConfig
from workbench.sid.store import load_sids, train_workspace, workspace_data, workspace_embedder


# benchmarks ------------------------------------------------------------------------------------
@click.group()
def bench() -> None:
    """Benchmarks: print a table and record the figures in the logbook's `bench` table."""


@bench.command(name="synth")
@click.option("--sizes", default="3000,100000,1000000", show_default=True, help="Comma-separated product counts.")
@click.option("--sessions-per-product", type=Finite(min=0, min_open=True), default=1.0, show_default=True)
@click.pass_context
def bench_synth(ctx, sizes, sessions_per_product) -> None:
    """Time and peak memory of generating, validating and writing a synthetic marketplace."""
    ns = [int(s) for s in sizes.split(",")]
    ws = ws_of(ctx)
    with ws.logbook().run("bench", {"bench": "synth", "sizes": ns, "sessions_per_product": sessions_per_product}) as run:
        report("synth", synth_scale(ns, sessions_per_product), run, units={"generate_s": "s", "validate_write_s": "s",
               "total_s": "s", "peak_rss_mib": "MiB"}, device=device_name())


@bench.command(name="embed")
@click.option("--n", type=click.IntRange(min=1), default=2000, show_default=True, help="Number of product titles to embed.")
@click.option("--embedders", default="minilm,hashing", show_default=True)
@device_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.pass_context
def bench_embed(ctx, n, embedders, device, batch_size) -> None:
    """Embedding throughput (titles per second) of each embedder, on the workspace's product titles."""
    ws = ws_of(ctx).require()
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
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--variants", default="plain,+category,+query,cq-sid", show_default=True)
@embedder_option()
@device_option()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rotation-trick", is_flag=True, help="Rotation trick instead of straight-through gradients.")
@click.pass_context
def bench_sid(ctx, dataset, datasets_dir, codebook_sizes, epochs, variants, embedder, device, seed, rotation_trick) -> None:
    """CQ-SID ablation (plain, +category, +query, both) with the same seed and budget; published indexes too."""
    ws = ws_of(ctx) if dataset == "workspace" else bench_workspace(dataset, datasets_dir)
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
@config_options(SweepConfig, "widths", "batch_sizes", "k", "tolerance")
@click.option("--ids", "modes", default="cluster,unique", show_default=True,
              help="Compare cluster and unique IDs (each in workspaces/bench-beam-<mode>, built from -w's tables), "
                   "or 'workspace' for the workspace's own generator.")
@click.option("--speed/--no-speed", default=True, show_default=True,
              help="Also time our beam search against HF T5 generate (random models, 20k SIDs, width 64).")
@click.option("--speed-batches", default="32", show_default=True, help="Batch sizes of the speed comparison.")
@config_options(SweepConfig, "rounds")
@embedder_option()
@device_option()
@click.pass_context
def bench_beam(ctx, modes, speed, speed_batches, embedder, device, **kw) -> None:
    """Beam width vs latency and Recall@K (cluster vs unique IDs); speed against Hugging Face generate."""
    ws = ws_of(ctx).require()
    cfg = apply(ctx, SweepConfig(), kw)
    k, tolerance = cfg.k, cfg.tolerance
    params = {"widths": list(cfg.widths), "batch_sizes": list(cfg.batch_sizes), "k": k, "tolerance": tolerance, "ids": modes,
              "rounds": cfg.rounds}
    with ws.logbook().run("bench", {"bench": "beam", **params, "device": device}) as run:
        for b in list(ints(speed_batches)) if speed else []:
            rows, summary = bb.speed(batch=b, device=device, rounds=cfg.rounds)
            rows = [{**r, "case": f"{r['case']}, batch {b}"} for r in rows]
            report("beam-speed", rows, run, units={"s_per_batch": "s", "queries_per_s": "1/s"},
                   params={"batch": b, "width": 64, "sids": summary["sids"]}, device=device_name(device))
            report("beam-speed-summary", [{"case": f"batch {b}, width 64", **summary}], run, device=device_name(device))
        picks = {}
        for mode in names(modes):
            w = ws if mode == "workspace" else bb.mode_workspace(ws, mode, embedder, device)
            picks[mode] = run_sweep(w, mode, cfg, run, device)
        summary = []
        target = min(p["widest_recall"] for _, p in picks.values()) * (1 - tolerance)
        for mode, (rows, p) in picks.items():
            summary.append({"case": mode, **p, "target_recall": target, "width_for_target": width_for_recall(rows, k, target)})
        report("beam-width-choice", summary, run, device=device_name(device))


def scientific_sids(ws, name: str, datasets_dir, codebook_sizes: str, embedder: str, device: str, seed: int):
    """The SID table `name` of the Amazon Scientific workspace: cq-sid (ours, trained here when missing or
    stale) or a published LC-Rec index from the data set's folder."""
    products = ws.table("products")
    if name != "cq-sid":
        path = (datasets_dir or DATASETS) / "amazon_scientific" / f"{name}__Scientific.index.json"
        return sid_table(products["product_id"], lcrec_index(path, products["product_id"].to_numpy()))
    if check(ws, "sid"):
        e = get_embedder(embedder, device)
        train_workspace(ws, CQSIDConfig(model=RQVAEConfig(input_dim=e.dim, codebook_sizes=ints(codebook_sizes)), seed=seed),
                        e, device)
    return load_sids(ws)


def small_model(d_model: int, layers: int) -> dict:
    """The generator of the Amazon Scientific benchmarks: `layers` encoder and decoder layers, 4 heads."""
    return {"d_model": d_model, "enc_layers": layers, "dec_layers": layers, "n_heads": 4, "d_ff": 4 * d_model}


@bench.command(name="seqrec")
@click.option("--datasets", "datasets_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the real data sets (default: ../shared/datasets beside the repository).")
@click.option("--indexes", default="cq-sid,rqvae_native,letter_native", show_default=True,
              help="SIDs to predict: cq-sid (ours, trained in the bench workspace if missing) and the published indexes.")
@click.option("--codebook-sizes", default="256,256,256", show_default=True, help="CQ-SID's, when it is trained here.")
@click.option("--epochs", default="10,10", show_default=True, help="Epochs of stage 1 (items) and stage 2 (next item).")
@click.option("--d-model", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--width", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--history", type=click.IntRange(min=1), default=5, show_default=True, help="History items given as SID tokens.")
@embedder_option()
@device_option()
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def bench_seqrec(ctx, datasets_dir, indexes, codebook_sizes, epochs, d_model, layers, width, history, embedder, device,
                 seed) -> None:
    """Next-item prediction on Amazon Scientific (leave-last-item-out): the same generator on our CQ-SID vs
    the published TIGER-style (RQ-VAE) and LETTER indexes."""
    ws = bench_workspace("scientific", datasets_dir)
    e1, e2 = ints(epochs)
    names = [n.strip() for n in indexes.split(",")]
    products = ws.table("products")
    seqs = sequences(ws.table("interactions"))
    model = small_model(d_model, layers)
    params = {"epochs": [e1, e2], "model": model, "width": width, "history": history, "seed": seed, "users": len(seqs)}
    rows = []
    with ws.logbook().run("bench", {"bench": "seqrec", "indexes": names, **params, "device": device}, seed=seed) as run:
        for name in names:
            sids = scientific_sids(ws, name, datasets_dir, codebook_sizes, embedder, device, seed)
            row = run_case(products, seqs, sids, model, TrainConfig(seed=seed), (e1, e2), history, width, device, run, name)
            rows.append(row)
            for key, value in row.items():
                if "@" in key:
                    metric, _, k = key.partition("@")
                    run.log_eval(metric, value, k=int(k), dataset="scientific leave-last-out", method=f"generator on {name}")
        report("seqrec", rows, run, params=params, device=device_name(device))


@bench.command(name="psearch")
@click.option("--datasets", "datasets_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the real data sets (default: ../shared/datasets beside the repository).")
@click.option("--index", "index_name", type=click.Choice(["cq-sid", "rqvae_native", "letter_native"]), default="cq-sid",
              show_default=True, help="SIDs to decode: ours (trained in the bench workspace if missing) or a published index.")
@click.option("--codebook-sizes", default="256,256,256", show_default=True, help="CQ-SID's, when it is trained here.")
@click.option("--epochs", default="10,10,10", show_default=True, help="Epochs of stages 1 (items), 2 (queries), 3 (+ user).")
@click.option("--d-model", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--width", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--history", type=click.IntRange(min=1), default=5, show_default=True, help="History products given as SID tokens.")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Hit@K and NDCG@K.")
@embedder_option()
@device_option()
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def bench_psearch(ctx, datasets_dir, index_name, codebook_sizes, epochs, d_model, layers, width, history, k, embedder, device,
                  seed) -> None:
    """Personalised search on Amazon Scientific (category-path queries, leave-last-out): does the user's
    history raise hit@K over the same query without it? Separate and same-model anonymous, and a gate."""
    ws = bench_workspace("scientific", datasets_dir)
    e = ints(epochs)
    if len(e) != 3:
        raise click.BadParameter(f"three epoch counts (stages 1, 2, 3), got {epochs!r}", param_hint="--epochs")
    products = ws.table("products")
    sids = scientific_sids(ws, index_name, datasets_dir, codebook_sizes, embedder, device, seed)
    seqs = sequences(ws.table("interactions"))
    model = small_model(d_model, layers)
    params = {"index": index_name, "epochs": e, "model": model, "width": width, "history": history, "k": k, "seed": seed}
    with ws.logbook().run("bench", {"bench": "psearch", **params, "device": device}, seed=seed) as run:
        rows, facts = psearch_run(products, seqs, sids, model, TrainConfig(seed=seed), tuple(e), history, width, k, device, run)
        for row in rows:
            for metric in ("hit", "ndcg"):
                run.log_eval(metric, row[f"{metric}@{k}"], k=k, dataset="scientific category queries, leave-last-out",
                             method=row["search"])
        report("psearch", rows, run, case_key="search", params={**params, **facts}, device=device_name(device))


@bench.command(name="backbone")
@click.option("--backbones", default="scratch,minilm,sentence", show_default=True)
@click.option("--n", type=click.IntRange(min=1), default=2000, show_default=True, help="Title -> SID examples to train on.")
@click.option("--epochs", type=click.IntRange(min=2), default=2, show_default=True, help="Epochs (>= 2: the first and the later ones).")
@device_option()
@click.pass_context
def bench_backbone(ctx, backbones, n, epochs, device) -> None:
    """Training examples per second of each encoder backbone on the workspace's titles, one run."""
    ws = ws_of(ctx).require()
    params = {"backbones": backbones, "n": n, "epochs": epochs}
    with ws.logbook().run("bench", {"bench": "backbone", **params}) as run:
        report("backbone-throughput", backbone_throughput(ws, list(names(backbones)), n, epochs, device), run, params=params,
               units={"tokenize_s": "s", "wall_s": "s", "first_epoch_per_s": "1/s", "later_epochs_per_s": "1/s"},
               device=device_name(device))


@bench.command(name="compact")
@click.option("--codes", default="96,48,24", show_default=True, help="Codes per product to measure (one byte each; each must "
              "divide the embedding's dimensions); the float32 row is always measured.")
@click.option("--budget", type=click.IntRange(min=1), default=100, show_default=True, help="Candidates per query (Recall@budget).")
@click.option("--split", type=click.Choice(["validation", "test"]), default="validation", show_default=True,
              help="Queries to measure on: validation chooses, test reports once.")
@click.option("--width", type=click.IntRange(min=1), default=None, help="Beam width (default: the workspace's served width).")
@device_option()
@click.pass_context
def bench_compact(ctx, codes, budget, split, width, device) -> None:
    """The compact generative channel: recall and memory per product of its product-quantised in-cluster order
    against the float32 order, beside FAISS IVF-PQ with the same codes and the exact scan."""
    ws = ws_of(ctx).require()
    params = {"codes": codes, "budget": budget, "split": split, "width": width}
    with ws.logbook().run("bench", {"bench": "compact", **params}) as run:
        rows = compact_run(ws, tuple(ints(codes)), budget, split, width, device)
        report("compact", rows, run, params=params, units={"bytes_per_product": "B", "build_s": "s"}, device=device_name(device))


@bench.command(name="pq-score")
@click.option("--products", type=click.IntRange(min=1), default=10_000_000, show_default=True, help="Catalog size (random codes).")
@click.option("--codes", type=click.IntRange(min=1), default=96, show_default=True, help="PQ codes (bytes) per product, dividing 384 (MiniLM's dimensions).")
@click.option("--candidates", default="1600,6400,25600", show_default=True, help="Pool sizes to score per query (pool x budget).")
@click.option("--seconds", type=Finite(min=0, min_open=True), default=1.0, show_default=True, help="Timed per case.")
@click.pass_context
def bench_pq_score(ctx, products, codes, candidates, seconds) -> None:
    """What a candidate pool costs to score from PQ codes, one query: numpy's fancy indexing against the compiled
    loop, for candidates scattered over the catalog and in runs of consecutive rows (an order aligned to its SIDs)."""
    params = {"products": products, "codes": codes, "candidates": candidates, "seconds": seconds}
    candidates = ints(candidates)
    with ws_of(ctx).logbook().run("bench", {"bench": "pq-score", **params}) as run:
        try:
            rows = compact_scoring(products, codes, 384, candidates, seconds=seconds)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        report("pq-score", rows, run, params=params, units={"numpy_ms": "ms", "compiled_ms": "ms", "compiled_ns_per_candidate": "ns"},
               device=device_name())


@bench.command(name="decode")
@click.option("--queries", type=click.IntRange(min=1), default=200, show_default=True, help="Queries timed, one at a time.")
@click.option("--width", type=click.IntRange(min=1), default=None, help="Beam width (default: the workspace's served width).")
@click.option("--budget", type=click.IntRange(min=1), default=100, show_default=True, help="Candidates per query.")
@click.option("--split", type=click.Choice(["validation", "test"]), default="validation", show_default=True)
@click.option("--modes", type=names, default=",".join(DECODE_MODES), show_default=True,
              help="Decodes to time: eager, compiled (torch.compile; the first query compiles for tens of seconds).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads (default: torch's own).")
@device_option()
@click.pass_context
def bench_decode(ctx, queries, width, budget, split, modes, threads, device) -> None:
    """Where a generative query's time goes, one query at a time: the encoder, the decode (eager and compiled),
    the product lists and the order, beside FAISS HNSW on the same query vector; and the decode's operators."""
    ws = ws_of(ctx).require()
    params = {"queries": queries, "width": width, "budget": budget, "split": split, "modes": list(modes), "threads": threads}
    with ws.logbook().run("bench", {"bench": "decode", **params}) as run:
        try:
            rows, profile = decode_run(ws, queries, width, budget, split, tuple(modes), device, threads, echo=click.echo)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        ms = {k: "ms" for k in ("encode_ms", "decode_ms", "lists_ms", "order_ms", "search_ms", "beyond_ms", "beyond_p99_ms")}
        report("decode", rows, run, params=params, units={**ms, "first_s": "s"}, device=device_name(device))
        report("decode-ops", [{**r, "case": f"{r['mode']} {r['op']}"} for r in profile], run, params=params,
               units={"self_us_per_query": "us"}, device=device_name(device))


@bench.command(name="scale")
@click.option("--sizes", default="100000,1000000", show_default=True, help="Catalog sizes, each at least the workspace's "
              "catalog: its products grown by tiling, with vectors synthesised near the originals'.")
@click.option("--channels", type=names, default=",".join(SCALE_CHANNELS), show_default=True,
              help=f"Channels to measure, some of {', '.join(SCALE_CHANNELS)} (exact: the float32 scan).")
@click.option("--budget", type=click.IntRange(min=1), default=100, show_default=True, help="Candidates per query.")
@click.option("--widths", "--width", "widths", default=None,
              help="Beam widths of the generative channel, comma-separated: a row each, one build (default: the served width).")
@click.option("--compact", type=click.IntRange(min=0), default=96, show_default=True,
              help="One-byte codes per product of the generative order and of IVF-PQ (0: a float32 order; IVF-PQ then 48).")
@click.option("--queries", type=click.IntRange(min=1), default=200, show_default=True, help="Queries timed and scored.")
@click.option("--split", type=click.Choice(["validation", "test"]), default="validation", show_default=True)
@click.option("--sigma", type=Finite(min=0), default=0.5, show_default=True,
              help="Norm of the noise that makes a variant's vector (1 is the vector's own norm).")
@click.option("--memory-gib", type=Finite(min=0, min_open=True), default=None,
              help="Memory a channel's process may use (default: what the machine has available now).")
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the cost-against-size chart here (a plotly HTML page).")
@click.option("--compiled", is_flag=True, help="The generative channel decodes through torch.compile (serve --compiled).")
@click.option("--pools", default=str(ChannelConfig.pool), show_default=True,
              help="Candidate pools of the generative channel's order (x budget), comma-separated: a row each, one build.")
@click.option("--target-qps", type=Finite(min=0, min_open=True), default=10_000.0, show_default=True,
              help="Traffic to size machines for (the scale-capacity table).")
@click.option("--p99-ms", "budgets", default="50,250", show_default=True, help="Latency budgets (p99, ms) of that traffic.")
@device_option()
@click.pass_context
def bench_scale(ctx, sizes, channels, budget, widths, compact, queries, split, sigma, memory_gib, chart_path, compiled, pools,
                target_qps, budgets, device) -> None:
    """What each channel costs as the catalog grows: build time, peak memory, bytes per product, p50/p99 one query
    at a time and in batches of 32, and recall of the exact top budget; channels that cannot fit are left out
    with their estimate; and machines like this one for --target-qps at each --p99-ms (in process)."""
    ws = ws_of(ctx).require()
    params = {"sizes": sizes, "channels": list(channels), "budget": budget, "widths": widths, "compact": compact,
              "queries": queries, "split": split, "sigma": sigma, "compiled": compiled, "pools": pools,
              "target_qps": target_qps, "p99_ms": budgets}
    sizes, pools, budgets = ints(sizes), ints(pools), p99_budgets(budgets)
    widths = ints(widths) if widths is not None else ()
    with ws.logbook().run("bench", {"bench": "scale", **params}) as run:
        try:
            rows = scale_run(ws, sizes, tuple(channels), budget, widths, compact, queries, split, sigma,
                             memory_mib=None if memory_gib is None else memory_gib * 1024, device=device, compiled=compiled,
                             pools=pools, echo=click.echo)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        report("scale", [{k: v for k, v in r.items() if k != "per_query"} for r in rows], run, params=params, device=device_name(device),
               units={"build_s": "s", "sid_assign_s": "s", "trie_s": "s", "peak_rss_mib": "MiB", "base_rss_mib": "MiB", "index_rss_mib": "MiB", "est_mib": "MiB", "bytes_per_product": "B",
                      "c1_p50_ms": "ms", "c1_p99_ms": "ms", "c32_p50_ms": "ms", "c32_p99_ms": "ms", "c1_qps": "1/s", "c32_qps": "1/s"})
        report("scale-paired", scale_paired(rows), run, params=params)
        report(f"scale-capacity ({target_qps:,.0f} q/s)", scale_capacity(rows, target_qps, budgets), run, params=params,
               units={"budget_ms": "ms", "p99_ms": "ms", "queries_per_s": "1/s"}, device=device_name(device))
    if chart_path is not None:
        click.echo(f"chart: {scale_chart(rows, chart_path)}")


@bench.command(name="homedepot")
@click.option("--recipe", default="homedepot", show_default=True, help="Named settings (`workbench recipes`); each recipe "
              "trains in its own workspace, workspaces/homedepot-<recipe>.")
@click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
              help="Change one setting of the recipe, repeatable, e.g. --set gen.pseudo=0 (an ablation); the result "
                   "trains in workspaces/homedepot-<recipe>+<settings>.")
@click.option("--datasets", "datasets_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the real data sets (default: ../shared/datasets beside the repository).")
@embedder_option()
@device_option()
def bench_homedepot(recipe, sets, datasets_dir, embedder, device) -> None:
    """Home Depot end to end (import, SIDs, generator, evaluation on the test queries) with a recipe."""
    r = set_fields(recipes.get(recipe), sets)
    name = r.name + "".join(f"+{s}" for s in sets)
    ws = recipe_workspace(bench_workspace("homedepot", datasets_dir), name)
    click.echo(f"Home Depot with recipe {name!r} in {ws.path}")
    with tagged(recipe=name), ws.logbook().run("bench", {"bench": "homedepot", "recipe": r.to_dict()}) as run:
        df = measure(ws, r, embedder, device, run=run, echo=click.echo)
        keep = [c for c in df.columns if c in ("method", "width", "sids") or c.startswith("d_")
                or c.split("@")[0] in ("recall", "ndcg", "channel_recall", "unique_recall", "candidates", "ann_recall")]
        report("homedepot", df[keep].to_dict("records"), run, case_key="method", params={"recipe": name},
               device=device_name(device))


@bench.command(name="app")
@click.option("--sessions", type=click.IntRange(min=1), default=20, show_default=True, help="Browser sessions searching at once.")
@click.option("--seconds", type=Finite(min=0, min_open=True), default=60, show_default=True, help="How long they search.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def bench_app(ctx, sessions, seconds, seed) -> None:
    """Load on the app: concurrent browser sessions (headless chromium) searching; p50/p95 per search."""
    ws = ws_of(ctx).require()
    with ws.logbook().run("bench", {"bench": "app", "sessions": sessions, "seconds": seconds}, seed=seed) as run:
        row = browser_load(ws.path.resolve(), sessions, seconds, seed)
        report("app-load", [row], run, units={"p50_s": "s", "p95_s": "s", "max_s": "s", "searches_per_s": "1/s"},
               params={"sessions": sessions, "seconds": seconds})


@bench.command(name="pages")
@click.option("--screenshots", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each page's screenshot here (e.g. docs/: the README's and the docs' pictures).")
@click.option("--prefix", default="app", show_default=True, help="Screenshot names: <prefix>-<page>.png.")
@click.option("--passes", type=click.IntRange(min=1), default=2, show_default=True,
              help="Walks through the pages; the first includes what each page loads once per server.")
@click.option("--dwell", type=Finite(min=0), default=0.0, show_default=True,
              help="Seconds on the overview before the first click, as a user reading it (the app warms Search meanwhile).")
@click.pass_context
def bench_pages(ctx, out, prefix, passes, dwell) -> None:
    """Each app page's time to usable in a real browser (headless chromium), first visit and after; screenshots."""
    ws = ws_of(ctx).require()
    with ws.logbook().run("bench", {"bench": "pages", "passes": passes, "dwell_s": dwell}) as run:
        rows = tour(ws.path.resolve(), out, prefix, passes, dwell_s=dwell)
        report("app-pages", rows, run, units={"first_s": "s", "again_s": "s"}, params={"passes": passes, "dwell_s": dwell})
    if out is not None:
        click.echo(f"screenshots in {out}/{prefix}-*.png")


@bench.command(name="serve")
@click.option("--channels", type=names, default="generative,bm25,dense,dense-ann", show_default=True,
              help="Channels to load: dense is the exact scan, dense-ann the FAISS index (serve's --ann-* settings: the defaults).")
@click.option("--widths", type=ints, default=None,
              help="Beam widths of the generative channel, e.g. 4,16,64 [default: the width the workspace serves].")
@click.option("--users", type=ints, default="1,8,32", show_default=True, help="Concurrency levels (closed-loop locust users).")
@click.option("--seconds", type=Finite(min=1), default=10.0, show_default=True, help="Per load point.")
@click.option("--batches", type=ints, default=f"{ServeConfig.max_batch},1", show_default=True,
              help="Dynamic batch limits to serve with (1: one request at a time).")
@click.option("--batch-wait-ms", type=Finite(min=0), default=ServeConfig.batch_wait_ms, show_default=True)
@click.option("--query-dtype", type=click.Choice(DTYPES), default=ServeConfig.query_dtype, show_default=True,
              help="What the servers' query encoder computes in (`workbench serve --query-dtype`).")
@click.option("--target-qps", type=Finite(min=0, min_open=True), default=10_000.0, show_default=True,
              help="Traffic to size machines for.")
@click.option("--p99-ms", "budgets", default="50,100,250", show_default=True,
              help="Latency budgets (p99, ms) of that traffic, comma-separated.")
@click.option("--grow-to", type=click.IntRange(min=1), default=None,
              help="Measure on a copy of the workspace (WS-N beside it) whose catalog is tiled to N products and given "
                   "SIDs by the trained SID model: serving at catalog scale. Use a workspace built with a hashing embedder "
                   "for 1,000,000 (MiniLM takes about an hour per million titles on 2 cores).")
@click.option("--compiled", is_flag=True, help="The generative server decodes through torch.compile (`serve --compiled`); "
              "each width is warmed under load first, not timed.")
@click.pass_context
def bench_serve(ctx, channels, widths, users, seconds, batches, batch_wait_ms, query_dtype, target_qps, budgets, grow_to,
                compiled) -> None:
    """Throughput and p50/p95/p99 of `workbench serve` under locust's load (127.0.0.1): per channel,
    beam width, concurrency, with and without dynamic batching; the logbook's served rows checked
    against the requests answered; machines needed for --target-qps at --p99-ms."""
    bad = set(channels) - set(CHANNELS)
    if bad or not channels:
        raise click.BadParameter(f"channels must be some of {CHANNELS}, got {channels}", param_hint="--channels")
    budgets = p99_budgets(budgets)
    ws = ws_of(ctx).require()
    if grow_to is not None:
        base = ws
        ws = grow(base, grow_to, base.path.parent / f"{base.path.name}-{grow_to}")
        click.echo(f"measuring on {ws.path}: {grow_to:,} products")
    widths = widths or (served_width(ws),)
    params = {"widths": list(widths), "users": list(users), "seconds": seconds, "batches": list(batches),
              "batch_wait_ms": batch_wait_ms, "query_dtype": query_dtype, "products": len(ws.table("products")), "compiled": compiled}
    with ws.logbook().run("bench", {"bench": "serve", "channels": list(channels), **params}) as run:
        rows, checks = serve_load(ws, channels, widths, users, seconds, batches, batch_wait_ms, query_dtype=query_dtype,
                                  compiled=compiled, progress=click.echo)
        report("serve-load", [{k: v for k, v in r.items() if k != "first_failure"} for r in rows], run,
               units={"p50_ms": "ms", "p95_ms": "ms", "p99_ms": "ms", "queries_per_s": "1/s"}, params=params,
               device=device_name())
        report("serve-logbook", checks, run, params=params)
        gain = batching_gain(rows)
        if gain:
            report("serve-batching", gain, run, units={"batched_p99_ms": "ms", "unbatched_p99_ms": "ms"}, params=params)
        cap = capacity(rows, target_qps, budgets)
        report(f"serve-capacity ({target_qps:,.0f} q/s)", cap, run, units={"budget_ms": "ms", "p99_ms": "ms"},
               params={**params, "target_qps": target_qps}, device=device_name())
    failed = [r for r in rows if r["failures"]]
    lost = [c for c in checks if c["lost_rows"]]
    killed = [c for c in checks if c["exit_code"] != 0]
    if failed or lost or killed:
        raise click.ClickException("; ".join([f"{r['case']}: {r['failures']} failed requests ({r['first_failure']})" for r in failed]
                                             + [f"{c['case']}: {c['lost_rows']} served queries missing from the logbook" for c in lost]
                                             + [f"{c['case']}: the server did not stop cleanly (exit code {c['exit_code']})" for c in killed]))


@bench.command(name="sid-assign")
@click.option("--n", type=click.IntRange(min=1), default=1_000_000, show_default=True, help="Number of products (random vectors).")
@click.option("--dim", type=click.IntRange(min=1), default=384, show_default=True)
@click.option("--codebook-sizes", default="256,256,256", show_default=True)
@click.option("--chunk", type=click.IntRange(min=1), default=65_536, show_default=True)
@device_option()
@click.pass_context
def bench_sid_assign(ctx, n, dim, codebook_sizes, chunk, device) -> None:
    """Time and peak memory of assigning SIDs to N products with a trained model (target: 1M x 384-d <= 30 s)."""
    params = {"n": n, "dim": dim, "codebook_sizes": codebook_sizes, "chunk": chunk}
    with ws_of(ctx).logbook().run("bench", {"bench": "sid-assign", **params}) as run:
        report("sid-assign", [assign_scale(n, dim, ints(codebook_sizes), chunk, device)], run, params=params,
               units={"seconds": "s", "products_per_s": "1/s", "peak_rss_mib": "MiB", "peak_rss_growth_mib": "MiB", "input_mib": "MiB"},
               device=device_name(device))

@bench.command(name="dist")
@click.option("--job", type=click.Choice(DIST_JOBS), default="train", show_default=True,
              help="Which trainer: the generator (workbench train), CQ-SID (sid train) or stage 4 (rl).")
@click.option("--procs", default="1,2", show_default=True, help="Process counts to compare (the first is the baseline).")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Epochs (RL: steps) per run.")
@device_option("cuda: one GPU per process.")
@click.option("--args", "job_args", default="", help='More options for the trainer, e.g. "--stages 1 --d-model 256".')
@click.pass_context
def bench_dist(ctx, job, procs, epochs, device, job_args) -> None:
    """Data-parallel throughput: a trainer on 1 process and under torchrun on N, examples/s.

    Runs in a scratch copy of the workspace (links, its own logbook): the workspace is not changed."""
    import shlex

    ws = ws_of(ctx).require()
    extra = ["--device", device, *shlex.split(job_args)]
    params = {"job": job, "procs": procs, "epochs": epochs, "args": job_args}
    with ws.logbook().run("bench", {"bench": "dist", **params}) as run:
        report("dist-throughput", dist_throughput(ws, ints(procs), job, epochs, extra), run, params=params,
               units={"examples_per_s": "1/s", "wall_s": "s"}, device=device_name(device))


@bench.command(name="batch")
@click.option("--n", "sizes", default="1000000", show_default=True, help="Catalog sizes, e.g. 100000,1000000.")
@click.option("--jobs", default="embed,sids,decode", show_default=True)
@click.option("--chunk", type=click.IntRange(min=1), default=65_536, show_default=True)
@embedder_option("Default: the one the workspace's SIDs were built with.", default=None)
@click.option("--width", type=click.IntRange(min=1), default=None, help="Decoding beam width [default: the width the workspace serves].")
@click.option("--procs", default="1", show_default=True,
              help="Process counts to run each job on, e.g. 1,2 (more than one: under torchrun, the cores split between them).")
@device_option()
@click.pass_context
def bench_batch(ctx, sizes, jobs, chunk, embedder, width, procs, device) -> None:
    """Batch jobs at scale: embed, assign SIDs and decode N products in chunks; time and peak memory, on one
    process and data-parallel under torchrun (--procs)."""
    ws = ws_of(ctx).require()
    embedder = embedder or workspace_embedder(ws)
    width = width or served_width(ws)
    params = {"sizes": sizes, "jobs": jobs, "chunk": chunk, "embedder": embedder, "width": width, "procs": procs}
    sizes, procs = ints(sizes), ints(procs)
    with ws.logbook().run("bench", {"bench": "batch", **params}) as run:
        try:
            rows = [r for n in sizes for r in scale(ws, n, width, jobs.split(","), chunk, embedder, device=device, procs=procs)]
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        report("batch-scale", rows, run, params=params, device=device_name(device),
               units={"seconds": "s", "rows_per_s": "1/s", "peak_rss_mib": "MiB", "output_mib": "MiB"})


def model_tag(ctx, cfg, reward_weights: str) -> str:
    """The suffix that keeps a bench's stage-4 models apart from the default setting's: the reward weights
    when --reward was given, the temperature when it is not 1, `-floor<f>` with --ref-floor, the shaping with --shaping, the steps when
    --steps was given (e.g. `-click1-purchase0-...-t2-floor0-steps100`)."""
    tag = "-" + "-".join(f"{k}{v:g}" for k, v in cfg.rewards.weights().items()) if reward_weights else ""
    return (tag + (f"-t{cfg.temperature:g}" if cfg.temperature != 1 else "") + (f"-floor{cfg.loss.ref_floor:g}" if cfg.loss.ref_floor is not None else "")
            + (f"-{cfg.loss.shaping}" if given(ctx, "loss__shaping") else "")
            + (f"-steps{cfg.steps}" if given(ctx, "steps") else ""))


@bench.command(name="rl")
@rl_options("Both start from <name>-stage3.")
@click.pass_context
def bench_rl(ctx, recipe, reward_weights, name, embedder, device, **kw):
    """GRPO vs EG-GRPO with the same seed, prompts and budget: curves, collapse diagnostics, stage 3 vs 4."""
    ws = ws_of(ctx).require()
    cfg = rl_config(ctx, recipe, reward_weights, kw)
    ensure_ranker(ws, embedder, device)
    tag = model_tag(ctx, cfg, reward_weights)
    params = {"steps": cfg.steps, "prompts": cfg.prompts, "group": cfg.group, "refs": cfg.refs, "seed": cfg.seed,
              "temperature": cfg.temperature,
              "rewards": cfg.rewards.weights(), "lr": cfg.lr, "kl": cfg.loss.kl, "shaping": cfg.loss.shaping}
    with ws.logbook().run("bench", {"bench": "rl", "rl": cfg, "device": device}, seed=cfg.seed) as run:
        curves, diags, harness = compare(ws, cfg, name=name, device=device, tag=tag)
        curves["case"] = curves["case"] + " step " + curves["step"].astype(str)
        report("rl-curves", curves.drop(columns="step").to_dict("records"), run, params=params, device=device_name(device))
        report("rl-diagnostics (mean of the last 10 steps)", diags.to_dict("records"), run, params=params,
               device=device_name(device))
        report("rl-harness (test queries, generative)", harness.to_dict("records"), run, params=params,
               device=device_name(device))


@bench.command(name="stage4")
@rl_options("Every model starts from <name>-stage3.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Seeds of each (judge, algorithm).")
@click.option("--judges", default="ranker,oracle", show_default=True, help="Who scores the rewards: ranker, oracle (the simulator).")
@click.option("--algos", default="grpo,eg-grpo", show_default=True, help="Stage-4 algorithms.")
@config_options(ABConfig, "recall", "supplement", "width")
@click.pass_context
def bench_stage4(ctx, recipe, reward_weights, name, embedder, device, seeds, judges, algos, recall, supplement, width, **kw):
    """Stage 4 judged in simulated purchases (synthetic workspaces): GRPO and EG-GRPO over seeds, with the
    ranker's and the oracle's rewards, each model an A/B arm beside stage 3 (pages ordered by the ranker
    and by the oracle); differences from stage 3 with paired intervals."""
    ws = ws_of(ctx).require()
    Market.from_workspace(ws)  # a clear error before any training when the workspace has no simulator
    cfg = rl_config(ctx, recipe, reward_weights, kw)
    ensure_ranker(ws, embedder, device)
    ab = ABConfig(recall=recall, supplement=supplement, width=width)
    params = {"steps": cfg.steps, "prompts": cfg.prompts, "rewards": cfg.rewards.weights(), "lr": cfg.lr, "seeds": seeds,
              "temperature": cfg.temperature}
    with ws.logbook().run("bench", {"bench": "stage4", "rl": cfg, "ab": ab, "device": device}, seed=cfg.seed) as run:
        per_seed, mean = study(ws, cfg, ab, ints(seeds, low=0), names(judges), names(algos), name, device,
                               tag=model_tag(ctx, cfg, reward_weights))
        per_seed["case"] = (per_seed["pages"] + " pages, " + per_seed["judge"] + " judge, " + per_seed["algo"]
                            + " seed " + per_seed["seed"].astype(str))
        report("stage4-ab (per seed; d_* % from stage 3)", per_seed.drop(columns=["pages", "judge", "algo", "seed"]).to_dict("records"),
               run, params=params, device=device_name(device))
        mean["case"] = mean["pages"] + " pages, " + mean["judge"] + " judge, " + mean["algo"]
        report("stage4-ab (mean over seeds)", mean.drop(columns=["pages", "judge", "algo"]).to_dict("records"), run,
               params=params, device=device_name(device))
