"""Where a generative query's time goes, one query at a time (`workbench bench decode`).

For each of the split's first `queries` queries, alone (batch 1) at beam width W, the channel's stages
are timed one after another (the cases interleaved query by query):

    encode   the tokenizer: for the sentence backbone the query's sentence embedding, the encoder a dense
             channel runs too; for a text backbone only the tokens (its encoder then counts in decode)
    decode   the generator's memory and the constrained beam search (`Retriever.decode_encoded`),
             eager or compiled (`torch.compile`: the three steps in one graph)
    lists    the host transfer and each decoded SID's products
    order    the in-cluster cosine order of the candidates, cut at the budget

`beyond_ms` is decode + lists + order per query: the channel's own cost beyond the shared encoder.
Beside it the dense channel a team runs, FAISS HNSW over the same product vectors, searched with the
same query vector (`search_ms`), and both channels' recall of the exact scan's top budget and of the
relevant products. Each time is the median (and p99) over queries after a warm-up; the compiled row
states its compile time. `profile` lists the decode's operators per query (count, self time) under
torch.profiler, whose own overhead inflates the times it shows: read its counts and shares.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from workbench.ann import ANN, ANNConfig
from workbench.baselines import Dense
from workbench.embed import embed_workspace, get_embedder
from workbench.eval.width import served_width
from workbench.gen.config import ChannelConfig
from workbench.gen.data import eval_set
from workbench.gen.retrieve import Channel, CosineOrder, Retriever
from workbench.metrics import per_query
from workbench.sid.store import workspace_embedder

MODES = ("eager", "compiled")


def run(ws, queries: int = 200, width: int | None = None, budget: int = 100, split: str = "validation",
        modes: tuple[str, ...] = MODES, device: str = "cpu", threads: int | None = None, warmup: int = 10,
        echo=print) -> tuple[list[dict], list[dict]]:
    """(rows, profile): a row per decode mode and one for FAISS HNSW; the profile's top operators per mode.
    `threads`: torch's threads for the run (None: as they are)."""
    if threads is not None:
        torch.set_num_threads(threads)
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"decode modes must be some of {MODES}, got {list(modes)}")
    ev = eval_set(ws, split)
    if ev.empty:
        raise ValueError(f"workspace {ws.path} has no {split} queries with relevant products")
    ev = ev.head(queries)
    texts, relevant = ev["query"].astype(str).tolist(), ev["relevant"].tolist()
    width = width or served_width(ws)
    e = get_embedder(workspace_embedder(ws), device)
    vecs = embed_workspace(ws, e, ("products",), progress=False)["products"]
    ids = ws.table("products")["product_id"].tolist()
    qv = e.encode(texts)  # (Q, d): the exact scan's and HNSW's query vectors
    top = [set(p) for p, _ in Dense(ids, vecs, e, device).scored(texts, budget, vectors=qv)]
    cfg = ChannelConfig(budget=budget)
    channel = Channel(cfg, CosineOrder(e, ids, vecs, cfg.logp_weight, cfg.query_dtype, cfg.pool))
    cases, first, retrievers = {}, {}, {}
    for mode in modes:
        retriever = retrievers[mode] = Retriever.from_workspace(ws, device=device, compiled=mode == "compiled")
        t0 = time.perf_counter()
        for q in texts[:2]:  # the compiled graph for one query (and the eager path's first-call costs)
            _generative(retriever, channel, q, width, budget, device)
        first[mode] = time.perf_counter() - t0
        cases[f"generative {mode}"] = lambda q, r=retriever: _generative(r, channel, q, width, budget, device)
    ann = ANN(ids, vecs, e, ANNConfig())
    cases["dense-hnsw"] = lambda q: _hnsw(ann, e, q, budget)
    times, got = _interleaved(cases, texts, warmup)
    rows, profile = [], []
    for case in cases:
        mode = case.split()[-1]
        if case.startswith("generative"):
            echo(f"{mode}: {np.median(times[case]['beyond_ms']):.2f} ms beyond the encoder per query")
            ops, table = _profile(retrievers[mode], texts[:20], width, device)
            profile += [{"mode": mode, **r} for r in table]
            extra = {"ops_per_query": ops, "first_s": first[mode]}
        else:
            extra = {"ops_per_query": float("nan"), "first_s": float("nan")}
        rows.append({"case": case, **_summary(times[case]), **extra, **_recalls(got[case], top, relevant, budget)})
    return rows, profile


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def _generative(retriever: Retriever, channel: Channel, q: str, width: int, budget: int, device: str):
    """One query through the channel: (the stages' ms, its candidates)."""
    t0 = time.perf_counter()
    ids, mask = retriever.tok.encode([q], retriever.model.cfg.max_len, device)
    _sync(device)
    t1 = time.perf_counter()
    beams = retriever.decode_encoded(ids, mask, width)
    _sync(device)
    t2 = time.perf_counter()
    hits = retriever.hits(beams)
    t3 = time.perf_counter()
    vectors = ids.float().cpu().numpy() if ids.is_floating_point() else None  # the sentence backbone's query vector
    got = channel.scored([q], hits, budget, vectors, retriever.lookup)[0][0]
    t4 = time.perf_counter()
    ms = {"encode_ms": t1 - t0, "decode_ms": t2 - t1, "lists_ms": t3 - t2, "order_ms": t4 - t3, "beyond_ms": t4 - t1}
    return {k: 1e3 * v for k, v in ms.items()}, got


def _hnsw(ann: ANN, embedder, q: str, budget: int):
    t0 = time.perf_counter()
    v = embedder.encode([q])
    t1 = time.perf_counter()
    got = ann.scored([q], budget, vectors=v)[0][0]
    t2 = time.perf_counter()
    return {"encode_ms": 1e3 * (t1 - t0), "search_ms": 1e3 * (t2 - t1), "beyond_ms": 1e3 * (t2 - t1)}, got


def _interleaved(cases: dict, texts: list[str], warmup: int) -> tuple[dict, dict]:
    """Each case on each query in turn (query by query, the cases in rotating order), so that whatever else
    the machine does slows them alike: per case the stages' times and the candidates per query."""
    names = list(cases)
    for q in texts[:warmup]:
        for c in names:
            cases[c](q)
    times = {c: {} for c in names}
    got = {c: [] for c in names}
    for i, q in enumerate(texts):
        for c in names[i % len(names):] + names[:i % len(names)]:
            ms, ids = cases[c](q)
            for k, v in ms.items():
                times[c].setdefault(k, []).append(v)
            got[c].append(ids)
    return times, got


def _summary(times: dict[str, list[float]]) -> dict:
    out = {k: float(np.median(v)) for k, v in times.items()}
    out["beyond_p99_ms"] = float(np.percentile(times["beyond_ms"], 99))
    return out


def _recalls(got: list[list[str]], top: list[set], relevant, budget: int) -> dict:
    return {f"exact_recall@{budget}": float(np.mean([len(set(g) & t) / max(len(t), 1) for g, t in zip(got, top)])),
            f"recall@{budget}": float(np.nanmean(per_query(got, relevant, budget)["recall"]))}


def _profile(retriever: Retriever, texts: list[str], width: int, device: str, top: int = 8) -> tuple[float, list[dict]]:
    """aten operators per query of the decode (memory + beam search), and the `top` by self time."""
    from torch.profiler import ProfilerActivity, profile

    encoded = [retriever.tok.encode([q], retriever.model.cfg.max_len, device) for q in texts]
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for ids, mask in encoded:
            retriever.decode_encoded(ids, mask, width)
        _sync(device)
    ev = [e for e in p.key_averages() if e.key.startswith("aten::")]
    n = len(texts)
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    table = [{"op": e.key, "calls_per_query": e.count / n, "self_us_per_query": e.self_cpu_time_total / n,
              "share": e.self_cpu_time_total / total} for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:top]]
    return sum(e.count for e in ev) / n, table
