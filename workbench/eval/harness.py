"""The evaluation harness: every method on the same queries, the same relevance, the same metrics.

    evaluate(ws, cfg) -> DataFrame, one row per method

Queries and relevance: the workspace's test (or validation) queries (workbench.gen.data.eval_set), or a
judgments CSV (query, product_id, relevance) given with `judgments_csv`. Methods:

    generative        the workspace's generator as a recall channel (`gen.retrieve.Channel`):
                      constrained beam of `width`, the decoded SIDs' products in beam order cut at
                      the channel's budget (the candidate set), then ranked inside by query-product
                      cosine (+ logp_weight x the SID's log-prob; order "popularity": popular
                      first within a SID, SIDs in beam order)
    oracle-sids       the same channel had it decoded exactly the SIDs of each query's relevant
                      products (in the order of their relevant products): the ceiling of the SIDs,
                      so a shortfall splits into what the SIDs lose and what the generator loses
    bm25, dense       workbench.baselines
    hybrid            reciprocal-rank fusion of bm25 and dense
    <base>+gen        generation as a supplement to <base> within the same k slots (share of slots)

Metrics per method at each k: recall, ndcg, hit (any relevant product in the first k), coverage
(share of the catalog retrieved by some query); mrr over the first max(k); click_hit@k over the evaluated
queries' logged clicks (is the clicked product in the first k for that query). For generative also
the SIDs decoded, the products per decoded SID (the cluster size retrieved), the valid-SID rate
of the same beam decoded without the trie (constrained decoding is valid by construction) and, for a
generator trained with users (stage 3), the personalised hit rate: hit@k of the product each user
clicked or bought on an evaluated query, decoded with that user's context (personal_hit) and without
(anonymous_hit, on the same events).

Channel metrics (generative and oracle-sids) at each budget B of `budgets`: channel_recall@B, the
recall of the candidate set cut at B (a set: order does not matter), and unique_recall@B, the share
of relevant products in it that BM25's first B misses (`workbench.metrics`); `candidates` is the mean
size of the candidate set at the channel's budget. Union recall, the two channels sharing one budget, is what the
<base>+gen rows measure.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench import metrics
from workbench.baselines import BM25, Dense, rrf, supplement
from workbench.data.relevance import threshold as relevance_threshold
from workbench.embed import embed_workspace, get_embedder, product_texts
from workbench.eval.config import METHODS, EvalConfig
from workbench.gen.beam import beam_search
from workbench.gen.data import eval_set, gains_by_query
from workbench.gen.retrieve import Channel, Hit, Retriever, candidates
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


def evaluate(ws, cfg: EvalConfig | None = None, queries: pd.DataFrame | None = None, run=None,
             progress: bool = True) -> pd.DataFrame:
    cfg = cfg or EvalConfig()
    queries_given = queries is not None
    queries = eval_set(ws, cfg.split) if queries is None else queries
    texts, relevant = queries["query"].tolist(), queries["relevant"].tolist()
    products = ws.table("products")
    ids = products["product_id"].tolist()
    K = max(cfg.ks)
    lists: dict[str, list[list[str]]] = {}
    extra: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        lists[name] = fn()
        seconds[name] = time.perf_counter() - t

    need = set(cfg.methods)
    channels: dict[str, list[list]] = {}  # method -> per query its Hits (the candidate sets before ranking)
    if need & {"generative", "oracle-sids", "bm25+gen", "dense+gen", "hybrid+gen"}:
        r = Retriever.from_workspace(ws, cfg.generator, cfg.device)
        channel = Channel.from_workspace(ws, cfg.channel, cfg.device)

        t = time.perf_counter()
        hits = r.search(texts, cfg.width)
        lists["generative"] = channel(texts, hits)
        seconds["generative"] = time.perf_counter() - t
        channels["generative"] = hits
        extra["generative"] = {"sids": float(np.mean([len(h) for h in hits])),
                               "cluster_size": float(np.mean([len(x.products) for h in hits for x in h])),
                               "width": float(cfg.width), "candidates": float(np.mean([len(g) for g in lists["generative"]])),
                               "valid_sid_rate_unconstrained": unconstrained_valid_rate(r, texts, cfg.width)}
        if r.model.cfg.context_vocab and not queries_given and ws.has("users") and ws.has("search_log"):
            extra["generative"].update(personal_eval(r, personal_events(ws, cfg.split), r.users(ws), cfg.width, cfg.ks))
        if "oracle-sids" in need:
            channels["oracle-sids"] = oracle_hits(r.lookup, r.index, relevant)
            lists["oracle-sids"] = channel(texts, channels["oracle-sids"])
            extra["oracle-sids"] = {"sids": float(np.mean([len(h) for h in channels["oracle-sids"]])),
                                    "candidates": float(np.mean([len(g) for g in lists["oracle-sids"]]))}
    if need & {"bm25", "hybrid", "bm25+gen", "hybrid+gen"} or channels:
        bm = BM25(ids, product_texts(products))
        timed("bm25", lambda: bm.search(texts, max(K, *cfg.budgets) if channels else K))
    if need & {"dense", "hybrid", "dense+gen", "hybrid+gen"}:
        e = get_embedder(cfg.embedder, cfg.device)
        dense = Dense(ids, embed_workspace(ws, e, ("products",), progress=progress)["products"], e, cfg.device)
        e.encode(["warm up"])  # load the model before the clock starts
        timed("dense", lambda: dense.search(texts, K))
    if need & {"hybrid", "hybrid+gen"}:
        lists["hybrid"] = rrf([lists["bm25"], lists["dense"]], K)

    def ranked(name: str, k: int) -> list[list[str]]:
        """The method's lists cut at k; a supplement fills its k slots anew for each k."""
        if name.endswith("+gen"):
            return supplement(lists[name[:-4]], lists["generative"], k, cfg.share)
        return [g[:k] for g in lists[name]]

    clicks = click_events(ws, queries["query_id"])
    rows = []
    for name in [m for m in METHODS if m in need or m == "bm25" and channels]:
        row = {"method": name}
        for k in cfg.ks:
            got = ranked(name, k)
            pq = metrics.per_query(got, relevant, k)
            row.update({f"recall@{k}": np.nanmean(pq["recall"]), f"ndcg@{k}": np.nanmean(pq["ndcg"]),
                        f"hit@{k}": np.nanmean(pq["hit"]), f"coverage@{k}": metrics.coverage(got, k, len(ids))})
            if len(clicks):
                pos = {q: set(g[:k]) for q, g in zip(queries["query_id"], got)}
                row[f"click_hit@{k}"] = float(np.mean([p in pos[q] for q, p in zip(clicks["query_id"], clicks["product_id"])]))
        row["mrr"] = metrics.mrr(ranked(name, K), relevant)
        for b in cfg.budgets if name in channels else ():
            cands = [candidates(h, b)[0] for h in channels[name]]
            row[f"channel_recall@{b}"] = metrics.recall_at_k(cands, relevant, b)
            row[f"unique_recall@{b}"] = metrics.unique_recall(cands, lists["bm25"], relevant, b)
        row.update(extra.get(name, {}))
        if name in seconds:
            row["ms_per_query"] = 1e3 * seconds[name] / len(texts)
        rows.append(row)
    df = pd.DataFrame(rows)
    if run is not None:
        for r_ in rows:
            for key, v in r_.items():
                if key != "method" and np.isfinite(v):
                    metric, _, k = key.partition("@")
                    run.log_eval(metric, v, k=int(k) if k else None, dataset=f"{len(texts)} {cfg.split if not queries_given else 'given'} queries", method=r_["method"],
                                 stage="eval")
    return df


def oracle_hits(lookup, index, relevant: list) -> list[list]:
    """Per query the Hits of exactly the SIDs of its relevant products (first seen first, log-prob 0)."""
    row_of = lookup.rows()
    out = []
    for rel in relevant:
        rows = dict.fromkeys(row_of[p] for p in rel if p in row_of)
        out.append([Hit(tuple(int(c) for c in index.sids[row]), 0.0, lookup(row)) for row in rows])
    return out


def unconstrained_valid_rate(retriever, texts: list[str], width: int) -> float:
    """Share of SIDs that exist among those the same beam decodes without the trie."""
    import torch

    ids, mask = retriever.tok.encode(texts, retriever.model.cfg.max_len, retriever.device)
    with torch.no_grad():
        b = beam_search(retriever.model, retriever.model.memory(ids, mask), None, width, constrained=False)
    sids = b.sids[b.valid].cpu().numpy()
    return float(retriever.index.contains(sids).mean()) if len(sids) else float("nan")
