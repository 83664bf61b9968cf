"""The search log's funnel: impressions -> clicks -> purchases, overall or per group."""

from __future__ import annotations

import numpy as np
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


def engagements_before(log: pd.DataFrame, user_ids, times) -> np.ndarray:
    """Per (user, time) pair: how many rows of the log the user clicked or bought strictly before that
    time (a session's own clicks share its time, so they never count for it). Unknown users: 0."""
    ev = log.loc[log["clicked"] | log["purchased"], ["user_id", "time"]]
    t = pd.to_datetime(ev["time"], utc=True).to_numpy("datetime64[ns]")
    key = ev["user_id"].astype(str).to_numpy(dtype=str)
    order = np.lexsort((t, key))
    key, t = key[order], t[order]
    want_t = pd.to_datetime(pd.Series(times), utc=True).to_numpy("datetime64[ns]")
    want = np.array([str(u) for u in user_ids], dtype=str)
    lo, hi = np.searchsorted(key, want, "left"), np.searchsorted(key, want, "right")
    return np.array([np.searchsorted(t[a:b], w, "left") for a, b, w in zip(lo, hi, want_t)], np.int64)
