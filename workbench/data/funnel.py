"""The search log's funnel: impressions -> clicks -> purchases, overall or per group."""

from __future__ import annotations

import pandas as pd


def funnel(log: pd.DataFrame, by: str | list[str] | None = None) -> pd.DataFrame:
    """Sessions, impressions, clicks, purchases, CTR (clicks / impressions) and CVR (purchases / clicks).

    `by` groups the rows (e.g. "position", or "clickbait" after joining truth_products); without it
    the result has one row.
    """
    missing = {"session_id", "impressed", "clicked", "purchased", *([by] if isinstance(by, str) else by or [])} - set(log.columns)
    if missing:
        raise KeyError(f"search log lacks column(s) {sorted(missing)}")
    g = log.assign(_all="all").groupby(by or "_all", sort=True)
    out = g.agg(sessions=("session_id", "nunique"), impressions=("impressed", "sum"), clicks=("clicked", "sum"),
                purchases=("purchased", "sum"))
    out["ctr"] = out["clicks"] / out["impressions"].where(out["impressions"] > 0)
    out["cvr"] = out["purchases"] / out["clicks"].where(out["clicks"] > 0)
    return out.rename_axis(None if by is None else out.index.names)
