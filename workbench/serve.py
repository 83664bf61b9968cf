"""What the app serves, without Streamlit: search a workspace (generative and the baselines side by
side) and the tables behind each page. `app.py` only lays these out; everything here is tested
without a browser.

Errors a user can cause (no workspace, no generator, an empty query, an unknown user, bad SQL) are
`AppError`s with a message meant to be shown as it is; the app shows any other error of a page (a
corrupt file, a busy logbook) as `page_error` words it. Logbook reads wait at most
`logbook.INTERACTIVE` seconds for a process that holds the file, and recording a served query is
best-effort: a search is answered even when the logbook cannot take it (`Served.log_error` says why).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from workbench.logbook import INTERACTIVE
from workbench.sid.store import workspace_embedder
from workbench.workspace import Workspace


class AppError(ValueError):
    pass


def page_error(e: Exception) -> str:
    """What the app shows for an error that ended a page: an AppError as it is, anything else as
    `Type: message` (a corrupt generator or table, a garbage or busy logbook)."""
    return str(e) if isinstance(e, AppError) else f"{type(e).__name__}: {e}"


def open_workspace(path: str | Path) -> Workspace:
    ws = Workspace(Path(str(path).strip() or "."))
    if not ws.exists():
        raise AppError(f"no workspace at {ws.path}: build one with `workbench demo` (or pick another path)")
    if not (ws.path / "gen" / "generator.safetensors").exists():
        raise AppError(f"workspace {ws.path} has no trained generator yet: run `workbench train` (or `workbench demo`)")
    return ws


@dataclass
class Served:
    query: str
    user: str | None
    personalised: bool
    width: int
    latency_ms: float
    hits: list  # list[Hit], best SID first
    products: list[str]  # the channel's list: the decoded SIDs' products cut at the budget, ranked inside
    log_error: str | None = None  # why the search is not in the logbook's `served` table (busy, corrupt, read-only)

    def paths(self) -> pd.DataFrame:
        """One row per decoded SID: its path, probability, share of the beam's mass, products."""
        p = np.exp([h.logp for h in self.hits]) if self.hits else np.zeros(0)
        return pd.DataFrame({"sid": ["-".join(map(str, h.sid)) for h in self.hits], "probability": p,
                             "share": p / p.sum() if p.sum() > 0 else p, "products": [len(h.products) for h in self.hits]})

    def tree(self) -> pd.DataFrame:
        """The decoded paths as a tree, level by level: id, parent, label, probability (summed over the
        beams below each prefix), for a sunburst."""
        rows = {}
        for h in self.hits:
            for lvl in range(1, len(h.sid) + 1):
                node = "-".join(map(str, h.sid[:lvl]))
                parent = "-".join(map(str, h.sid[: lvl - 1]))
                r = rows.setdefault(node, {"id": node, "parent": parent, "label": str(h.sid[lvl - 1]), "level": lvl,
                                           "probability": 0.0})
                r["probability"] += float(np.exp(h.logp))
        return pd.DataFrame(list(rows.values()), columns=["id", "parent", "label", "level", "probability"])


class Engine:
    """A workspace loaded for serving: the generator's retriever, product titles, users, and (built on
    first use) BM25 and dense retrieval for the side-by-side comparison."""

    def __init__(self, ws: Workspace, device: str = "cpu", name: str = "generator", channel=None):
        from workbench.gen.retrieve import Channel, Retriever

        self.ws, self.device = ws, device
        self.retriever = Retriever.from_workspace(ws, name, device)
        self.channel = Channel.from_workspace(ws, channel, device)  # a ChannelConfig, or the default
        self.products = ws.table("products").set_index("product_id")
        self.personal = self.retriever.model.cfg.context_vocab > 0
        self.user_ids = ws.table("users")["user_id"].astype(str).tolist() if ws.has("users") else []
        self._bm25 = self._dense = None

    def search(self, query: str, width: int = 16, user: str | None = None, log: bool = True, source: str = "app") -> Served:
        query = (query or "").strip()
        if not query:
            raise AppError("type a query")
        if len(query) > 500:
            raise AppError(f"the query is {len(query)} characters long; keep it under 500")
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1024:
            raise AppError(f"beam width must be a whole number from 1 to 1024, got {width!r}")
        context, personalised = None, False
        if user and self.personal:
            context, known = self.retriever.user_context(self.ws, [user])
            personalised = bool(known[0])
        t = time.perf_counter()
        hits = self.retriever.search([query], width, context=context)[0]
        products = self.channel([query], [hits])[0]
        ms = (time.perf_counter() - t) * 1000
        served = Served(query, user or None, personalised, width, ms, hits, products)
        if log:
            try:  # best-effort: the answer does not depend on the logbook
                self.ws.logbook().serve(query, [{"sid": list(h.sid), "logp": h.logp, "products": h.products[:20]} for h in hits],
                                        ms, user_id=user or None, beam_width=width, source=source, timeout=INTERACTIVE)
            except (OSError, ValueError, duckdb.Error) as e:  # LogbookBusy, LogbookCorrupt, a read-only disk...
                served.log_error = f"{type(e).__name__}: {e}"
        return served

    def titles(self, ids: list[str]) -> pd.DataFrame:
        cols = [c for c in ("title", "category", "price") if c in self.products]
        return self.products.reindex(ids)[cols].reset_index().rename(columns={"index": "product_id"})

    def baselines(self, query: str, gen: list[str], k: int = 10, share: float = 0.3) -> dict[str, list[str]]:
        """Top k of BM25, dense, their hybrid (RRF), and the hybrid with generation as a supplement."""
        from workbench.baselines import BM25, Dense, rrf, supplement
        from workbench.embed import embed_workspace, get_embedder, product_texts

        ids = self.products.index.tolist()
        if self._bm25 is None:
            self._bm25 = BM25(ids, product_texts(self.products.reset_index()))
            order = self.channel.order  # the channel's cosine order already holds the embedder and product vectors
            e = order.embedder if order else get_embedder(workspace_embedder(self.ws), self.device)
            vecs = order.vectors if order else embed_workspace(self.ws, e, ("products",), progress=False)["products"]
            self._dense = Dense(ids, vecs, e, self.device)
        bm, de = self._bm25.search([query], k)[0], self._dense.search([query], k)[0]
        hy = rrf([[bm], [de]], k)[0]
        return {"bm25": bm, "dense": de, "hybrid": hy, "hybrid+gen": supplement([hy], [gen], k, share)[0]}


# the other pages' data --------------------------------------------------------------------------
def latest(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of each run name's latest run only (curves frames are ordered by start time)."""
    return df[df["run_id"].isin(df.groupby("run", sort=False)["run_id"].last())] if len(df) else df


def stage_curves(ws: Workspace) -> pd.DataFrame:
    """Per epoch of every generator stage: run, run_id, stage, step, metric, value (loss, recall@K, ...)."""
    return ws.logbook().query(
        "SELECT r.name AS run, r.run_id, m.stage, m.step, m.name AS metric, m.value FROM metrics m JOIN runs r USING (run_id) "
        "WHERE r.kind = 'gen-train' ORDER BY r.started_at, m.step", timeout=INTERACTIVE)


def rl_curves(ws: Workspace) -> pd.DataFrame:
    """Per step of every stage-4 run: run, run_id, stage, step, metric, value (rewards, diagnostics, hit rates)."""
    return ws.logbook().query(
        "SELECT r.name AS run, r.run_id, m.stage, m.step, m.name AS metric, m.value FROM metrics m JOIN runs r USING (run_id) "
        "WHERE r.kind = 'rl' ORDER BY r.started_at, m.step", timeout=INTERACTIVE)


def beam_sweep(ws: Workspace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The latest width sweep of each ID kind (width, batch, p50/p95 ms, recall) and the chosen widths."""
    sweep = ws.logbook().query(
        "SELECT b.bench, b.case_name, b.metric, b.value, b.run_id FROM bench b JOIN runs r USING (run_id) "
        "WHERE b.bench LIKE 'beam-sweep%' OR b.bench = 'beam-width-choice' ORDER BY r.started_at", timeout=INTERACTIVE)
    if sweep.empty:
        return pd.DataFrame(), pd.DataFrame()
    latest = sweep.groupby("bench")["run_id"].last()
    sweep = sweep[sweep["run_id"] == sweep["bench"].map(latest)]
    wide = sweep.pivot_table(index=["bench", "case_name"], columns="metric", values="value").reset_index()
    choice = wide[wide["bench"] == "beam-width-choice"]
    curves = wide[wide["bench"] != "beam-width-choice"].copy()
    curves["ids"] = curves["bench"].str.extract(r"\((\w+) IDs\)")[0]
    return curves, choice


PAPER_SHARES = {"exposures": 0.5025, "clicks": 0.5896, "purchases": 0.7263}  # the paper's online test: the generative channel's shares


def ab_results(ws: Workspace) -> tuple[pd.DataFrame, dict]:
    """The latest simulated A/B (`workbench ab`): one row per arm with every value and interval, and that
    run's name (which ranker ordered the pages)."""
    rows = ws.logbook().query(
        "SELECT b.case_name AS arm, b.metric, b.value, b.run_id, r.name FROM bench b JOIN runs r USING (run_id) "
        "WHERE b.bench = 'ab' AND r.kind = 'ab' ORDER BY r.started_at", timeout=INTERACTIVE)
    if rows.empty:
        return pd.DataFrame(), {}
    last = rows["run_id"].iloc[-1]
    rows = rows[rows["run_id"] == last]
    order = list(dict.fromkeys(rows["arm"]))
    wide = rows.pivot_table(index="arm", columns="metric", values="value").reindex(order).reset_index()
    return wide, {"run_id": last, "name": rows["name"].iloc[0]}


def codebook_points(ws: Workspace, n: int = 1000, seed: int = 0) -> pd.DataFrame:
    """A UMAP map of up to n products' embeddings with their codes and category (sampled, seeded)."""
    from workbench.embed import embed_workspace, get_embedder
    from workbench.sid.store import load_sids

    sids = load_sids(ws)
    products = ws.table("products")
    vecs = embed_workspace(ws, get_embedder(workspace_embedder(ws)), ("products",), progress=False)["products"]
    idx = np.sort(np.random.default_rng(seed).choice(len(products), min(n, len(products)), replace=False))
    df = products.iloc[idx][["product_id", "title", "category"]].merge(sids, on="product_id", how="left")
    xy = umap_2d(vecs[idx], seed)
    df["x"], df["y"] = xy[:, 0], xy[:, 1]
    df["top_category"] = df["category"].fillna("").str.split(" > ").str[0]
    return df


def umap_2d(x: np.ndarray, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """(N, D) vectors -> (N, 2) UMAP map (seeded and single-threaded, so a rerun draws the same map)."""
    import umap

    return umap.UMAP(n_neighbors=min(n_neighbors, len(x) - 1), random_state=seed, n_jobs=1).fit_transform(x)


def run_sql(ws: Workspace, sql: str, max_rows: int = 1000) -> tuple[pd.DataFrame, bool]:
    """Read-only SQL over the logbook (no writes, no files, no network): its first `max_rows` rows,
    only those fetched, and whether the query had more."""
    sql = (sql or "").strip()
    if not sql:
        raise AppError("type a SQL query, e.g. SELECT * FROM runs")
    try:
        return ws.logbook().head(sql, max_rows, safe=True, timeout=INTERACTIVE)
    except FileNotFoundError as e:
        raise AppError(str(e)) from e
    except (duckdb.Error, ValueError) as e:  # bad SQL, a garbage logbook: the message, not a traceback
        raise AppError(f"{type(e).__name__}: {e}") from e
