"""What each page of the app shows, without Streamlit: the overview, the training curves, the width sweep
and the width served, the load benchmark, the simulated A/B, the codebook map and the read-only SQL
console. `app.py` only lays these out; everything here is tested without a browser.

The app shows an `AppError` (`workbench.engine`) as it is and any other error of a page (a corrupt file,
a busy logbook) as `page_error` words it. Logbook reads wait at most `logbook.INTERACTIVE` seconds for a
process that holds the file.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from workbench.checkpoint import metadata
from workbench.embed import get_embedder
from workbench.engine import AppError, generators
from workbench.gen.data import eval_set
from workbench.gen.store import checkpoint_path
from workbench.lineage import StaleError
from workbench.logbook import INTERACTIVE
from workbench.sid.labels import label_quality, prefix
from workbench.sid.store import load_labels, load_map, load_sids, workspace_embedder, write_map
from workbench.workspace import Workspace

WARMUPS: dict[str, threading.Thread] = {}  # the app's background warm-ups (app.prewarm), by workspace path


def page_error(e: Exception) -> str:
    """What the app shows for an error that ended a page: an AppError as it is, anything else as
    `Type: message` (a corrupt generator or table, a garbage or busy logbook)."""
    return str(e) if isinstance(e, AppError) else f"{type(e).__name__}: {e}"


# the overview (landing page) --------------------------------------------------------------------
@dataclass
class Overview:
    facts: pd.DataFrame  # what, value: catalog, users, log, SIDs, label quality
    models: pd.DataFrame  # the generators in gen/: model, stage, trained (time), size_mib
    evaluation: pd.DataFrame  # the latest `workbench eval` (method x metric), else the stages' validation figures
    evaluation_source: str  # which of the two, in words
    runs: pd.DataFrame  # the last runs: kind, name, status, started_at
    examples: list[str]  # test queries to try (never trained on)


def overview(ws: Workspace, examples: int = 8, seed: int = 0) -> Overview:
    """What the workspace holds, for the landing page."""
    products = ws.table("products")
    facts = [("products", f"{len(products):,}")]
    if products["category"].notna().any():
        facts.append(("categories (leaves)", f"{products['category'].nunique():,}"))
    for table, what in (("users", "users"), ("queries", "queries"), ("search_log", "logged impressions"), ("judgments", "judged pairs")):
        if ws.has(table):  # the row count from the file's footer: the table itself is not read
            facts.append((what, f"{pq.ParquetFile(ws.table_path(table)).metadata.num_rows:,}"))
    sids = load_sids(ws)
    levels = [c for c in sids.columns if c.startswith("sid_")]
    sizes = sids.groupby(levels).size()
    facts += [("SIDs", f"{len(sizes):,} of {len(levels)} levels ({', '.join(str(sids[c].nunique()) for c in levels)} codes used)"),
              ("products per SID", f"median {sizes.median():g}, max {sizes.max():,}")]
    quality = label_quality(load_labels(ws).reset_index())
    if quality:
        facts.append(("cluster labels' category share", ", ".join(f"level {k.split('@')[1]} {v:.0%}" for k, v in quality.items())))
    models = []
    for name in generators(ws):
        path = checkpoint_path(ws, name)
        models.append({"model": name, "stage": str(metadata(path).get("stage", "")).strip('"'),
                       "trained": pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC").floor("s"),
                       "size_mib": round(path.stat().st_size / 2**20, 1)})
    book = ws.logbook()
    ev = book.query(
        "SELECT e.method, e.metric || coalesce('@' || e.k, '') AS metric, e.value FROM evals e "
        "WHERE e.run_id = (SELECT e2.run_id FROM evals e2 JOIN runs r USING (run_id) WHERE r.kind = 'eval' "
        "ORDER BY e2.time DESC LIMIT 1)", timeout=INTERACTIVE)
    source = "the latest `workbench eval`"
    if ev.empty:
        ev = book.query(
            "SELECT stage AS method, metric || coalesce('@' || k, '') AS metric, value FROM (SELECT e.*, row_number() "
            "OVER (PARTITION BY e.stage, e.metric, e.k ORDER BY e.time DESC) AS latest FROM evals e JOIN runs r USING (run_id) "
            "WHERE r.kind = 'gen-train') WHERE latest = 1 ORDER BY stage", timeout=INTERACTIVE)
        source = "each generator stage's last validation evaluation (`workbench eval` adds the baselines)"
    table = ev.pivot_table(index="method", columns="metric", values="value", sort=False).reset_index() if len(ev) else ev
    runs = book.query("SELECT kind, name, status, started_at FROM runs ORDER BY started_at DESC LIMIT 8", timeout=INTERACTIVE)
    try:
        held = eval_set(ws, "test")["query"].drop_duplicates()
        picks = held.sample(min(examples, len(held)), random_state=seed).tolist()
    except ValueError:  # no test queries with relevant products
        picks = []
    return Overview(pd.DataFrame(facts, columns=["what", "value"]), pd.DataFrame(models), table, source, runs, picks)


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
    """The latest width sweep of each ID kind: one row per (ids, batch, width) with p50/p95 ms, queries/s,
    Recall@K and products (integer widths and batch sizes, no empty columns); and the chosen width of
    each ID kind (ids, width, recall, widest, widest_recall, batch, latency_saving, throughput_gain, k,
    tolerance; see `workbench.eval.width.pick_width`)."""
    sweep = ws.logbook().query(
        "SELECT b.bench, b.case_name, b.metric, b.value, b.run_id FROM bench b JOIN runs r USING (run_id) "
        "WHERE b.bench LIKE 'beam-sweep%' OR b.bench = 'beam-width-choice' ORDER BY r.started_at", timeout=INTERACTIVE)
    if sweep.empty:
        return pd.DataFrame(), pd.DataFrame()
    latest = sweep.groupby("bench")["run_id"].last()
    sweep = sweep[sweep["run_id"] == sweep["bench"].map(latest)]
    wide = sweep.pivot_table(index=["bench", "case_name"], columns="metric", values="value").reset_index()
    choice = wide[wide["bench"] == "beam-width-choice"].dropna(axis=1, how="all").rename(columns={"case_name": "ids"})
    curves = wide[wide["bench"] != "beam-width-choice"].dropna(axis=1, how="all").copy()
    curves["ids"] = curves["bench"].str.extract(r"\((\w+) IDs\)")[0]
    for df, cols in ((curves, ("width", "batch")), (choice, ("width", "widest", "batch", "k", "width_for_target"))):
        for c in cols:
            if c in df and df[c].notna().all():
                df[c] = df[c].astype(int)
    return (curves.drop(columns=["bench", "case_name"]).sort_values(["ids", "batch", "width"]).reset_index(drop=True),
            choice.drop(columns=["bench"]).reset_index(drop=True))


def serve_load(ws: Workspace) -> tuple[pd.DataFrame, dict]:
    """The latest `workbench bench serve`: one row per load point (case, channel, width, max_batch,
    users, queries_per_s, p50/p95/p99_ms, failures) and its run's parameters."""
    rows = ws.logbook().query(
        "SELECT b.case_name, b.metric, b.value, b.params, b.run_id FROM bench b JOIN runs r USING (run_id) "
        "WHERE b.bench = 'serve-load' ORDER BY r.started_at", timeout=INTERACTIVE)
    if rows.empty:
        return pd.DataFrame(), {}
    rows = rows[rows["run_id"] == rows["run_id"].iloc[-1]]
    wide = rows.pivot_table(index="case_name", columns="metric", values="value").reset_index().rename(columns={"case_name": "case"})
    wide["channel"] = wide["case"].str.split().str[0]
    wide["batching"] = np.where(wide["max_batch"] > 1, "dynamic batching", "one at a time")
    for c in ("max_batch", "users", "requests", "failures"):
        wide[c] = wide[c].astype(int)
    params = json.loads(rows["params"].iloc[0]) if isinstance(rows["params"].iloc[0], str) else {}
    return wide.sort_values(["channel", "width", "max_batch", "users"], na_position="first").reset_index(drop=True), params


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
    rows = rows[(rows["run_id"] == last) & ~rows["arm"].str.endswith(" users)")]  # every session's rows, not `--by-activity`'s segments
    order = list(dict.fromkeys(rows["arm"]))
    wide = rows.pivot_table(index="arm", columns="metric", values="value").reindex(order).reset_index()
    return wide, {"run_id": last, "name": rows["name"].iloc[0]}


def codebook_points(ws: Workspace, n: int = 1000) -> pd.DataFrame:
    """The first n products of the stored map (`workbench sid map`) with their codes, cluster labels and
    category. AppError when the workspace has no map of its current SIDs (`draw_map` draws one)."""

    sids = load_sids(ws)
    try:
        pts = load_map(ws).head(n)
    except (FileNotFoundError, StaleError) as e:
        why = "no map yet" if isinstance(e, FileNotFoundError) else "its map is of older SIDs"
        raise AppError(f"workspace {ws.path}: {why}. Draw it with `workbench sid map` (22 s for 3,000 products on 2 cores here), "
                       "or with the button below") from e
    products = ws.table("products")[["product_id", "title", "category"]]
    df = pts.merge(products, on="product_id").merge(sids, on="product_id", how="left")
    labels = load_labels(ws)["label"]
    levels = [c for c in df.columns if c.startswith("sid_")]
    df["cluster"] = prefix(df[levels].to_numpy())
    df["label"] = df["cluster"].map(labels)
    df["label_1"] = df["sid_1"].astype(str).map(labels)
    df["top_category"] = df["category"].fillna("").str.split(" > ").str[0]
    return df


def draw_map(ws: Workspace, device: str = "cpu") -> int:
    """Draw and store the Codebooks map (what `workbench sid map` does); the number of products on it."""

    return len(write_map(ws, get_embedder(workspace_embedder(ws), device), progress=False))


SQL_EXAMPLES = {  # the SQL console's starting points, one per logbook table
    "latest runs": ("SELECT kind, name, status, started_at, round(epoch(ended_at) - epoch(started_at), 1) AS seconds "
                    "FROM runs ORDER BY started_at DESC LIMIT 20"),
    "test-split evaluation (latest run)": (
        "SELECT method, metric, k, round(value, 4) AS value FROM evals WHERE run_id = (SELECT run_id FROM evals "
        "WHERE dataset LIKE '% test queries' ORDER BY time DESC LIMIT 1) ORDER BY metric, k, value DESC"),
    "generator training curves": (
        "SELECT r.name AS run, m.stage, m.step, m.value AS recall_at_50 FROM metrics m JOIN runs r USING (run_id) "
        "WHERE r.kind = 'gen-train' AND m.name = 'recall@50' ORDER BY r.started_at, m.step"),
    "stage 4 rewards": (
        "SELECT r.name AS run, m.step, m.value AS reward FROM metrics m JOIN runs r USING (run_id) "
        "WHERE r.kind = 'rl' AND m.name = 'reward' ORDER BY r.started_at, m.step"),
    "benchmarks (latest 50 rows)": "SELECT bench, case_name, metric, value, unit, device FROM bench ORDER BY time DESC LIMIT 50",
    "served queries per minute": (
        "SELECT date_trunc('minute', time) AS minute, count(*) AS queries, round(median(latency_ms), 1) AS p50_ms, "
        "round(quantile_cont(latency_ms, 0.95), 1) AS p95_ms FROM served GROUP BY 1 ORDER BY 1"),
}


def logbook_schema(ws: Workspace) -> pd.DataFrame:
    """The logbook's tables and their columns with types (table, column, type), for the SQL console."""
    return ws.logbook().query(
        "SELECT table_name AS \"table\", column_name AS \"column\", data_type AS type FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position", timeout=INTERACTIVE)


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
