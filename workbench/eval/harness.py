"""The evaluation harness: every channel on the same queries, the same relevance, the same budgets.

    evaluate(ws, cfg) -> DataFrame, one row per method (`eval/channels.py` builds them by name)

Queries and relevance: the workspace's test (or validation) queries (workbench.gen.data.eval_set), or a
judgments CSV (query, product_id, relevance) given with `judgments_csv`. Per method:

- ranked metrics on its list as served, at the generative channel's budget (`cfg.channel.budget`, the
  same for every channel: BM25's first k of its first 300 are its first k): recall, ndcg, hit (any
  relevant product in the first k), coverage (share of the catalog retrieved by some query) at each k,
  mrr over the first max(k), click_hit@k over the evaluated queries' logged clicks. A fixed-slot
  supplement fills its k slots anew for each k;
- at every budget B of `cfg.budgets`, the same B for every channel: channel_recall@B, the recall of its
  first B products as a set, candidates@B, how many it handed over, and unique_recall@B, the share of
  relevant products in them that BM25's first B misses (`workbench.metrics`);
- for the FAISS channel, ann_recall@B: the share of the exact scan's first B it returns;
- for the SID channels: SIDs decoded per query and products per decoded SID; for the generator its
  width, the valid-SID rate of the same beam decoded without the trie (constrained decoding is valid by
  construction) and, trained with users (stage 3), the personalised hit rate: hit@k of the product
  each user clicked or bought on an evaluated query, decoded with that user's context (personal_hit)
  and without (anonymous_hit, on the same events).

A channel's figures never depend on which other methods are evaluated.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from workbench import metrics
from workbench.data.relevance import threshold as relevance_threshold
from workbench.eval.channels import TEACHERS, Channels, Oracle, TeacherSIDs
from workbench.eval.config import METHODS, EvalConfig
from workbench.eval.fusion import fuse
from workbench.gen.beam import beam_search
from workbench.gen.data import eval_set, gains_by_query
from workbench.gen.stages import personal_eval, personal_events


def judgments_file(ws, path: str | Path, threshold: float | None = None) -> pd.DataFrame:
    """A judgments CSV (query, product_id, relevance) -> query, relevant {product id: grade}."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no judgments file at {path}")
    df = pd.read_csv(path)
    missing = {"query", "product_id", "relevance"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected query, product_id, relevance")
    df["query"] = df["query"].astype(str).str.strip()
    df["product_id"] = df["product_id"].astype(str)
    df["relevance"] = pd.to_numeric(df["relevance"], errors="coerce")
    if df["relevance"].isna().any():
        row = int(df.index[df["relevance"].isna()][0]) + 2
        raise ValueError(f"{path}, line {row}: relevance is not a number")
    if np.isinf(df["relevance"]).any():  # an infinite grade makes NDCG NaN
        row = int(df.index[np.isinf(df["relevance"])][0]) + 2
        raise ValueError(f"{path}, line {row}: relevance is not a finite number ({df['relevance'][row - 2]})")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"the relevance threshold must be a finite number, got {threshold}")
    known = set(ws.table("products")["product_id"])
    unknown = sorted(set(df["product_id"]) - known)
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} product ids are not in the catalog, e.g. {unknown[:3]}")
    thr = threshold if threshold is not None else relevance_threshold(ws, df["relevance"])
    rel = df[(df["relevance"] >= thr) & (df["query"] != "")].rename(columns={"query": "query_id", "relevance": "weight"})
    if rel.empty:
        raise ValueError(f"{path}: no judgment reaches the relevance threshold {thr}")
    out = gains_by_query(rel)
    out["query"] = out["query_id"]
    return out[["query_id", "query", "relevant"]]


def click_events(ws, query_ids) -> pd.DataFrame:
    if not ws.has("search_log"):
        return pd.DataFrame(columns=["query_id", "product_id"])
    log = ws.table("search_log")
    log = log[log["clicked"] & log["query_id"].isin(set(query_ids))]
    return log[["query_id", "product_id"]]


def ranked_metrics(ranked, relevant: list, ks, n_products: int, clicks: pd.DataFrame, query_ids) -> dict[str, float]:
    """recall, ndcg, hit, coverage and click_hit at each k of `ranked(k)` (per query its first k), and mrr."""
    row = {}
    for k in ks:
        got = ranked(k)
        pq = metrics.per_query(got, relevant, k)
        row.update({f"recall@{k}": np.nanmean(pq["recall"]), f"ndcg@{k}": np.nanmean(pq["ndcg"]),
                    f"hit@{k}": np.nanmean(pq["hit"]), f"coverage@{k}": metrics.coverage(got, k, n_products)})
        if len(clicks):
            pos = {q: set(g[:k]) for q, g in zip(query_ids, got)}
            row[f"click_hit@{k}"] = float(np.mean([p in pos[q] for q, p in zip(clicks["query_id"], clicks["product_id"])]))
    row["mrr"] = metrics.mrr(ranked(max(ks)), relevant)
    return row


def evaluate(ws, cfg: EvalConfig | None = None, queries: pd.DataFrame | None = None, run=None,
             progress: bool = True) -> pd.DataFrame:
    """One row per method of `cfg.methods` (in `METHODS` order) on the same queries: its ranked metrics on
    its list as served (at `cfg.channel.budget`; a fixed-slot supplement fills k slots for each k), and
    at every budget of `cfg.budgets` the recall of its first B products and what of that BM25's first B
    misses; the generative channel's own figures beside."""
    cfg = cfg or EvalConfig()
    given = queries is not None
    queries = eval_set(ws, cfg.split) if queries is None else queries
    texts, relevant = queries["query"].tolist(), queries["relevant"].tolist()
    channels = Channels(ws, cfg, dict(zip(texts, relevant)), progress)
    n_products, clicks, qids = len(ws.table("products")), click_events(ws, queries["query_id"]), queries["query_id"].tolist()
    bm25_at = {b: channels["bm25"].search(texts, b) for b in cfg.budgets}  # unique recall is against BM25's first B
    rows = []
    for name in [m for m in METHODS if m in cfg.methods]:
        ch = channels[name]
        t = time.perf_counter()
        served = None if ch.slots else [ids for ids, _ in ch.scored(texts, cfg.channel.budget)]
        ms = 1e3 * (time.perf_counter() - t) / len(texts)
        ranked = (lambda k, ch=ch: ch.search(texts, k)) if ch.slots else (lambda k, s=served: [ids[:k] for ids in s])
        row = {"method": name, **ranked_metrics(ranked, relevant, cfg.ks, n_products, clicks, qids)}
        for b in cfg.budgets:
            got = bm25_at[b] if name == "bm25" else [ids for ids, _ in ch.scored(texts, b)]
            row[f"channel_recall@{b}"] = metrics.recall_at_k(got, relevant, b)
            row[f"candidates@{b}"] = float(np.mean([len(g) for g in got]))
            if name != "bm25":
                row[f"unique_recall@{b}"] = metrics.unique_recall(got, bm25_at[b], relevant, b)
            if name == "dense-ann":  # how much of the exact scan's first B the index returns
                exact = channels["dense"].search(texts, b)
                row[f"ann_recall@{b}"] = float(np.mean([len(set(a) & set(x)) / max(len(x), 1) for a, x in zip(got, exact)]))
        if not ch.slots:
            row["ms_per_query"] = ms
        if name in ("generative", "generative-tree", "generative-decoder", "oracle-sids", "oracle-sids+beam", *TEACHERS):
            row.update(sid_figures(ch, texts, cfg, ws, personal=name == "generative" and not given))
        rows.append(row)
    if cfg.fusions:
        rows += fuse(ws, channels, cfg, queries, cfg.device, echo=print if progress else (lambda *_: None)).to_dict("records")
    df = pd.DataFrame(rows)
    if run is not None:
        dataset = f"{len(texts)} {'given' if given else cfg.split} queries"
        for r_ in rows:
            for key, v in r_.items():
                if key != "method" and np.isfinite(v):
                    metric, k = metric_at(key)
                    run.log_eval(metric, v, k=k, dataset=dataset, method=r_["method"], stage="eval")
    return df


def metric_at(key: str) -> tuple[str, int | None]:
    """A result column as (metric, k): recall@10 -> (recall, 10); d_recall@10_lo -> (d_recall_lo, 10); sids -> (sids, None)."""
    metric, at, rest = key.partition("@")
    if not at:
        return metric, None
    digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
    if not digits:
        raise ValueError(f"result column {key!r} is not metric@k or metric@k_suffix")
    return metric + rest[len(digits):], int(digits)


def sid_figures(ch, texts: list[str], cfg: EvalConfig, ws, personal: bool) -> dict[str, float]:
    """What a SID channel decoded: SIDs per query, products per decoded SID, the width; for the generator
    the valid-SID rate of its beam without the trie and, trained with users, the personalised hit rate."""
    hits = ch.hits(texts)
    out = {"sids": float(np.mean([len(h) for h in hits])),
           "cluster_size": float(np.mean([len(x.products) for h in hits for x in h])) if any(hits) else float("nan")}
    if isinstance(ch, Oracle | TeacherSIDs):
        return out
    r = ch.retriever
    out.update({"width": float(ch.width), "valid_sid_rate_unconstrained": unconstrained_valid_rate(r, texts, ch.width)})
    if ch.terms is None:  # each logit term's mean |logit| per level, as the full model decodes
        r.model.probe = []
        try:
            r.search(texts[:256], ch.width)
            for level, m in pd.DataFrame(r.model.probe).groupby("level").mean().iterrows():
                out |= {f"decoder_logit@{level}": m["decoder"], f"tree_logit@{level}": m["tree"]}
        finally:
            r.model.probe = None
    if personal and r.model.cfg.context_vocab and ws.has("users") and ws.has("search_log"):
        out.update(personal_eval(r, personal_events(ws, cfg.split), r.users(ws), ch.width, cfg.ks))
    return out


def unconstrained_valid_rate(retriever, texts: list[str], width: int) -> float:
    """Share of SIDs that exist among those the same beam decodes without the trie."""
    ids, mask = retriever.tok.encode(texts, retriever.model.cfg.max_len, retriever.device)
    with torch.no_grad():
        b = beam_search(retriever.model, retriever.model.memory(ids, mask), None, width, constrained=False)
    sids = b.sids[b.valid].cpu().numpy()
    return float(retriever.index.contains(sids).mean()) if len(sids) else float("nan")
