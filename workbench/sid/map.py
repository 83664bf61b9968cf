"""A 2-D map of the catalog for the Codebooks page, computed once per SID table.

UMAP (McInnes et al. 2018, the `umap-learn` package) of the product embeddings the SIDs were trained
on, for a seeded sample of up to `points` products. `workbench sid map` (and the demo build) stores it
as `sid/map.parquet` (product_id, x, y) with the SID table's fingerprint, so the app reads a stored map
instead of fitting UMAP on every visit, and a map of other SIDs is refused as stale.

Invariants: rows are the sample in its seeded random order, so the first n rows are themselves a
uniform sample of n products (the page's "products on the map" slider takes a head); the same
embeddings, points and seed give the same map (UMAP seeded and single-threaded).
"""

from __future__ import annotations

import numpy as np

POINTS = 3000  # products on the stored map


def sample(n_products: int, points: int = POINTS, seed: int = 0) -> np.ndarray:
    """Up to `points` distinct product rows in a seeded random order."""
    if points < 3:
        raise ValueError(f"a map needs at least 3 points, got {points}")
    return np.random.default_rng(seed).permutation(n_products)[:points]


def umap_2d(x: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """(N, D) vectors -> (N, 2) UMAP map (seeded and single-threaded, so a rerun draws the same map)."""
    import umap

    if len(x) < 3:
        raise ValueError(f"UMAP needs at least 3 products, got {len(x)}")
    return umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed, n_jobs=1).fit_transform(x)
