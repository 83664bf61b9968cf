"""The search engine over a workspace: the generative channel and the baselines, loaded once, answering
queries one at a time or in batches. The app, the HTTP service (`workbench.service`) and the benchmarks
search through it, so an answer is the same wherever it is asked for.

Invariants:
- a search decodes at `Engine.width` unless the caller names a width: the width the workspace's sweep
  chose (`workbench.eval.width.served_width`), or the one the engine was opened with;
- `search_many` answers each query as `search` would answer it alone (batch-mates change nothing);
- errors a user can cause (no workspace, no generator, an empty or overlong query, a width out of range)
  are `AppError`s with a message meant to be shown as it is;
- recording a served query is best-effort: a search is answered even when the logbook cannot take it
  (`Served.log_error` says why); reads wait at most `logbook.INTERACTIVE` seconds for a busy logbook.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from workbench.baselines import BM25, Dense, Hybrid, supplement
from workbench.embed import embed_workspace, get_embedder, product_texts
from workbench.eval.width import served_width
from workbench.gen import names
from workbench.gen.retrieve import Channel, Generative, Retriever
from workbench.gen.store import checkpoint_path, gen_dir
from workbench.logbook import INTERACTIVE
from workbench.sid.store import load_labels, workspace_embedder
from workbench.workspace import Workspace

MAX_QUERY = 500  # characters of a query, in the app and the HTTP endpoint
MAX_WIDTH = 1024  # the widest beam a search may ask for


class AppError(ValueError):
    pass


def check_width(width) -> int:
    """`width` if it is a beam width a search may ask for, else an AppError naming the range."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not 1 <= width <= MAX_WIDTH:
        raise AppError(f"beam width must be a whole number from 1 to {MAX_WIDTH}, got {width!r}")
    return int(width)


def open_workspace(path: str | Path) -> Workspace:
    ws = Workspace(Path(str(path).strip() or "."))
    if not ws.exists():
        raise AppError(f"no workspace at {ws.path}: build one with `workbench demo` (or pick another path)")
    if not checkpoint_path(ws, names.DEPLOYED).exists():
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

    def __init__(self, ws: Workspace, device: str = "cpu", name: str = names.DEPLOYED, channel=None, width: int | None = None,
                 compiled: bool = False):
        self.ws, self.device = ws, device
        self.width = served_width(ws) if width is None else check_width(width)  # what a search decodes at unless told
        self.retriever = Retriever.from_workspace(ws, name, device, compiled)  # compiled: torch.compile's decode
        self.channel = Channel.from_workspace(ws, channel, device)  # a ChannelConfig, or the default
        if self.channel.order is not None:  # a SID's candidates in consecutive rows of the order's vectors
            self.channel.order.align(self.retriever.lookup)
        self.generative = Generative(self.retriever, self.channel, self.width)  # the recall channel eval and ab judge
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

    def search(self, query: str, width: int | None = None, user: str | None = None, log: bool = True, source: str = "app") -> Served:
        served = self.search_many([query], width, [user])[0]
        width = served.width
        if log:
            try:  # best-effort: the answer does not depend on the logbook
                self.ws.logbook().serve(served.query, served.results(), served.latency_ms, user_id=user or None, beam_width=width,
                                        source=source, timeout=INTERACTIVE)
            except (OSError, ValueError, duckdb.Error) as e:  # LogbookBusy, LogbookCorrupt, a read-only disk...
                served.log_error = f"{type(e).__name__}: {e}"
        return served

    def search_many(self, queries: list[str], width: int | None = None, users: list[str | None] | None = None) -> list[Served]:
        """Several queries at one beam width (None: `self.width`) in one batched decode (the HTTP
        endpoint's dynamic batches); each answer is the one `search` gives the query alone. `users[i]` personalises query i where the
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
        width = self.width if width is None else check_width(width)
        context, known = None, np.zeros(len(queries), bool)
        if self.personal and any(users):
            context, known = self.retriever.user_context(self.ws, [u or "" for u in users])
        t = time.perf_counter()
        hits = self.generative.hits(queries, context) if width == self.width else self.retriever.search(queries, width, context=context)
        ranked = self.channel.scored(queries, hits, lookup=self.retriever.lookup)
        ms = (time.perf_counter() - t) * 1000
        return [Served(q, u or None, bool(k) and bool(u), width, ms, h, ids, labels=self.labels, scores=sc)
                for q, u, k, h, (ids, sc) in zip(queries, users, known, hits, ranked)]

    def titles(self, ids: list[str]) -> pd.DataFrame:
        cols = [c for c in ("title", "category", "price") if c in self.products]
        return self.products.reindex(ids)[cols].reset_index().rename(columns={"index": "product_id"})

    def baselines(self, query: str, gen: list[str], k: int = 10, share: float = 0.3) -> dict[str, list[str]]:
        """Top k of BM25, dense, their hybrid (RRF), and the hybrid with generation as a supplement."""
        with self._index_lock:
            if self._bm25 is None:
                ids = self.products.index.tolist()
                order = self.channel.order  # the channel's cosine order already holds the embedder and product vectors
                e = order.embedder if order else get_embedder(workspace_embedder(self.ws), self.device)
                vecs = order.vectors if order and isinstance(order.vectors, np.ndarray) else embed_workspace(self.ws, e, ("products",), progress=False)["products"]
                self._dense = Dense(ids, vecs, e, self.device)
                self._bm25 = BM25(ids, product_texts(self.products.reset_index()))
        bm, de = self._bm25.search([query], k)[0], self._dense.search([query], k)[0]
        hy = Hybrid([self._bm25, self._dense]).search([query], k)[0]
        return {"bm25": bm, "dense": de, "hybrid": hy, "hybrid+gen": supplement([hy], [gen], k, share)[0]}


def generators(ws: Workspace) -> list[str]:
    """The generator checkpoints in the workspace (deployed first), for pickers."""
    found = sorted(p.stem for p in gen_dir(ws).glob("*.safetensors") if not names.is_partial(p.stem))
    return sorted(found, key=lambda n: n != names.DEPLOYED)


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
