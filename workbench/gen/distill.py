"""Distillation from a retriever that already works (RIPOR arXiv 2311.09134, DGR arXiv 2402.10769).

Any text can be labelled by a teacher: its top k products, BM25's, dense retrieval's or their
reciprocal-rank fusion (`workbench.baselines`). The generator then learns to rank *clusters* the way
the teacher ranks products, from as much text as there is (training queries, pseudo-queries), not
only from the few labelled queries. For a text with teacher list p_1..p_k, the soft target over SIDs is

    w(s) = sum_{r : sid(p_r) = s} 1 / r   /   sum_{r=1..k} 1 / r

(reciprocal-rank weights, normalised so that every text weighs as much as one example), and the
examples are (text, s, w(s)) for every SID s in the list: the generator's weighted cross-entropy over
them is the cross-entropy to this distribution. Products the catalog's SID table lacks are skipped.

It belongs in stage 2 (queries): it is the same task, query-like text -> the SIDs that answer it, and
it needs the catalog's language from stage 1 first; stage 3 then personalises what stage 2 ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from workbench.baselines import BM25, Dense, rrf
from workbench.embed import embed, embed_workspace, get_embedder, product_texts
from workbench.gen.config import TEACHERS
from workbench.gen.data import Pairs, sid_matrix
from workbench.sid.store import workspace_embedder


def soft_targets(texts: list[str], ranked: list[list[str]], sids: pd.DataFrame) -> Pairs:
    """One example per (text, distinct SID among its ranked products), weighted as in the docstring."""
    if len(texts) != len(ranked):
        raise ValueError(f"{len(texts)} texts for {len(ranked)} teacher lists")
    row = dict(zip(sids["product_id"].tolist(), range(len(sids))))  # product id -> row (a hot loop: no pandas lookups)
    codes = sid_matrix(sids)
    keys = [tuple(c) for c in codes.tolist()]
    out_text, out_row, out_w = [], [], []
    for text, products in zip(texts, ranked):
        w: dict[tuple, float] = {}
        first: dict[tuple, int] = {}
        norm = sum(1.0 / (r + 1) for r in range(len(products)))
        for r, p in enumerate(products):
            i = row.get(p)
            if i is None:
                continue
            w[keys[i]] = w.get(keys[i], 0.0) + 1.0 / (r + 1) / norm
            first.setdefault(keys[i], i)
        for key, weight in w.items():
            out_text.append(text)
            out_row.append(first[key])
            out_w.append(weight)
    return Pairs(out_text, codes[np.asarray(out_row, dtype=np.int64)].reshape(-1, codes.shape[1]),
                 np.asarray(out_w, dtype=float), source="distill")


def teacher(ws, name: str, device: str = "cpu") -> Callable[[list[str], int], list[list[str]]]:
    """The workspace's `name` retriever as texts, k -> ranked product ids (dense reads the embedding
    cache for the texts, so pseudo-queries the sentence backbone embedded cost nothing more)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; teachers: {', '.join(TEACHERS)}")
    products = ws.table("products")
    ids = products["product_id"].tolist()
    bm = BM25(ids, product_texts(products), backend="numba") if name in ("bm25", "hybrid") else None
    dense = None
    if name in ("dense", "hybrid"):
        e = get_embedder(workspace_embedder(ws), device)
        dense = Dense(ids, embed_workspace(ws, e, ("products",), progress=False)["products"], e, device)

    def search(texts: list[str], k: int) -> list[list[str]]:
        lists = []
        if bm is not None:
            lists.append(bm.search(texts, k))
        if dense is not None:
            q = embed(texts, dense.embedder, ws.cache_dir / "embeddings", desc="embed texts")
            lists.append(dense.search(texts, k, vectors=q))
        return rrf(lists, k) if len(lists) > 1 else lists[0]

    return search


def distill_pairs(ws, sids: pd.DataFrame, texts: list[str], name: str, k: int = 10, device: str = "cpu",
                  search: Callable[[list[str], int], list[list[str]]] | None = None) -> Pairs:
    """`texts` labelled with the SIDs of `name`'s top k products (soft targets); `search`: that teacher
    already built (`teacher(ws, name)`), to label several sets of texts from one index."""
    if k < 1:
        raise ValueError(f"the teacher's k must be >= 1, got {k}")
    if not texts:
        raise ValueError("no texts to distil")
    return soft_targets(texts, (search or teacher(ws, name, device))(texts, k), sids)
