"""The headroom of personalisation on a synthetic marketplace: how much of what sells is user-specific.

Two oracles order the same candidates into pages (`Market.value`):

    oracle        knows the session's intent and its user (favourite brands, price sensitivity)
    oracle-query  knows the intent only: P(click) and P(click x buy) averaged over users drawn as
                  sessions draw them

Both see the true relevance, quality and attractiveness of every product, so the difference between
their pages' expected purchases is what knowing the user is worth on that candidate set, and no more:
the ceiling a personalised model is judged against. It is reported for every session and by the
user's activity before the session (the log's clicks and purchases strictly before it: cold 0, warm
1 .. heavy - 1, heavy at least `cfg.heavy`), per candidate set (control's legacy recall and each arm's),
with the A/B's paired query-clustered intervals (`ab.summarise`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from workbench.data.market import Market
from workbench.eval.ab import SEGMENTS, Pager, activity, recall_sets, replayed, summarise
from workbench.eval.config import ABConfig

LOGGED = ("sessions", "purchases_query", "purchases_user", "gmv_query", "gmv_user",
          *(f"d_{k}{s}" for k in ("purchases", "gmv") for s in ("", "_lo", "_hi")))  # each row's figures in the logbook


def headroom(ws, cfg: ABConfig | None = None, device: str = "cpu", run=None, echo=print) -> pd.DataFrame:
    """One row per (candidate set, segment): sessions, purchases and GMV per session of the query-only
    oracle's pages and of the user-aware oracle's, and the user's worth `d_purchases` / `d_gmv` in % with
    95% paired intervals; each row to `run`'s bench table (bench `headroom`) when given."""
    cfg = cfg or ABConfig()
    market = Market.from_workspace(ws)
    sessions = replayed(ws, market, cfg.split)
    seg = activity(ws, market, sessions, cfg.heavy)
    judges = {r: Pager(ws, market, sessions, replace(cfg, ranker=r), device) for r in ("oracle-query", "oracle")}
    rows = []
    for arm, _, cands in recall_sets(ws, market, sessions, cfg, device, echo):
        pages = {r: p.page(cands, p.scores(cands)) for r, p in judges.items()}
        for name in SEGMENTS:
            m = np.ones(len(sessions), bool) if name == "all" else seg == name
            if m.sum() < 2 or len(np.unique(market.sess["qid"][sessions[m]])) < 2:
                continue  # no interval over fewer than two queries
            df = summarise(market, sessions[m], {r: p[m] for r, p in pages.items()},
                           {r: np.zeros(p[m].shape, bool) for r, p in pages.items()}, replace(cfg, aa_splits=0),
                           baseline="oracle-query").set_index("arm")
            q, u = df.loc["oracle-query"], df.loc["oracle"]
            rows.append({"recall_set": arm, "segment": name, "sessions": int(m.sum()),
                         "purchases_query": q["purchases"], "purchases_user": u["purchases"],
                         "gmv_query": q["gmv"], "gmv_user": u["gmv"],
                         **{f"d_{k}{s}": u[f"d_{k}{s}"] for k in ("purchases", "gmv") for s in ("", "_lo", "_hi")}})
    df = pd.DataFrame(rows)
    if run is not None:
        for r in rows:
            for k in LOGGED:
                run.log_bench("headroom", k, float(r[k]), case_name=f"{r['recall_set']} {r['segment']}")
    return df


def table(df: pd.DataFrame) -> str:
    """The headroom table as text: purchases per session of both oracles, the user's worth in % with its interval."""
    out = pd.DataFrame({"recall set": df["recall_set"], "users": df["segment"], "sessions": df["sessions"],
                        "purchases, query oracle": df["purchases_query"].map("{:.4f}".format),
                        "purchases, user oracle": df["purchases_user"].map("{:.4f}".format),
                        "user's worth %": [f"{r.d_purchases:+.2f} [{r.d_purchases_lo:+.2f}, {r.d_purchases_hi:+.2f}]" for r in df.itertuples()],
                        "GMV %": [f"{r.d_gmv:+.2f} [{r.d_gmv_lo:+.2f}, {r.d_gmv_hi:+.2f}]" for r in df.itertuples()]})
    return out.to_string(index=False)
