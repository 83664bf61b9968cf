"""Human labels for SID prefixes: what each cluster *is*, computed from its products.

Every prefix of every level gets a row: level 1 (`49`), levels 1-2 (`49-0`), ..., the full SID
(`49-0-4`). For a cluster c with parent p (the prefix one level up; for level 1 the whole catalog):

    category   the dominant category path: the deepest path prefix ("Tools > Power Tools") that at
               least `min_share` of c's products share, with that share; below `min_share` even at the
               root, the most common root and its share. None when the catalog has no categories.
    terms      the `terms` title words most distinctive of c against p, scored
                   df_c(t) * log(df_c(t) / df_p(t))
               with df the share of a cluster's products whose title holds t. This is c-TF-IDF's idea
               (BERTopic) with the parent as the background: a word as common in the parent as in c
               scores 0, so siblings get terms that tell them apart. A word must be in 2 of c's
               products when c has 2 or more; a cluster with no distinctive word (say, its parent's
               only child) keeps its parent's terms.
    label      "<category leaf> <share>% · term, term, term" (the terms alone without categories)

Invariants: one row per distinct prefix of the SID table (levels 1..L, `dedup` ignored), products
summing to the catalog at every level; 0 < category_share <= 1; the same tables give the same labels.
`label_quality` is the product-weighted mean category share per level (how pure a label's category is).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import scipy.sparse as sp

STOP = frozenset(
    "a an and are as at by for from in into is it of on or over per pcs pack set the this to up with without".split())
WORD = re.compile(r"[a-z][a-z0-9'\-]*[a-z0-9]")


def words(title: str) -> set[str]:
    """The distinct words of a title that can label a cluster: lower case, 2+ characters, starting with a
    letter, stop words out."""
    return {w for w in WORD.findall(str(title).lower()) if w not in STOP}


def prefix(codes: np.ndarray) -> np.ndarray:
    """(N, l) codes -> (N,) prefix strings "c1-c2-..."."""
    return np.array(["-".join(map(str, row)) for row in codes.tolist()], dtype=object)


def compute(products: pd.DataFrame, sids: pd.DataFrame, levels: int, terms: int = 3,
            min_share: float = 0.5) -> pd.DataFrame:
    """products (product_id, title[, category]); sids (product_id, sid_1..sid_L) -> one row per prefix:
    level, prefix, parent, products, category, category_share, terms, label."""
    cols = [f"sid_{i + 1}" for i in range(levels)]
    missing = [c for c in ("product_id", "title") if c not in products] + [c for c in ["product_id", *cols] if c not in sids]
    if missing:
        raise ValueError(f"labels need products(product_id, title) and sids(product_id, {', '.join(cols)}); missing {missing}")
    df = products.merge(sids[["product_id", *cols]], on="product_id", how="inner")
    if df.empty:
        raise ValueError("labels: no product has a SID")
    vocab: dict[str, int] = {}
    r, c = [], []
    for i, t in enumerate(df["title"]):
        for w in words(t):
            r.append(i)
            c.append(vocab.setdefault(w, len(vocab)))
    X = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(df), max(len(vocab), 1)))  # (N, V) binary
    names = np.array(list(vocab), dtype=object)
    cats = df["category"] if "category" in df and df["category"].notna().any() else None
    codes = df[cols].to_numpy()
    out, parent_df, parent_of, parent_terms = [], None, None, None
    for lvl in range(1, levels + 1):
        key, inv = np.unique(prefix(codes[:, :lvl]), return_inverse=True)  # (C,), (N,)
        G = sp.csr_matrix((np.ones(len(df), np.float32), (inv, np.arange(len(df)))), shape=(len(key), len(df)))  # (C, N)
        size = np.asarray(G.sum(1)).ravel()  # (C,)
        counts = (G @ X).tocoo()  # (C, V) products holding each word
        dfc = counts.data / size[counts.row]
        if lvl == 1:
            background = np.asarray(X.sum(0)).ravel() / len(df)  # (V,)
            dfp = background[counts.col]
        else:
            parent = parent_of[[k.rsplit("-", 1)[0] for k in key]].to_numpy()  # (C,) parent rows
            dfp = np.asarray(parent_df[parent[counts.row], counts.col]).ravel()
        score = dfc * np.log(dfc / dfp)
        score[(counts.data < 2) & (size[counts.row] >= 2)] = -np.inf
        order = np.lexsort((-score, counts.row))  # by cluster, best word first
        order = order[score[order] > 1e-9]
        rows = counts.row[order]
        first = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]  # each cluster's first entry
        rank = np.arange(len(rows)) - np.repeat(first, np.diff(np.r_[first, len(rows)]))
        best = order[rank < terms]
        top = pd.Series(names[counts.col[best]]).groupby(counts.row[best], sort=True).agg(", ".join)
        top = top.reindex(range(len(key)), fill_value="").to_numpy()
        if lvl > 1:  # a cluster no different from its parent (e.g. its only child) keeps the parent's terms
            top = np.where(top == "", parent_terms[parent], top)
        cat, share = dominant(cats, inv, len(key), min_share) if cats is not None else ([None] * len(key), [np.nan] * len(key))
        parents = [k.rsplit("-", 1)[0] if lvl > 1 else "" for k in key]
        out.append(pd.DataFrame({"level": lvl, "prefix": key, "parent": parents, "products": size.astype(np.int64),
                                 "category": cat, "category_share": share, "terms": top}))
        parent_of, parent_terms = pd.Series(np.arange(len(key)), index=key), top
        parent_df = sp.csr_matrix((dfc, (counts.row, counts.col)), shape=counts.shape)  # (C, V) df of each word
    res = pd.concat(out, ignore_index=True)
    res["label"] = [label(c, s, t) for c, s, t in zip(res["category"], res["category_share"], res["terms"])]
    return res


def dominant(cats: pd.Series, cluster: np.ndarray, n: int, min_share: float) -> tuple[list, np.ndarray]:
    """Per cluster, the deepest category path prefix held by >= min_share of its products (else the
    commonest root), and its share. cats (N,) paths joined by ' > '; cluster (N,) cluster rows."""
    parts = cats.fillna("").astype(str).str.split(" > ")
    depth = int(parts.str.len().max())
    best, share = [None] * n, np.zeros(n)
    for d in range(1, depth + 1):
        path = parts.map(lambda p, d=d: " > ".join(p[:d]) if len(p) >= d and p[0] else None)
        t = pd.DataFrame({"c": cluster, "path": path}).dropna()
        if t.empty:
            break
        counts = t.groupby(["c", "path"]).size().rename("k").reset_index()
        counts = counts.sort_values(["c", "k", "path"], ascending=[True, False, True]).drop_duplicates("c")
        totals = np.bincount(cluster, minlength=n)
        for c, p, k in zip(counts["c"], counts["path"], counts["k"]):
            s = k / totals[c]
            if s >= min_share or (d == 1 and best[c] is None):
                best[c], share[c] = p, s
    return best, np.where([b is None for b in best], np.nan, share)


def label(category: str | None, share: float, terms: str) -> str:
    """'Lawn Mowers 92% · self-propelled, mulching' (the category's leaf); the terms alone without one."""
    head = f"{category.split(' > ')[-1]} {share:.0%}" if isinstance(category, str) and category else ""
    return " · ".join(x for x in (head, terms) if x) or "(no label)"


def label_quality(labels: pd.DataFrame) -> dict[str, float]:
    """Per level, the product-weighted mean share of the label's category (NaN-free; {} without categories)."""
    if labels["category_share"].isna().all():
        return {}
    out = {}
    for lvl, g in labels.groupby("level"):
        ok = g["category_share"].notna()
        out[f"label_category_share@{lvl}"] = float(np.average(g.loc[ok, "category_share"], weights=g.loc[ok, "products"]))
    return out
