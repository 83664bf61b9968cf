"""Training and evaluation examples for the generator: text (+ context) -> SID.

    Pairs(text, sids (N, L), weight (N,), context (N, C) or None, source)

- `item_pairs`:  each product's title and its category path -> the product's SID (stage 1: learn the
                 catalog's language);
- `pseudo_pairs`: pseudo-queries drawn from each product's text -> its SID (stage 1 too: query-like
                 text for every product, where the log has few queries; `workbench.data.pseudo`);
- `query_pairs`: each training query -> the SIDs of the products relevant to it, weighted by
                 purchases / clicks / judgments (stage 2); validation and test queries are never used;
- `eval_set`:    a split's queries (validation or test) and their relevant product ids, for Recall@K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.data import splits
from workbench.data.pseudo import PseudoConfig, pseudo_queries, words
from workbench.data.relevance import judged, relevance
from workbench.embed import product_texts
from workbench.sid.store import load_sids


@dataclass
class Pairs:
    text: list[str]
    sids: np.ndarray  # (N, L) int
    weight: np.ndarray  # (N,) float
    context: np.ndarray | None = None  # (N, C) int, -1 = empty slot
    source: str = ""

    def __len__(self) -> int:
        return len(self.text)

    @staticmethod
    def concat(parts: list[Pairs]) -> Pairs:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no training examples")
        if len({p.context is None for p in parts}) > 1:
            raise ValueError("cannot mix examples with and without context")
        ctx = None if parts[0].context is None else np.concatenate([p.context for p in parts])
        return Pairs(sum((p.text for p in parts), []), np.concatenate([p.sids for p in parts]),
                     np.concatenate([p.weight for p in parts]), ctx, "+".join(p.source for p in parts))


def sid_matrix(sids: pd.DataFrame) -> np.ndarray:
    """(N, L) codes of a SID table (sid_1..sid_L, then dedup in unique mode)."""
    cols = [c for c in sids.columns if c.startswith("sid_")] + (["dedup"] if "dedup" in sids.columns else [])
    return sids[cols].to_numpy(np.int64)


def item_text(products: pd.DataFrame) -> list[str]:
    cat = products["category"].fillna("").astype(str).str.replace(" > ", ", ", regex=False)
    return (products["title"].astype(str) + " . " + cat).str.strip(" .").tolist()


def item_pairs(ws, sids: pd.DataFrame | None = None, embedded_text: bool = False) -> Pairs:
    """Each product's text -> its SID; `embedded_text`: the text the workspace embeds (the title, whose
    embedding is cached) rather than title and category, for the sentence backbone."""
    sids = load_sids(ws) if sids is None else sids
    products = ws.table("products").merge(sids, on="product_id")
    text = product_texts(products) if embedded_text else item_text(products)
    return Pairs(text, sid_matrix(products), np.ones(len(products)), source="items")


def unseen(ws) -> list[str]:
    """The validation and test queries: texts nothing may train on."""
    if not ws.has("queries"):
        return []
    q = ws.table("queries")
    return q.loc[splits.mask(ws, q["query_id"], "validation", "test"), "query"].astype(str).tolist()


def write_pseudo_queries(ws, cfg: PseudoConfig | None = None) -> pd.DataFrame:
    """Draw the catalog's pseudo-queries (none equal to a validation or test query) into the
    `pseudo_queries` table."""
    cfg = cfg or PseudoConfig()
    df = pseudo_queries(ws.table("products"), cfg, exclude=unseen(ws))
    ws.write_tables({"pseudo_queries": df})
    return df


def pseudo_pairs(ws, sids: pd.DataFrame | None = None, per_product: int = 4, seed: int = 0) -> Pairs:
    """Each product's first `per_product` pseudo-queries -> its SID (drawn into the table first if absent),
    leaving out any that equals a validation or test query (a table drawn under another split may hold some)."""
    sids = load_sids(ws) if sids is None else sids
    if not ws.has("pseudo_queries"):
        write_pseudo_queries(ws, PseudoConfig(per_product=per_product, seed=seed))
    pq = ws.table("pseudo_queries")
    banned = {" ".join(words(t)) for t in unseen(ws)}  # compared as pseudo_queries compares them
    pq = pq[~pq["query"].map(lambda t: " ".join(words(t))).isin(banned)]
    pq = pq.groupby("product_id", sort=False).head(per_product).merge(sids, on="product_id")
    return Pairs(pq["query"].tolist(), sid_matrix(pq), np.ones(len(pq)), source="pseudo")


def query_pairs(ws, sids: pd.DataFrame | None = None, weights: dict[str, float] | None = None) -> Pairs:
    """Each training query -> the SIDs of its relevant products, weighted (`data.relevance`; `weights`
    per source override its defaults)."""
    sids = load_sids(ws) if sids is None else sids
    rel = relevance(ws, weights=weights)
    rel = rel[splits.mask(ws, rel["query_id"], "train")]
    df = rel.merge(ws.table("queries"), on="query_id").merge(sids, on="product_id")
    return Pairs(df["query"].astype(str).tolist(), sid_matrix(df), df["weight"].to_numpy(float), source="queries")


def shown_not_bought(ws, sids: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Training query text -> (M, L) the distinct SIDs of products its sessions showed and never bought,
    most shown first (hard negatives: the legacy engine thought them worth showing; no one bought them
    for this query). An empty dict for a workspace without a search log."""
    if not ws.has("search_log"):
        return {}
    sids = load_sids(ws) if sids is None else sids
    log = ws.table("search_log")
    log = log[log["impressed"] & splits.mask(ws, log["query_id"], "train")]
    per = log.groupby(["query_id", "product_id"])["purchased"].agg(["any", "size"]).reset_index()
    neg = per[~per["any"]].sort_values(["query_id", "size", "product_id"], ascending=[True, False, True])
    df = neg.merge(ws.table("queries"), on="query_id").merge(sids, on="product_id")
    out = {}
    for text, g in df.groupby(df["query"].astype(str), sort=False):
        codes = sid_matrix(g)  # (M', L), most shown first
        _, first = np.unique(codes, axis=0, return_index=True)
        out[text] = codes[np.sort(first)]  # each SID once, where it first appears
    return out


def eval_set(ws, split: str = "test", sources: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The queries of `split` (validation chooses, test reports): query_id, query, relevant ({product id:
    gain}). With judgments in the workspace, relevant = judged at or above the relevance threshold, gain
    = the grade; otherwise purchases (gain 2) and clicks (1)."""
    if sources is None:
        sources = ("judged",) if ws.has("judgments") else ("purchased", "clicked")
    if sources == ("judged",):
        rel = judged(ws).rename(columns={"relevance": "weight"})
    else:
        rel = relevance(ws, sources)
    rel = rel[splits.mask(ws, rel["query_id"], split)]
    if rel.empty:
        raise ValueError(f"workspace {ws.path} has no {split} queries with relevant products ({', '.join(sources)})")
    return gains_by_query(rel).merge(ws.table("queries"), on="query_id")[["query_id", "query", "relevant"]]


def gains_by_query(rel: pd.DataFrame) -> pd.DataFrame:
    """(query_id, product_id, weight) rows -> query_id, relevant {product id: gain}."""
    g = rel.groupby("query_id")[["product_id", "weight"]].apply(lambda d: dict(zip(d["product_id"], d["weight"].astype(float))))
    return g.rename("relevant").reset_index()
