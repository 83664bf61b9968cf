"""What each recall channel costs as the catalog grows (`workbench bench scale`).

The catalog of size N is the workspace's N0 products grown by tiling: row i < N0 is product i with its stored
vector; row i >= N0 is a variant of product i mod N0 whose vector is the original's plus Gaussian noise of
norm about `sigma`, renormalised, and whose title is the original's with ", variant k". The noise along each
dimension is proportional to the catalog's own spread along it: an encoder's dimensions that never vary
(MiniLM has three, always ~0) stay as they are, as they would for a real product. The noise of each
block of `BLOCK` rows comes from a generator seeded by (seed, block), so any chunking yields the same
catalog, and no process ever needs it whole. The variants' vectors are synthesised, not embedded (MiniLM
embeds about 300 titles/s on 2 cores: an hour per million); the queries are the split's real queries,
encoded by the workspace's embedder.

Per size, first the truth: the exact top `budget` products per query, streamed over the catalog block by
block. Then each channel in a process of its own, one after the other (so its peak memory is its own):

    exact       the float32 matrix, scanned (`baselines.Dense`)
    hnsw        FAISS HNSW (`ann.ANN`, the serve defaults), built block by block
    ivfpq       FAISS IVF-PQ with `compact` codes (trained on a sample), built block by block
    bm25        bm25s over the titles
    generative  the trained SID model assigns every product its SID (block by block), the trie and the
                product lists are built from them, the deployed generator decodes at each of `widths`
                (eager, or `compiled` with torch.compile), and the in-cluster order ranks the decoded SIDs'
                products from `compact` PQ codes (0: float32); one row per beam width and candidate `pool`
                (the order scores the beam's first pool x budget products), all from the one build

Per channel and size: build time, the process's peak RSS and the growth over its RSS before building,
bytes per product of what the channel scores with (vectors, codes, graph, postings; product ids not counted,
every channel holds them), one query at a time (p50, p99, queries/s) and batches of 32 (the batch
`workbench serve`'s dynamic batching forms under 32 users: p50 and p99 per batch, queries/s), all from the
query text (the encoder included), in process (no HTTP), and the recall of the exact top budget with its 95%
bootstrap interval over the queries. `paired` sets the rows of a size against one another: each difference in
recall with its paired interval (the same queries, the same truth).
`capacity` turns the rows into machines for a traffic: per latency budget, the better of one query at a
time and batches of 32 whose p99 fits (in process: HTTP and queueing add to it, `bench serve` measures them).

Before anything is built, each channel's peak memory at each size is estimated (`estimate_mib`: a process
base plus bytes per product). A channel whose estimate exceeds the memory at hand is left out of that size,
its estimate stated; a size at which even the generative channel does not fit is refused before the run
starts.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing as mp
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from workbench import Workspace
from workbench.ann import ANN, ANNConfig, default_nlist
from workbench.baselines import BM25, Dense
from workbench.batch import peak_rss_mib
from workbench.bench.compact import faiss_bytes
from workbench.bench.serve import capacity as serve_capacity
from workbench.embed import embed_workspace, get_embedder
from workbench.eval.width import served_width
from workbench.gen import store
from workbench.gen.compact import PQVectors, check
from workbench.gen.config import ChannelConfig
from workbench.gen.data import eval_set
from workbench.gen.retrieve import Channel, CosineOrder, Generative, ProductLookup, Retriever
from workbench.metrics import paired_difference
from workbench.sid.cqsid import assign
from workbench.sid.index import SIDIndex
from workbench.sid.store import load_model, sid_columns, workspace_embedder

CHANNELS = ("generative", "hnsw", "ivfpq", "bm25", "exact")
BLOCK = 65_536  # rows per noise block: the unit of determinism and of streaming
BATCH = 32  # the concurrency measured besides one query at a time
BASE_MIB = 1_400  # a channel process before building: python, torch, the query encoder, the generator
IVF_SAMPLE = 64  # IVF: products sampled per cell to learn the cells and codes (FAISS warns below 39)


# the catalog -------------------------------------------------------------------------------------
def tiled_vectors(base: np.ndarray, start: int, stop: int, sigma: float, seed: int = 0) -> np.ndarray:
    """Rows [start, stop) of the grown catalog: (stop - start, d) float32, unit norm; row i < len(base) is
    base[i] as it is, row i >= len(base) base[i mod len(base)] plus noise of norm ~sigma, renormalised."""
    n0, d = base.shape
    spread = base.std(0)  # (d,) noise along each dimension as the catalog spreads: none where it never varies
    spread = (spread / max(float(np.linalg.norm(spread)), 1e-12)).astype(np.float32)  # unit norm: the noise's norm is ~sigma
    out = np.empty((stop - start, d), np.float32)
    for b in range(start // BLOCK, -(-stop // BLOCK)):
        lo, hi = max(start, b * BLOCK), min(stop, (b + 1) * BLOCK)
        rows = np.arange(lo, hi)
        v = base[rows % n0].astype(np.float32)  # (n, d)
        if hi > n0:
            noise = np.random.default_rng([seed, b]).standard_normal((BLOCK, d), np.float32)[lo - b * BLOCK:hi - b * BLOCK]
            var = rows >= n0  # the originals stay as stored
            v[var] += noise[var] * spread * np.float32(sigma)
            v[var] /= np.linalg.norm(v[var], axis=1, keepdims=True)
        out[lo - start:hi - start] = v
    return out


def blocks(base: np.ndarray, n: int, sigma: float, seed: int = 0) -> Iterator[np.ndarray]:
    """The grown catalog of n rows, BLOCK rows at a time."""
    for s in range(0, n, BLOCK):
        yield tiled_vectors(base, s, min(s + BLOCK, n), sigma, seed)


def tiled_titles(titles: list[str], n: int) -> list[str]:
    n0 = len(titles)
    return [titles[i] if i < n0 else f"{titles[i % n0]}, variant {i // n0}" for i in range(n)]


def exact_top(base: np.ndarray, n: int, q: np.ndarray, budget: int, sigma: float, seed: int = 0) -> np.ndarray:
    """(Q, budget) rows of the exact top `budget` per query over the grown catalog, best first, streamed."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    for s, x in zip(range(0, n, BLOCK), blocks(base, n, sigma, seed)):
        sc = np.concatenate([best_s, q @ x.T], 1)  # (Q, kept + block)
        rows = np.concatenate([best_r, np.broadcast_to(np.arange(s, s + len(x)), (len(q), len(x)))], 1)
        k = min(budget, sc.shape[1])
        top = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(sc, top, 1), np.take_along_axis(rows, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_r, order, 1)


# memory ------------------------------------------------------------------------------------------
def per_product_bytes(channel: str, d: int, compact: int, levels: int = 3) -> float:
    """Bytes per product a channel's process holds at its peak (beyond BASE_MIB), by construction: 80 for a
    product id (a Python str in an object array), the scoring structure, and what building it needs."""
    ids = 80
    if channel == "exact":
        return ids + 4 * d + 4 * BATCH  # the matrix, and a batch's (32, N) cosines
    if channel == "hnsw":
        return ids + 4 * d + 2 * ANNConfig.m * 4 * 1.1 + 16  # FAISS's own copy and level-0 links (2 x M of them)
    if channel == "ivfpq":
        return ids + (compact or ANNConfig.pq_m) + 8  # codes and FAISS's int64 ids (the training sample: estimate_mib)
    if channel == "bm25":
        return ids + 700  # the titles, their tokens and the postings: a rough figure (high by 43% at 1M, docs/results/efficiency.md)
    if channel == "generative":
        order = compact + 8 if compact else 4 * d
        return 5 * ids + order + 4 * levels * 4  # ids in the SID table, the lists, their tuples and the order's index
    raise ValueError(f"unknown channel {channel!r}; the channels are {CHANNELS}")


def estimate_mib(channel: str, n: int, d: int, compact: int, levels: int = 3) -> float:
    """A channel process's peak RSS at n products, in MiB (base + per product + the IVF sample)."""
    est = BASE_MIB + n * per_product_bytes(channel, d, compact, levels) / 2**20
    if channel == "ivfpq":
        est += ivf_sample(n) * 4 * d / 2**20
    return est


def ivf_sample(n: int) -> int:
    """Products IVF-PQ learns its cells and codes on, at n products."""
    return min(n, IVF_SAMPLE * default_nlist(n))


def available_mib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**20


def plan(sizes: tuple[int, ...], channels: tuple[str, ...], d: int, compact: int, memory_mib: float,
         levels: int = 3) -> tuple[list[tuple[int, str, float]], list[dict]]:
    """(the (size, channel, estimate) runs that fit, the ones left out as rows); ValueError naming the
    estimate when the generative channel does not fit at some size."""
    runs, left = [], []
    for n in sizes:
        for c in channels:
            est = estimate_mib(c, n, d, compact, levels)
            if est <= memory_mib:
                runs.append((n, c, est))
            elif c == "generative":
                raise ValueError(f"{n:,} products do not fit: the generative channel needs about {est / 1024:,.1f} GiB "
                                 f"(estimated), {memory_mib / 1024:,.1f} GiB is available; give smaller sizes or more --compact codes")
            else:
                left.append({"case": f"{c} {n:,}", "channel": c, "products": n, "est_mib": est,
                             "left_out": f"needs about {est / 1024:,.1f} GiB, {memory_mib / 1024:,.1f} GiB available"})
    return runs, left


# one channel, in its own process ---------------------------------------------------------------------
def _build(job: dict, ws, e, base: np.ndarray, titles: list[str], ids: list[str]):
    """The channel's searchers (queries -> [(product ids, scores)] at the budget): one, keyed None, but for the
    generative channel's, keyed (beam width, pool); its bytes held (or a function computing them after the
    peak is taken) and what else its build measured."""
    n, c, sigma, seed, device = job["n"], job["channel"], job["sigma"], job["seed"], job["device"]
    if c == "exact":
        x = tiled_vectors(base, 0, n, sigma, seed)
        dense = Dense(ids, x, e, device)
        return {None: lambda qs: dense.scored(qs, job["budget"])}, x.nbytes, {}
    if c in ("hnsw", "ivfpq"):
        cfg = ANNConfig(kind=c, pq_m=job["compact"] or ANNConfig.pq_m)
        sample = tiled_vectors(base, 0, ivf_sample(n), sigma, seed) if c == "ivfpq" else base
        ann = ANN(ids, blocks(base, n, sigma, seed), e, cfg, sample=sample)
        del sample
        return {None: lambda qs: ann.scored(qs, job["budget"])}, lambda: faiss_bytes(ann.index), {}
    if c == "bm25":
        bm25 = BM25(ids, tiled_titles(titles, n))
        return {None: lambda qs: bm25.scored(qs, job["budget"])}, sum(a.nbytes for a in bm25.index.scores.values() if hasattr(a, "nbytes")), {}
    return _generative(job, ws, e, base, ids)


def grown_retriever(ws, base: np.ndarray, ids: list[str], sigma: float, seed: int = 0, device: str = "cpu",
                    compiled: bool = False):
    """The deployed generator decoding into the grown catalog: the trained SID model assigns every product of
    the catalog (len(ids) rows, block by block) its cluster SID, and the trie and product lists are built
    from them, without retraining. Cluster SIDs only (unique IDs number the products of each catalog)."""
    import pandas as pd

    sid_model, sid_cfg, _ = load_model(ws, device)
    if sid_cfg.mode != "cluster":
        raise ValueError(f"bench scale grows the catalog into the SID model's clusters; this workspace's SIDs are "
                         f"{sid_cfg.mode!r} IDs, whose last token is numbered per catalog (train cluster SIDs)")
    t0 = time.perf_counter()
    codes = np.concatenate([assign(sid_model, x, device) for x in blocks(base, len(ids), sigma, seed)])  # (N, L)
    t1 = time.perf_counter()
    index = SIDIndex.from_codes(codes, sid_cfg.model.codebook_sizes)
    sids = pd.DataFrame({"product_id": ids, **dict(zip(sid_columns(sid_cfg.model.levels, "cluster"), codes.T))})
    del codes
    model, tok, _ = store.load(ws, device=device)
    retriever = Retriever(model, tok, index, ProductLookup(index, sids), device, compiled)
    return retriever, {"sid_assign_s": t1 - t0, "trie_s": time.perf_counter() - t1, "sids": len(index.sids)}


def _generative(job: dict, ws, e, base: np.ndarray, ids: list[str]):
    n, sigma, seed, m = job["n"], job["sigma"], job["seed"], job["compact"]
    retriever, extra = grown_retriever(ws, base, ids, sigma, seed, job["device"], job["compiled"])
    vectors = PQVectors.train(base, m, blocks=blocks(base, n, sigma, seed)) if m else tiled_vectors(base, 0, n, sigma, seed)
    order = CosineOrder(e, ids, vectors, ChannelConfig.logp_weight, ChannelConfig.query_dtype)
    del vectors
    order.align(retriever.lookup)  # as `workbench serve` holds it: a SID's products in consecutive rows
    searchers = {}
    for width in job["widths"]:
        for pool in job["pools"]:
            cfg = ChannelConfig(budget=job["budget"], compact=m, pool=pool)
            mine = copy.copy(order)  # the vectors and the position map shared, the pool its own
            mine.pool = pool
            gen = Generative(retriever, Channel(cfg, mine), width)  # a decode cache of its own: no case reuses another's
            searchers[width, pool] = lambda qs, gen=gen: gen.scored(qs, job["budget"])
    held = order.vectors.nbytes + retriever.index.sids.nbytes + retriever.index.counts.nbytes
    return searchers, held, {**extra, "decode": "compiled" if job["compiled"] else "eager"}


def _percentiles(secs: list[float]) -> tuple[float, float]:
    return float(np.percentile(secs, 50) * 1000), float(np.percentile(secs, 99) * 1000)


def measure(job: dict) -> list[dict]:
    """One channel at one size (runs in the child): build, then time and score the queries with each of its
    searchers (a row each)."""
    data = Path(job["data"])
    base = np.load(data / "base.npy", mmap_mode="r")
    meta = json.loads((data / "meta.json").read_text())
    queries, n = meta["queries"], job["n"]
    ws = Workspace(job["workspace"])
    e = get_embedder(workspace_embedder(ws), job["device"])
    e.encode(queries[:BATCH])  # the query encoder loaded and its batch's buffers taken: every channel's process holds them
    ids = [str(i) for i in range(n)]  # a product's id is its row: recall needs no lookup
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    searchers, held, extra = _build(job, ws, e, np.ascontiguousarray(base), meta["titles"], ids)
    build = time.perf_counter() - t0
    truth = np.load(data / f"truth-{n}.npy")
    timed = {}
    for key, search in searchers.items():
        for k in (1, 2, BATCH):  # warm: lazy loads, first runs and the compiles of each batch shape, on texts not timed
            search([f"{q} {q} {k}" for q in (queries * BATCH)[:k]])
        one, got = [], []
        for q in queries:
            t = time.perf_counter()
            got += search([q])
            one.append(time.perf_counter() - t)
        rng, batched = np.random.default_rng(job["seed"]), []
        for _ in range(max(20, -(-len(queries) // BATCH))):  # fresh batches: no decode is reused
            qs = [queries[i] for i in rng.choice(len(queries), min(BATCH, len(queries)), replace=False)]
            t = time.perf_counter()
            search(qs)
            batched.append(time.perf_counter() - t)
        timed[key] = (one, batched, [len({int(p) for p in ids_} & set(t.tolist())) / len(t) for (ids_, _), t in zip(got, truth)])
    peak = peak_rss_mib()
    held = held() if callable(held) else held
    rows = []
    for key, (one, batched, per) in timed.items():
        case = {} if key is None else {"width": key[0], "pool": key[1]}
        label = "".join(f" {k} {v}" for k, v in case.items() if len(job[f"{k}s"]) > 1)  # what tells the rows apart
        p50, p99 = _percentiles(one)
        b50, b99 = _percentiles(batched)
        recall, lo, hi = paired_difference(per, np.zeros(len(per)), seed=job["seed"])  # the mean and its 95% interval
        rows.append({"case": f"{job['channel']} {n:,}{label}", "channel": job["channel"], "products": n, "build_s": build,
                     "peak_rss_mib": peak, "base_rss_mib": rss0, "index_rss_mib": peak - rss0, "est_mib": job["est_mib"],
                     "bytes_per_product": held / n, "c1_p50_ms": p50, "c1_p99_ms": p99, "c1_qps": len(one) / sum(one),
                     f"c{BATCH}_p50_ms": b50, f"c{BATCH}_p99_ms": b99, f"c{BATCH}_qps": BATCH * len(batched) / sum(batched),
                     f"exact_recall@{job['budget']}": recall, "recall_lo": lo, "recall_hi": hi, **case, **extra,
                     "per_query": per})
    return rows


def _child(job: dict, conn) -> None:
    try:
        conn.send(("ok", measure(job)))
    except BaseException as e:  # the parent names the channel and size
        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))
    finally:
        conn.close()


def in_process(job: dict, timeout: float) -> list[dict]:
    """`measure(job)` in a fresh spawned process; its error, death or timeout as a RuntimeError naming the run."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(job, child), daemon=True)
    proc.start()
    child.close()
    what = f"{job['channel']} at {job['n']:,} products"
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f"{what}: no result within {timeout:,.0f} s")
        status, got = parent.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f"{what}: the process died (exit code {proc.exitcode}; -9 is the kernel's out-of-memory kill), "
                           f"estimated {job['est_mib'] / 1024:,.1f} GiB") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join()
    if status != "ok":
        raise RuntimeError(f"{what}: {got}")
    return got


# the benchmark ------------------------------------------------------------------------------------
def run(ws, sizes: tuple[int, ...], channels: tuple[str, ...] = CHANNELS, budget: int = 100, widths: tuple[int, ...] = (),
        compact: int = 96, queries: int = 200, split: str = "validation", sigma: float = 0.5, seed: int = 0,
        memory_mib: float | None = None, device: str = "cpu", timeout: float = 7200, compiled: bool = False,
        pools: tuple[int, ...] = (ChannelConfig.pool,), echo=print) -> list[dict]:
    """One row per (size, channel) measured or left out (per beam width and pool, for the generative channel);
    see the module's docstring."""
    bad = [c for c in channels if c not in CHANNELS]
    if bad or not channels:
        raise ValueError(f"unknown channel(s) {bad}; the channels are {CHANNELS}")
    if not pools or min(pools) < 1:
        raise ValueError(f"the candidate pools must be >= 1 (x budget), got {pools}")
    if widths and min(widths) < 1:
        raise ValueError(f"beam widths must be >= 1, got {widths}")
    if not sizes or budget < 1 or queries < 1 or sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"need sizes, budget >= 1, queries >= 1 and a finite sigma >= 0; got {sizes}, {budget}, {queries}, {sigma}")
    n0 = len(ws.table("products"))
    small = [n for n in sizes if n < n0]
    if small:
        raise ValueError(f"sizes {small} are below the catalog's {n0:,} products: bench scale grows the catalog, give sizes >= {n0:,}")
    e = get_embedder(workspace_embedder(ws), device)
    d = e.dim
    if compact:
        check(d, compact)
    levels = load_model(ws, device)[1].model.levels if "generative" in channels else 3
    runs, left = plan(tuple(sorted(set(sizes))), channels, d, compact, memory_mib or available_mib(), levels)
    ev = eval_set(ws, split)
    if ev.empty:
        raise ValueError(f"workspace {ws.path} has no {split} queries")
    qs = list(dict.fromkeys(ev["query"].astype(str)))[:queries]
    rows = list(left)
    with tempfile.TemporaryDirectory(prefix="workbench-scale-") as tmp:
        base = embed_workspace(ws, e, ("products",), progress=False)["products"]
        np.save(Path(tmp) / "base.npy", np.ascontiguousarray(base, np.float32))
        titles = ws.table("products")["title"].astype(str).tolist()
        (Path(tmp) / "meta.json").write_text(json.dumps({"queries": qs, "titles": titles}))
        qv = e.encode(qs)
        common = {"workspace": str(ws.path.resolve()), "data": tmp, "budget": budget, "compact": compact, "sigma": sigma,
                  "seed": seed, "device": device, "compiled": compiled, "pools": sorted(set(pools)),
                  "widths": sorted(set(widths)) or ([served_width(ws)] if "generative" in channels else [])}
        for n in sorted({n for n, _, _ in runs}):
            t0 = time.perf_counter()
            np.save(Path(tmp) / f"truth-{n}.npy", exact_top(base, n, qv, budget, sigma, seed))
            echo(f"{n:,} products: the exact top {budget} of {len(qs)} queries in {time.perf_counter() - t0:.0f} s")
            for _, c, est in [r for r in runs if r[0] == n]:
                for row in in_process({**common, "n": n, "channel": c, "est_mib": est}, timeout):
                    echo(f"  {row['case']}: built in {row['build_s']:.0f} s, peak {row['peak_rss_mib']:,.0f} MiB, "
                         f"(before building {row['base_rss_mib']:,.0f}), p50 {row['c1_p50_ms']:.1f} ms, recall {row[f'exact_recall@{budget}']:.3f}")
                    rows.append(row)
    return rows


def paired(rows: list[dict], seed: int = 0) -> list[dict]:
    """Differences in recall of the exact top between the channels at each size, each with its paired 95%
    bootstrap interval over the queries (every row of a size scores the same queries against the same truth):
    every measured row against the size's first generative row (its smallest width and pool; without one,
    the size's first row)."""
    out = []
    for n in sorted({r["products"] for r in rows if "per_query" in r}):
        mine = [r for r in rows if r["products"] == n and "per_query" in r]
        ref = next((r for r in mine if r["channel"] == "generative"), mine[0])
        key = next(k for k in ref if k.startswith("exact_recall@"))
        for r in mine:
            if r is not ref:
                d, lo, hi = paired_difference(r["per_query"], ref["per_query"], seed=seed)
                out.append({"case": f"{r['case']} - {ref['case']}", "products": n, key: r[key], "reference": ref[key],
                            "difference": d, "lo": lo, "hi": hi, "queries": len(ref["per_query"])})
    return out


def capacity(rows: list[dict], target_qps: float, budgets_ms: tuple[float, ...]) -> list[dict]:
    """Machines like this one that `target_qps` needs, per measured row and p99 budget: the higher throughput
    of one query at a time and batches of 32 (a batch's p99 taken as its requests') whose p99 fits the budget
    (`bench.serve.capacity`); a row with neither within a budget has no line for it."""
    out = []
    for r in (r for r in rows if "left_out" not in r):
        points = [{"channel": r["channel"], "width": 0, "max_batch": 0, "users": b, "failures": 0,
                   "p99_ms": r[f"c{b}_p99_ms"], "queries_per_s": r[f"c{b}_qps"]} for b in (1, BATCH)]
        for c in serve_capacity(points, target_qps, budgets_ms):
            out.append({"case": f"{r['case']}, p99 <= {c['budget_ms']:g} ms", "products": r["products"], "budget_ms": c["budget_ms"],
                        "batch": c["at_users"], "queries_per_s": c["queries_per_s"], "p99_ms": c["p99_ms"], "machines": c["machines"]})
    return out


def chart(rows: list[dict], path: str | Path) -> Path:
    """Cost against catalog size, one line per channel (per width and pool of the generative one): p50 one
    query at a time, queries/s in batches of 32, peak RSS (a plotly HTML page; plotly.js from its CDN)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = (("c1_p50_ms", "p50 ms, one query at a time"), (f"c{BATCH}_qps", f"queries/s, batches of {BATCH}"),
              ("peak_rss_mib", "peak RSS, MiB"))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in panels])
    measured = [r for r in rows if "left_out" not in r]

    def line(r: dict) -> str:  # a line per channel, and per width and pool of the generative one
        return r["channel"] + (f" width {r['width']} pool {r['pool']}" if "pool" in r else "")

    for i, c in enumerate(dict.fromkeys(map(line, measured))):
        mine = sorted((r for r in measured if line(r) == c), key=lambda r: r["products"])
        for col, (key, _) in enumerate(panels, 1):
            fig.add_trace(go.Scatter(x=[r["products"] for r in mine], y=[r[key] for r in mine], name=c, legendgroup=c,
                                     showlegend=col == 1, mode="lines+markers", line={"color": f"hsl({i * 70}, 60%, 45%)"}),
                          row=1, col=col)
    fig.update_xaxes(type="log", title="products")
    fig.update_yaxes(type="log")
    fig.update_layout(title="Cost per query and memory as the catalog grows", height=420, width=1200)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs="cdn")
    return path
