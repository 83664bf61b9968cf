"""A learned fusion ranker over the union of channels' candidates: how an engine merges its recall
channels, and so how a channel earns its place.

    fuse(ws, channels, sets, queries, cfg) -> one row per set of channels, on the evaluated queries

For a set of n channels at a total budget T, each channel hands over its first T // n products
(`scored(queries, budget)`), their union is scored by a LambdaMART ranker (LightGBM, objective
"lambdarank"), and the ranked union is measured: Recall@k and NDCG@k, and `union_recall`, the share
of relevant products anywhere in the union (what a perfect ranker's Recall@budget would be). Per (query, candidate) the
ranker sees:

    rank_<c>, score_<c>   each channel of the set: the candidate's rank and score there (NaN: absent)
    channels              how many channels of the set retrieved it
    cosine, bm25          the query-product cosine (the workspace's embedder) and BM25 score, as a ranker
                          computes them for any candidate
    popularity            the product's purchases (2) and clicks (1) on training queries
    sid_logp, cluster     with the generative channel: the log-probability of the candidate's decoded SID
                          and that SID's product count (NaN when it was not decoded)

Invariants:
- one ranker per set, trained on the training queries' candidates (labels: the relevance grades of
  `gen.data.eval_set`, as ordinal levels; unjudged candidates 0) and early-stopped on the validation
  queries; it never sees a test query;
- every set is ranked on the same queries at the same total budget, and each set's difference from the
  reference set comes with a paired bootstrap 95% interval over queries (`metrics.paired_difference`).
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from workbench import metrics
from workbench.embed import embed_workspace, get_embedder
from workbench.eval.config import EvalConfig, fusion_sets
from workbench.gen.data import eval_set
from workbench.gen.retrieve import popularity
from workbench.sid.store import workspace_embedder

SHARED = ("channels", "cosine", "bm25", "popularity")  # the features of every set


def frame(channels, names: tuple[str, ...], texts: list[str], budget: int) -> pd.DataFrame:
    """One row per (query, candidate) of the union of `names`' first budget // len(names) products, with
    the set's features (module docstring). `q` is the query's row in `texts`."""
    each = budget // len(names)
    if each < 1:
        raise ValueError(f"a fusion budget of {budget} leaves no candidate to each of {len(names)} channels")
    parts = []
    for name in names:
        got = channels[name].scored(texts, each)
        q = np.repeat(np.arange(len(texts)), [len(ids) for ids, _ in got])
        parts.append(pd.DataFrame({"q": q, "product_id": [p for ids, _ in got for p in ids],
                                   f"rank_{name}": np.concatenate([np.arange(1, len(ids) + 1) for ids, _ in got] or [[]]).astype(float),
                                   f"score_{name}": np.concatenate([s for _, s in got] or [[]]).astype(float)}))
    df = parts[0]
    for p in parts[1:]:
        df = df.merge(p, on=["q", "product_id"], how="outer")
    df = df.sort_values(["q", "product_id"], kind="stable").reset_index(drop=True)
    df["channels"] = df[[f"rank_{n}" for n in names]].notna().sum(1).astype(float)
    return df


class Features:
    """The shared per-pair features of a workspace: cosine, BM25 score, popularity, and the generative
    channel's SID figures."""

    def __init__(self, ws, channels, device: str = "cpu"):
        self.channels = channels
        e = get_embedder(workspace_embedder(ws), device)
        products = ws.table("products")
        self.embedder, self.vectors = e, embed_workspace(ws, e, ("products",), progress=False)["products"]
        self.row = pd.Index(products["product_id"].astype(str))
        self.popularity = popularity(ws).reindex(self.row).fillna(0.0).to_numpy()

    def add(self, df: pd.DataFrame, texts: list[str], names: tuple[str, ...]) -> pd.DataFrame:
        rows = self.row.get_indexer(df["product_id"].astype(str))
        q = self.embedder.encode(texts)  # (Q, d), unit norm
        df["cosine"] = np.einsum("nd,nd->n", self.vectors[rows], q[df["q"].to_numpy()])
        bm = self.channels["bm25"]
        toks = bm._tok(texts, ids=False)
        scores = np.zeros(len(df))
        for qi, idx in df.groupby("q").indices.items():
            if toks[qi]:
                scores[idx] = bm.index.get_scores(toks[qi])[rows[idx]]
        df["bm25"] = scores
        df["popularity"] = self.popularity[rows]
        if "generative" in names:
            logp, size = {}, {}
            for qi, hits in enumerate(self.channels["generative"].hits(texts)):
                for h in hits:
                    for p in h.products:
                        logp.setdefault((qi, p), h.logp)
                        size.setdefault((qi, p), len(h.products))
            keys = list(zip(df["q"], df["product_id"]))
            df["sid_logp"] = [logp.get(k, np.nan) for k in keys]
            df["cluster"] = [size.get(k, np.nan) for k in keys]
        return df


def columns(names: tuple[str, ...]) -> list[str]:
    own = [f"{kind}_{n}" for n in names for kind in ("rank", "score")]
    return own + list(SHARED) + (["sid_logp", "cluster"] if "generative" in names else [])


def labels(df: pd.DataFrame, relevant: list[dict], levels: np.ndarray) -> np.ndarray:
    """Ordinal relevance of each pair: 0 when unjudged or below the threshold, else the gain's level (1..)."""
    gain = np.array([relevant[q].get(p, 0.0) for q, p in zip(df["q"], df["product_id"])], float)
    return np.where(gain > 0, np.searchsorted(levels, gain) + 1, 0).astype(int)


def fit(train: pd.DataFrame, valid: pd.DataFrame, cols: list[str], seed: int = 0) -> lgb.LGBMRanker:
    """LambdaMART on the training pairs, early-stopped on the validation pairs' NDCG@10."""
    ranker = lgb.LGBMRanker(objective="lambdarank", n_estimators=400, learning_rate=0.05, num_leaves=31, min_child_samples=20,
                            random_state=seed, deterministic=True, force_row_wise=True, verbose=-1)
    ranker.fit(train[cols], train["label"], group=train.groupby("q", sort=True).size().to_numpy(),
               eval_X=(valid[cols],), eval_y=(valid["label"],), eval_group=[valid.groupby("q", sort=True).size().to_numpy()],
               eval_at=[10], callbacks=[lgb.early_stopping(30, verbose=False)])
    return ranker


def ranked(ranker: lgb.LGBMRanker, df: pd.DataFrame, cols: list[str], n: int) -> list[list[str]]:
    """Per query row 0..n-1 its candidates in the ranker's order."""
    df = df.assign(s=ranker.predict(df[cols])).sort_values(["q", "s"], ascending=[True, False], kind="stable")
    out = [[] for _ in range(n)]
    for q, ids in df.groupby("q", sort=False)["product_id"]:
        out[q] = ids.tolist()
    return out


def fuse(ws, channels, cfg: EvalConfig, queries: pd.DataFrame, device: str = "cpu", echo=print) -> pd.DataFrame:
    """Per fusion set of `cfg.fusions`: the learned ranker's Recall@k and NDCG@k on `queries` (the
    evaluated split) at the total budget `cfg.fusion_budget`, and each difference from the set
    `cfg.fusion_reference` with its paired 95% interval."""
    sets, ref = fusion_sets(cfg.fusions), tuple(cfg.fusion_reference.split("+"))  # checked by EvalConfig
    split = {s: eval_set(ws, s) for s in ("train", "validation")}
    levels = np.unique([g for d in split["train"]["relevant"] for g in d.values()])
    feats = Features(ws, channels, device)
    texts = {**{s: d["query"].tolist() for s, d in split.items()}, "eval": queries["query"].tolist()}
    rel = {**{s: d["relevant"].tolist() for s, d in split.items()}, "eval": queries["relevant"].tolist()}
    per_query, rows = {}, []
    for names in sets:
        cols = columns(names)
        data = {s: feats.add(frame(channels, names, texts[s], cfg.fusion_budget), texts[s], names) for s in texts}
        for s, d in data.items():
            d["label"] = labels(d, rel[s], levels)
        model = fit(data["train"], data["validation"], cols)
        got = ranked(model, data["eval"], cols, len(texts["eval"]))
        name = "fused " + "+".join(names)
        per_query[names] = {f"{m}@{k}": metrics.per_query(got, rel["eval"], k)[m] for k in cfg.ks for m in ("recall", "ndcg")}
        row = {"method": name, **{key: float(np.nanmean(v)) for key, v in per_query[names].items()},
               "candidates": float(np.mean([len(g) for g in got])), "trees": float(model.best_iteration_ or model.n_estimators),
               "union_recall": metrics.recall_at_k(got, rel["eval"], cfg.fusion_budget)}  # the ceiling of any order of this union
        echo(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if "@" in k))
        rows.append(row)
    for row, names in zip(rows, sets):
        if names == ref:
            continue
        for key, v in per_query[names].items():
            d, lo, hi = metrics.paired_difference(v, per_query[ref][key], seed=cfg.seed)
            row |= {f"d_{key}": d, f"d_{key}_lo": lo, f"d_{key}_hi": hi}
    return pd.DataFrame(rows)
