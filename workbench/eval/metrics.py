"""Retrieval metrics over ranked product lists: pure functions, one number per query, then the mean.

    recall_at_k(retrieved, relevant, k)   share of a query's relevant products in its first k
    hit_at_k(retrieved, relevant, k)      1 if any relevant product is in the first k
"""

from __future__ import annotations

import numpy as np


def _check(retrieved, relevant, k: int) -> None:
    if len(retrieved) != len(relevant):
        raise ValueError(f"{len(retrieved)} retrieved lists for {len(relevant)} queries")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def recall_per_query(retrieved: list[list], relevant: list[list], k: int) -> np.ndarray:
    _check(retrieved, relevant, k)
    out = np.full(len(relevant), np.nan)
    for i, (got, rel) in enumerate(zip(retrieved, relevant)):
        rel = set(rel)
        if rel:
            out[i] = len(rel.intersection(got[:k])) / len(rel)
    return out


def recall_at_k(retrieved: list[list], relevant: list[list], k: int) -> float:
    """Mean over queries with at least one relevant product."""
    r = recall_per_query(retrieved, relevant, k)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def hit_at_k(retrieved: list[list], relevant: list[list], k: int) -> float:
    _check(retrieved, relevant, k)
    hits = [bool(set(rel).intersection(got[:k])) for got, rel in zip(retrieved, relevant) if rel]
    return float(np.mean(hits)) if hits else float("nan")
