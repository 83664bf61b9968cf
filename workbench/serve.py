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

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from workbench.gen.retrieve import ChannelConfig
from workbench.logbook import INTERACTIVE
from workbench.sid.store import load_labels, workspace_embedder
from workbench.workspace import Workspace

MAX_QUERY = 500  # characters of a query, in the app and the HTTP endpoint
MAX_WIDTH = 1024  # the widest beam a search may ask for
WARMUPS: dict[str, threading.Thread] = {}  # the app's background warm-ups (app.prewarm), by workspace path


CHANNELS = ("generative", "bm25", "dense")
MAX_K = 1000  # products one HTTP request may ask for


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP service of the recall channels (`workbench serve`, `workbench.api`)."""

    channels: tuple[str, ...] = CHANNELS  # which endpoints to serve
    max_batch: int = 32  # requests one decode may take (1: no dynamic batching)
    batch_wait_ms: float = 5.0  # how long a worker waits for a batch to fill
    workers: int = 1  # worker processes per channel and device
    api_servers: int = 1  # uvicorn processes in front of the workers
    bm25_backend: str = "numba"  # bm25s scorer: numba (compiled) or numpy (the evaluation's: ties in its order)
    threads: int = 0  # torch threads per worker (0: the machine's cores shared equally among the workers)
    accelerator: str = "cpu"  # where the workers run: cpu, cuda (every GPU) or auto
    max_body: int = 16_384  # bytes of a request body
    flush_s: float = 0.5  # the logger writes its rows at least this often
    flush_rows: int = 512  # ... or as soon as it holds this many
    log: bool = True  # record served queries in the logbook
    name: str = "generator"  # the generator checkpoint (gen/<name>.safetensors)
    query_dtype: str = ChannelConfig.query_dtype  # generative and dense: the query encoder computes in this (bfloat16: see README)

    def __post_init__(self):
        from workbench.embed import check_dtype

        check_dtype(self.query_dtype)
        bad = set(self.channels) - set(CHANNELS)
        if not self.channels or bad:
            raise ValueError(f"channels must be some of {CHANNELS}, got {self.channels}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        for f in ("max_batch", "workers", "api_servers", "max_body", "flush_rows"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.batch_wait_ms < 0 or self.flush_s <= 0:
            raise ValueError(f"batch_wait_ms must be >= 0 and flush_s > 0, got {self.batch_wait_ms}, {self.flush_s}")
        if self.bm25_backend not in ("numba", "numpy"):
            raise ValueError(f"bm25_backend must be numba or numpy, got {self.bm25_backend!r}")
        if self.accelerator not in ("cpu", "cuda", "auto"):
            raise ValueError(f"accelerator must be cpu, cuda or auto, got {self.accelerator!r}")




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
    labels: pd.Series | None = None  # SID prefix ("49", "49-0", "49-0-4") -> its cluster label (`workbench.sid.labels`)
    scores: np.ndarray | None = None  # the channel's score of each product (cosine order: cos + w x log P(SID))

    def results(self, products: int = 20) -> list[dict]:
        """The decoded SIDs as the logbook's `served.results` holds them: sid, logp, first products."""
        return [{"sid": list(h.sid), "logp": h.logp, "products": list(h.products[:products])} for h in self.hits]

    def label(self, prefix: str) -> str:
        return "" if self.labels is None else str(self.labels.get(prefix, ""))

    def sids(self) -> list[str]:
        """The decoded SIDs as paths ("49-0-4"), best first: the labels' keys."""
        return ["-".join(map(str, h.sid)) for h in self.hits]

    def paths(self) -> pd.DataFrame:
        """One row per decoded SID: its path, label, probability, share of the beam's mass, products."""
        p = np.exp([h.logp for h in self.hits]) if self.hits else np.zeros(0)
        sids = self.sids()
        return pd.DataFrame({"sid": sids, "label": [self.label(s) for s in sids], "probability": p,
                             "share": p / p.sum() if p.sum() > 0 else p, "products": [len(h.products) for h in self.hits]})

    def tree(self) -> pd.DataFrame:
        """The decoded paths as a tree, level by level: id, parent, label (the code and the cluster's
        category or first terms), description (the whole cluster label), probability (summed over the
        beams below each prefix), for a sunburst."""
        rows = {}
        for h in self.hits:
            for lvl in range(1, len(h.sid) + 1):
                node = "-".join(map(str, h.sid[:lvl]))
                parent = "-".join(map(str, h.sid[: lvl - 1]))
                full = self.label(node)
                short = full.split(" · ")[0].rsplit(" ", 1)[0] if " · " in full else full.split(", ")[0]
                r = rows.setdefault(node, {"id": node, "parent": parent, "label": f"{h.sid[lvl - 1]} {short}".strip(),
                                           "description": full, "level": lvl, "probability": 0.0})
                r["probability"] += float(np.exp(h.logp))
        return pd.DataFrame(list(rows.values()), columns=["id", "parent", "label", "description", "level", "probability"])


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
        self.labels = load_labels(ws)["label"]
        self._bm25 = self._dense = None
        self._index_lock = threading.Lock()  # the app may warm the indexes in a thread while a query needs them

    def warm(self) -> None:
        """Load what a first search would otherwise wait for: the query embedder (the first import of
        sentence-transformers takes seconds) and the baselines' BM25 and dense indexes."""
        self.baselines("warm", [], k=1)

    def search(self, query: str, width: int = 16, user: str | None = None, log: bool = True, source: str = "app") -> Served:
        served = self.search_many([query], width, [user])[0]
        if log:
            try:  # best-effort: the answer does not depend on the logbook
                self.ws.logbook().serve(served.query, served.results(), served.latency_ms, user_id=user or None, beam_width=width,
                                        source=source, timeout=INTERACTIVE)
            except (OSError, ValueError, duckdb.Error) as e:  # LogbookBusy, LogbookCorrupt, a read-only disk...
                served.log_error = f"{type(e).__name__}: {e}"
        return served

    def search_many(self, queries: list[str], width: int = 16, users: list[str | None] | None = None) -> list[Served]:
        """Several queries at one beam width in one batched decode (the HTTP endpoint's dynamic batches);
        each answer is the one `search` gives the query alone. `users[i]` personalises query i where the
        generator was trained with users (unknown ids decode anonymously: `personalised` is False).
        `latency_ms` is the batch's time. Not logged: the caller logs."""
        users = list(users) if users is not None else [None] * len(queries)
        if len(users) != len(queries):
            raise ValueError(f"{len(queries)} queries for {len(users)} users")
        queries = [(q or "").strip() for q in queries]
        for q in queries:
            if not q:
                raise AppError("type a query")
            if len(q) > MAX_QUERY:
                raise AppError(f"the query is {len(q)} characters long; keep it under {MAX_QUERY}")
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
            raise AppError(f"beam width must be a whole number from 1 to {MAX_WIDTH}, got {width!r}")
        context, known = None, np.zeros(len(queries), bool)
        if self.personal and any(users):
            context, known = self.retriever.user_context(self.ws, [u or "" for u in users])
        t = time.perf_counter()
        hits = self.retriever.search(queries, width, context=context)
        ranked = self.channel.scored(queries, hits)
        ms = (time.perf_counter() - t) * 1000
        return [Served(q, u or None, bool(k) and bool(u), width, ms, h, ids, labels=self.labels, scores=sc)
                for q, u, k, h, (ids, sc) in zip(queries, users, known, hits, ranked)]

    def titles(self, ids: list[str]) -> pd.DataFrame:
        cols = [c for c in ("title", "category", "price") if c in self.products]
        return self.products.reindex(ids)[cols].reset_index().rename(columns={"index": "product_id"})

    def baselines(self, query: str, gen: list[str], k: int = 10, share: float = 0.3) -> dict[str, list[str]]:
        """Top k of BM25, dense, their hybrid (RRF), and the hybrid with generation as a supplement."""
        from workbench.baselines import BM25, Dense, rrf, supplement
        from workbench.embed import embed_workspace, get_embedder, product_texts

        with self._index_lock:
            if self._bm25 is None:
                ids = self.products.index.tolist()
                order = self.channel.order  # the channel's cosine order already holds the embedder and product vectors
                e = order.embedder if order else get_embedder(workspace_embedder(self.ws), self.device)
                vecs = order.vectors if order else embed_workspace(self.ws, e, ("products",), progress=False)["products"]
                self._dense = Dense(ids, vecs, e, self.device)
                self._bm25 = BM25(ids, product_texts(self.products.reset_index()))
        bm, de = self._bm25.search([query], k)[0], self._dense.search([query], k)[0]
        hy = rrf([[bm], [de]], k)[0]
        return {"bm25": bm, "dense": de, "hybrid": hy, "hybrid+gen": supplement([hy], [gen], k, share)[0]}


def generators(ws: Workspace) -> list[str]:
    """The generator checkpoints in the workspace (deployed first), for pickers."""
    from workbench.gen.store import gen_dir

    names = sorted(p.stem for p in gen_dir(ws).glob("*.safetensors") if not p.stem.endswith(".partial"))
    return sorted(names, key=lambda n: n != "generator")


def compare(a: Served, b: Served, k: int = 10) -> dict[str, pd.DataFrame]:
    """Two generators' answers to one query side by side: per side its decoded SIDs (sid, label,
    probability, products, only_here) and its channel's top k products (product_id, only_here), where
    only_here marks a SID or product the other side did not return (its SIDs: all decoded; its
    products: its whole channel list)."""
    out = {}
    for side, me, other in (("a", a, b), ("b", b, a)):
        theirs = set(other.sids())
        paths = me.paths().drop(columns="share")
        paths["only_here"] = ~paths["sid"].isin(theirs)
        out[f"sids_{side}"] = paths
        seen = set(other.products)
        out[f"products_{side}"] = pd.DataFrame({"product_id": me.products[:k], "only_here": [p not in seen for p in me.products[:k]]})
    return out


# the overview (landing page) --------------------------------------------------------------------
@dataclass
class Overview:
    facts: pd.DataFrame  # what, value: catalog, users, log, SIDs, label quality
    models: pd.DataFrame  # the generators in gen/: model, stage, trained (time), size_mib
    evaluation: pd.DataFrame  # the latest `workbench eval` (method x metric), else the stages' held-out figures
    evaluation_source: str  # which of the two, in words
    runs: pd.DataFrame  # the last runs: kind, name, status, started_at
    examples: list[str]  # held-out queries to try (never trained on)


def overview(ws: Workspace, examples: int = 8, seed: int = 0) -> Overview:
    """What the workspace holds, for the landing page."""
    from workbench.checkpoint import metadata
    from workbench.gen.data import eval_set
    from workbench.gen.store import checkpoint_path
    from workbench.sid.labels import label_quality
    from workbench.sid.store import load_sids

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
    source = "the latest `workbench eval` (held-out queries)"
    if ev.empty:
        ev = book.query(
            "SELECT stage AS method, metric || coalesce('@' || k, '') AS metric, value FROM (SELECT e.*, row_number() "
            "OVER (PARTITION BY e.stage, e.metric, e.k ORDER BY e.time DESC) AS latest FROM evals e JOIN runs r USING (run_id) "
            "WHERE r.kind = 'gen-train') WHERE latest = 1 ORDER BY stage", timeout=INTERACTIVE)
        source = "each generator stage's last held-out evaluation (`workbench eval` adds the baselines)"
    table = ev.pivot_table(index="method", columns="metric", values="value", sort=False).reset_index() if len(ev) else ev
    runs = book.query("SELECT kind, name, status, started_at FROM runs ORDER BY started_at DESC LIMIT 8", timeout=INTERACTIVE)
    try:
        held = eval_set(ws)["query"].drop_duplicates()
        picks = held.sample(min(examples, len(held)), random_state=seed).tolist()
    except ValueError:  # no held-out queries with relevant products
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


def width_rule(choice: pd.Series) -> str:
    """The rule that chose a width, in words, with its figures."""
    k = int(choice["k"]) if pd.notna(choice.get("k")) else 50
    tol = f"{choice['tolerance']:.0%}" if pd.notna(choice.get("tolerance")) else "the tolerance"
    return (f"Width {choice['width']} is the smallest whose Recall@{k} ({choice['recall']:.3f}) is within {tol} of the "
            f"widest width's ({choice['widest']}: {choice['widest_recall']:.3f}), measured at batch {choice['batch']}; "
            f"it saves {choice['latency_saving']:.0%} of the widest width's p50 latency and serves "
            f"{choice['throughput_gain']:.1f}x its queries per second.")


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


def codebook_points(ws: Workspace, n: int = 1000) -> pd.DataFrame:
    """The first n products of the stored map (`workbench sid map`) with their codes, cluster labels and
    category. AppError when the workspace has no map of its current SIDs (`draw_map` draws one)."""
    from workbench.lineage import StaleError
    from workbench.sid.labels import prefix
    from workbench.sid.store import load_map, load_sids

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
    from workbench.embed import get_embedder
    from workbench.sid.store import write_map

    return len(write_map(ws, get_embedder(workspace_embedder(ws), device), progress=False))


SQL_EXAMPLES = {  # the SQL console's starting points, one per logbook table
    "latest runs": ("SELECT kind, name, status, started_at, round(epoch(ended_at) - epoch(started_at), 1) AS seconds "
                    "FROM runs ORDER BY started_at DESC LIMIT 20"),
    "held-out evaluation (latest run)": (
        "SELECT method, metric, k, round(value, 4) AS value FROM evals WHERE run_id = (SELECT run_id FROM evals "
        "WHERE dataset = 'held-out' ORDER BY time DESC LIMIT 1) ORDER BY metric, k, value DESC"),
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
