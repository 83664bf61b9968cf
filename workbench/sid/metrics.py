"""How good a set of semantic IDs is: pure functions of a codes array (N, L) and labels.

- `usage`: per level, the share of the level's K codes in use and the perplexity of their distribution
  (K when uniform, 1 when every product has the same code).
- `cluster_sizes`: how many products share each full SID (max, median, p99), the unique rate
  (distinct SIDs / products) and the collision rate (share of products whose SID another product has).
- `category_purity`: for every prefix of length l, the share of its products in its majority
  category (categories cut at a depth: 1 = department, 2 = ..., None = full path), averaged over
  products; with the number of prefixes, since purity alone rewards many tiny clusters.
- `query_coherence`: for every query with at least two relevant products, the share of them under
  their most common prefix of length l, averaged over queries (1.0: all of them in one cluster).
- `answer_reach`: of a held-out split's (query, relevant product) pairs, the share whose product is
  relevant to some training query (`product`) and whose full SID is the SID of such a product (`sid`).
  A generator learns query -> SID from the training queries: an answer outside both is one it can
  reach only through what its text encoder carries, which is what a dense channel already has.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def prefix_ids(codes: np.ndarray, level: int) -> np.ndarray:
    """(N, L) codes -> (N,) integer id of each row's prefix of length `level` (dense, 0..P-1, in sorted order)."""
    key = np.zeros(len(codes), np.int64)
    for j in range(level):  # mixed-radix number of the prefix (fits int64 for any realistic L and K)
        key = key * (int(codes[:, j].max(initial=0)) + 1) + codes[:, j]
    return np.unique(key, return_inverse=True)[1].reshape(-1)


def usage(codes: np.ndarray, sizes: tuple[int, ...]) -> list[dict]:
    out = []
    for lvl in range(codes.shape[1]):
        counts = np.bincount(codes[:, lvl], minlength=sizes[lvl])
        p = counts[counts > 0] / counts.sum()
        out.append({"level": lvl + 1, "used": int((counts > 0).sum()), "used_share": float((counts > 0).mean()),
                    "perplexity": float(np.exp(-(p * np.log(p)).sum()))})
    return out


def cluster_sizes(codes: np.ndarray) -> dict:
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    per_product = counts[inv.reshape(-1)]
    return {"products": len(codes), "sids": len(counts), "unique_rate": len(counts) / max(len(codes), 1),
            "collision_rate": float((per_product > 1).mean()), "size_max": int(counts.max()),
            "size_median": float(np.median(counts)), "size_p99": float(np.percentile(counts, 99)),
            "size_mean": float(counts.mean())}


def cut_category(category: pd.Series, depth: int | None) -> pd.Series:
    """Category paths ('A > B > C') cut to their first `depth` levels (None keeps the full path)."""
    parts = category.str.split(" > ")
    return category if depth is None else parts.str[:depth].str.join(" > ")


def category_purity(codes: np.ndarray, category: pd.Series, depths: tuple[int | None, ...] = (1, 2, None)) -> list[dict]:
    """Purity of every prefix length against categories cut at each depth (products without one are skipped)."""
    has = category.notna().to_numpy()
    if not has.any():
        return []
    out = []
    for depth in depths:
        cat = pd.factorize(cut_category(category[has].reset_index(drop=True), depth))[0]
        ncat = int(cat.max()) + 1
        for lvl in range(1, codes.shape[1] + 1):
            pre = prefix_ids(codes[has], lvl)
            keys, counts = np.unique(pre.astype(np.int64) * ncat + cat, return_counts=True)  # (prefix, category) cells
            starts = np.r_[0, np.flatnonzero(np.diff(keys // ncat)) + 1]  # first cell of each prefix
            majority = np.maximum.reduceat(counts, starts)
            out.append({"level": lvl, "depth": "full" if depth is None else depth, "purity": float(majority.sum() / has.sum()),
                        "prefixes": len(starts), "categories": ncat})
    return out


def query_coherence(codes: np.ndarray, pairs: pd.DataFrame) -> list[dict]:
    """`pairs` has columns query (any id) and product (row index into codes), relevant pairs only."""
    pairs = pairs.drop_duplicates(["query", "product"])
    n = pairs.groupby("query")["product"].transform("size")
    pairs = pairs[n >= 2]
    if pairs.empty:
        return []
    out = []
    for lvl in range(1, codes.shape[1] + 1):
        pre = prefix_ids(codes, lvl)[pairs["product"].to_numpy()]
        top = pd.DataFrame({"q": pairs["query"].to_numpy(), "p": pre}).groupby(["q", "p"]).size()
        per_q = top.groupby(level=0).max() / top.groupby(level=0).sum()
        out.append({"level": lvl, "coherence": float(per_q.mean()), "queries": len(per_q)})
    return out


def answer_reach(codes: np.ndarray, train_products: np.ndarray, held_products: np.ndarray) -> dict:
    """(N, L) codes of the catalog, rows of the products relevant to training queries, and rows of the
    held-out split's relevant pairs' products (one per pair, repeats kept) -> {"pairs", "product", "sid"}."""
    if len(held_products) == 0:
        return {"pairs": 0, "product": float("nan"), "sid": float("nan")}
    taught = np.zeros(len(codes), bool)
    taught[train_products] = True
    ids = prefix_ids(codes, codes.shape[1])  # (N,) one id per full SID
    sid_taught = np.isin(ids, ids[taught])
    return {"pairs": int(len(held_products)), "product": float(taught[held_products].mean()),
            "sid": float(sid_taught[held_products].mean())}
