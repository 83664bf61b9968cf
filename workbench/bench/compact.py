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
from workbench.gen.compact import check
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
