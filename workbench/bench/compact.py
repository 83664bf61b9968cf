"""What a compact generative channel costs in recall, against what it saves in memory (`workbench bench compact`).

For each number of codes M (0: the float32 vectors), the generative channel at the served width orders
the same decoded SIDs' products by the cosine computed from M one-byte product-quantisation codes per
product (`gen/compact.py`); beside it, the dense channel a team runs when memory matters, a FAISS
IVF-PQ index of the same M codes, and the exact scan. Per row, on the split's queries: Recall@budget,
its paired difference from the float32 row of the same channel (95% bootstrap interval over queries),
the dense rows' recall of the exact scan's top budget (`ann_recall`), and the bytes per product each
order holds (codes and shared codebooks; for FAISS its serialised index with ids). Settings are chosen
on validation queries; the test split is for reporting once.
"""

from __future__ import annotations

import time

import numpy as np

from workbench.ann import ANN, ANNConfig
from workbench.baselines import Dense
from workbench.embed import embed_workspace, get_embedder
from workbench.eval.width import served_width
from workbench.gen.compact import PQVectors, check
from workbench.gen.config import ChannelConfig
from workbench.gen.data import eval_set
from workbench.gen.retrieve import Channel, CosineOrder, Generative, Retriever
from workbench.metrics import paired_difference, per_query
from workbench.sid.store import workspace_embedder


def faiss_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def run(ws, codes: tuple[int, ...] = (0, 96, 48, 24), budget: int = 100, split: str = "validation", width: int | None = None,
        device: str = "cpu", nlist: int = 0, nprobe: int = 32) -> list[dict]:
    codes = (0, *dict.fromkeys(m for m in codes if m))  # the float32 rows first: every difference is taken against them
    ev = eval_set(ws, split)
    if ev.empty:
        raise ValueError(f"workspace {ws.path} has no {split} queries with relevant products")
    queries, relevant = ev["query"].astype(str).tolist(), ev["relevant"].tolist()
    e = get_embedder(workspace_embedder(ws), device)
    vecs = embed_workspace(ws, e, ("products",), progress=False)["products"]
    for m in codes[1:]:
        check(vecs.shape[1], m)  # before anything is built
    ids = ws.table("products")["product_id"].tolist()
    qv = e.encode(queries)
    exact = [p for p, _ in Dense(ids, vecs, e, device).scored(queries, budget, vectors=qv)]
    top = [set(p) for p in exact]
    width = width or served_width(ws)
    retriever = Retriever.from_workspace(ws, device=device)
    rows, base = [], {}
    for m in codes:
        cfg = ChannelConfig(budget=budget, compact=m)
        t0 = time.perf_counter()  # the order from the vectors loaded above: build_s is the codes' training alone
        channel = Channel(cfg, CosineOrder(e, ids, vecs, cfg.logp_weight, cfg.query_dtype, cfg.pool, compact=m))
        build = time.perf_counter() - t0
        got = [p for p, _ in Generative(retriever, channel, width).scored(queries, budget)]
        held = channel.order.vectors.nbytes
        rows.append(_row("generative", m, got, relevant, budget, held / len(ids), build, base))
        if m:
            t0 = time.perf_counter()
            ann = ANN(ids, vecs, e, ANNConfig(kind="ivfpq", pq_m=m, nlist=nlist, nprobe=nprobe))
            build = time.perf_counter() - t0
            got = [p for p, _ in ann.scored(queries, budget, vectors=qv)]
            rows.append(_row("dense-ivfpq", m, got, relevant, budget, faiss_bytes(ann.index) / len(ids), build, base,
                             ann_recall=float(np.mean([len(set(g) & t) / max(len(t), 1) for g, t in zip(got, top)]))))
        else:
            rows.append(_row("dense-exact", 0, exact, relevant, budget, vecs.nbytes / len(ids), 0.0, base, ann_recall=1.0))
    return rows


def _row(channel: str, m: int, got, relevant, budget: int, bytes_per_product: float, build_s: float, base: dict, **extra) -> dict:
    """One table row; the float32 row of each channel family (generative; dense) is kept in `base` for the differences."""
    r = per_query(got, relevant, budget)["recall"]
    family = "generative" if channel == "generative" else "dense"
    base.setdefault(family, r)
    d, lo, hi = paired_difference(r, base[family])
    return {"case": f"{channel} {'float32' if not m else f'{m} codes'}", "channel": channel, "codes": m,
            f"recall@{budget}": float(np.nanmean(r)), "d_vs_float32": d, "d_lo": lo, "d_hi": hi,
            "bytes_per_product": bytes_per_product, "build_s": build_s, **extra}


def _numpy_dot(pq: PQVectors, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The scorer before the compiled loop, for comparison: numpy's fancy indexing builds (n, M) floats, then sums."""
    return pq.table(q)[np.arange(pq.m), pq.codes[rows]].sum(1)  # (n, M) lookups -> (n,)


def scoring(n: int = 10_000_000, m: int = 96, d: int = 384, candidates: tuple[int, ...] = (1_600, 6_400, 25_600),
            run: int = 305, seconds: float = 1.0, seed: int = 0, progress: bool = True) -> list[dict]:
    """What scoring a candidate pool from PQ codes costs, per query: random codes for `n` products (M bytes each),
    and per pool size the pool's rows laid out two ways, scattered (a SID's products spread over the catalog,
    as in catalog order) and in runs of `run` consecutive rows (the order aligned to the SID lookup,
    `CosineOrder.align`; 305 is 10M products over 32,758 SIDs), each scored by numpy's fancy indexing and by
    the compiled loop (`PQVectors.dot`). The two scorers' answers are checked equal. Times: the mean over
    repeats for `seconds` after one warm call; both run on one core."""
    from tqdm.auto import tqdm

    check(d, m)
    if n < 1 or not candidates or min(candidates) < 1 or run < 1 or seconds <= 0:
        raise ValueError(f"need n >= 1, candidates >= 1, run >= 1 and seconds > 0; got n={n}, candidates={candidates}, "
                         f"run={run}, seconds={seconds}")
    rng = np.random.default_rng(seed)
    pq = PQVectors(rng.standard_normal((m, 256, d // m)).astype(np.float32), rng.integers(0, 256, (n, m), dtype=np.uint8))
    q = rng.standard_normal(d).astype(np.float32)
    out = []
    cases = [(c, layout) for c in candidates for layout in ("scattered", "aligned")]
    for c, layout in tqdm(cases, desc="pq-score", disable=not progress):
        if layout == "scattered":
            rows = rng.integers(0, n, c)
        else:
            starts = rng.integers(0, max(n - run, 0) + 1, -(-c // run))
            rows = np.minimum((starts[:, None] + np.arange(run)).ravel()[:c], n - 1)  # (c,) runs of consecutive rows
        if not np.allclose(_numpy_dot(pq, rows, q), pq.dot(rows, q), atol=1e-3):
            raise AssertionError("the compiled loop and numpy disagree")  # a broken scorer never reports a time
        ms = {}
        for name, fn in (("numpy", _numpy_dot), ("compiled", PQVectors.dot)):
            fn(pq, rows, q)
            t, k = time.perf_counter(), 0
            while time.perf_counter() - t < seconds:
                fn(pq, rows, q)
                k += 1
            ms[name] = (time.perf_counter() - t) / k * 1000
        out.append({"case": f"{c:,} candidates, {layout}", "candidates": c, "layout": layout, "products": n, "codes": m,
                    "numpy_ms": ms["numpy"], "compiled_ms": ms["compiled"], "speedup": ms["numpy"] / ms["compiled"],
                    "compiled_ns_per_candidate": ms["compiled"] * 1e6 / c})
    return out
