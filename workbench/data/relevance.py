"""Which products are relevant to which query (which queries train, choose and report is
`workbench.data.splits`).

    relevance(ws)          (query_id, product_id, weight): purchases 2, clicks 1, relevant judgments 1, summed

A judgment counts as relevant at the workspace's `relevance_threshold` (meta) or, without one, at the
highest grade in the table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WEIGHTS = {"purchased": 2.0, "clicked": 1.0, "judged": 1.0}
SOURCES = tuple(WEIGHTS)


def relevance(ws, sources: tuple[str, ...] = SOURCES, weights: dict[str, float] | None = None) -> pd.DataFrame:
    """(query_id, product_id, weight) of every positive pair; `weights` overrides WEIGHTS per source."""
    unknown = set(sources) - set(SOURCES) | set(weights or {}) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown relevance sources {sorted(unknown)}; choose from {SOURCES}")
    w_of = {**WEIGHTS, **(weights or {})}
    parts = []
    if ws.has("search_log") and {"clicked", "purchased"} & set(sources):
        log = ws.table("search_log")
        log = log[log["clicked"] | log["purchased"]]
        w = np.where(log["purchased"], w_of["purchased"] if "purchased" in sources else 0.0,
                     w_of["clicked"] if "clicked" in sources else 0.0)
        parts.append(pd.DataFrame({"query_id": log["query_id"], "product_id": log["product_id"], "weight": w}))
    if ws.has("judgments") and "judged" in sources:
        j = judged(ws)
        parts.append(pd.DataFrame({"query_id": j["query_id"], "product_id": j["product_id"], "weight": w_of["judged"]}))
    if not parts:
        return pd.DataFrame({"query_id": pd.Series(dtype=object), "product_id": pd.Series(dtype=str), "weight": pd.Series(dtype=float)})
    df = pd.concat(parts).groupby(["query_id", "product_id"], as_index=False)["weight"].sum()
    return df[df["weight"] > 0].reset_index(drop=True)


def threshold(ws, grades: pd.Series) -> float:
    """The grade at which a judgment counts as relevant: the workspace's, or the highest in `grades`."""
    thr = ws.meta.get("relevance_threshold")
    return float(thr if thr is not None else grades.max())


def judged(ws) -> pd.DataFrame:
    """The workspace's judgments at or above the relevance threshold (query_id, product_id, relevance)."""
    j = ws.table("judgments")
    return j[j["relevance"] >= threshold(ws, j["relevance"])]
