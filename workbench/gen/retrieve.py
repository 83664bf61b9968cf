"""Query (+ context) -> SIDs -> products: the generator, its tokenizer, the compiled trie and the
product lists of every SID, loaded once and used by the CLI, the evaluation, the benchmarks and the app.

Products of a SID come in popularity order (purchases and clicks on training queries, then id), so
a retrieved list cut at K products is deterministic. `search` returns per query a list of `Hit`s,
best SID first.

As a recall channel the generator hands the ranker a *set*: `candidates` are the decoded SIDs'
products in beam order cut at a budget, and `CosineOrder` ranks them inside (query-product cosine
plus the SID's log-probability), which on a catalog without logs replaces an arbitrary order.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from workbench.data import splits
from workbench.data.relevance import relevance
from workbench.embed import embed_workspace, get_embedder
from workbench.gen import names, store
from workbench.gen.beam import Beams, beam_search, check, check_gate
from workbench.gen.compact import PQVectors
from workbench.gen.config import ChannelConfig
from workbench.gen.context import UserContext
from workbench.gen.data import sid_matrix
from workbench.gen.model import TERMS, Generator
from workbench.gen.tokenizer import TextTokenizer
from workbench.gen.trie import compile_trie
from workbench.sid.index import SIDIndex
from workbench.sid.store import load_sids, sid_dir, workspace_embedder


@dataclass(frozen=True)
class Hit:
    sid: tuple[int, ...]
    logp: float
    products: Sequence[str]  # the SID's products, popular first (ProductLookup's shared tuple)
    row: int = -1  # the SID's row of the index, whose products these are (-1: not from a ProductLookup)


class ProductLookup:
    """Index row -> its product ids, popular first (CSR over the SID index's rows)."""

    def __init__(self, index: SIDIndex, sids: pd.DataFrame, popularity: pd.Series | None = None):
        codes = sid_matrix(sids)
        if codes.shape[1] != index.levels:
            raise ValueError(f"SID table has {codes.shape[1]} positions, the index {index.levels}")
        row = index.rows(codes)
        if (row < 0).any():
            raise ValueError("SID table and SID index disagree; rebuild them with `workbench sid train`")
        pop = np.zeros(len(sids)) if popularity is None else sids["product_id"].map(popularity).fillna(0).to_numpy()
        order = np.lexsort((sids["product_id"].to_numpy(), -pop, row))  # by row, then popularity, then id
        self.ids = sids["product_id"].to_numpy()[order]
        self.offsets = np.r_[0, np.cumsum(np.bincount(row, minlength=len(index.sids)))]
        self._rows = [tuple(self.ids[a:b].tolist()) for a, b in zip(self.offsets[:-1], self.offsets[1:])]  # shared, immutable

    def __call__(self, row: int) -> tuple[str, ...]:
        return self._rows[row]

    def rows(self) -> dict[str, int]:
        """product id -> index row of its SID."""
        return dict(zip(self.ids, np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets)).tolist()))


def popularity(ws) -> pd.Series:
    """Purchases (2) and clicks (1) per product, on training queries only."""
    rel = relevance(ws, ("purchased", "clicked"))
    rel = rel[splits.mask(ws, rel["query_id"], "train")]
    return rel.groupby("product_id")["weight"].sum()


def beams(model: Generator, trie, ids: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None, width: int,
          gate: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoded texts -> memory -> constrained beams, as (sids, logp, row) tensors: the whole decode as one
    function of tensors, which `torch.compile` captures into one graph (the three steps' small kernels fused)."""
    mem = model.memory(ids, mask, context)
    anon = model.memory(ids, mask, torch.full_like(context, -1)) if context is not None and gate < 1 else None
    b = beam_search(model, mem, trie, width, anonymous=anon, gate=gate)
    return b.sids, b.logp, b.row


class Retriever:
    """With `compiled`, the decode (`beams`) runs through `torch.compile` (CUDA graphs on a GPU): the first
    search of each beam width, and of each new batch shape, compiles for tens of seconds, later ones
    run the fused graph. The answers are the eager decode's (tests/test_compiled.py).

    The graph does not re-check the generator's modules on every call (their guards cost about as much as
    the decode itself on a CPU): a served generator's weights may change in place, but a decode with
    other logit terms (`Generator.using`) or a probe goes the eager way."""

    def __init__(self, model: Generator, tok: TextTokenizer, index: SIDIndex, lookup: ProductLookup, device: str = "cpu",
                 compiled: bool = False):
        if tuple(index.vocab) != tuple(model.cfg.sid_vocab):
            raise ValueError(f"the SID index's vocabulary {tuple(index.vocab)} does not match the generator's "
                             f"{tuple(model.cfg.sid_vocab)}: retrain the generator on these SIDs")
        self.model, self.tok, self.index, self.lookup, self.device = model, tok, index, lookup, device
        self.trie = compile_trie(index, device)
        self.compiled = compiled
        opts = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe,
                "triton.cudagraphs": torch.device(device).type == "cuda"}  # mode="reduce-overhead" on a GPU
        self._beams = torch.compile(beams, options=opts) if compiled else beams
        self._context = None

    @classmethod
    def from_workspace(cls, ws, name: str = names.DEPLOYED, device: str = "cpu", compiled: bool = False) -> Retriever:
        model, tok, _ = store.load(ws, name, device)
        index = SIDIndex.load(sid_dir(ws) / "index.parquet")
        return cls(model, tok, index, ProductLookup(index, load_sids(ws), popularity(ws)), device, compiled)

    def users(self, ws, history: int = 5):
        """The workspace's UserContext for this generator (built once). A generator trained without
        users (no stage 3) refuses."""
        if self.model.cfg.context_vocab == 0:
            raise ValueError("this generator was trained without users (stage 3); train with `workbench train --stages 1,2,3`")
        if self._context is None:
            ctx = UserContext.from_workspace(ws, load_sids(ws), self.index.vocab, history, self.model.cfg.context_brands)
            if ctx.vocab_size != self.model.cfg.context_vocab:
                raise ValueError("the workspace's users or SIDs changed since the generator was trained; retrain stage 3")
            self._context = ctx
        return self._context

    def user_context(self, ws, user_ids: list[str]) -> tuple[torch.Tensor, np.ndarray]:
        """(N, 1 + history) context ids of these users now, and which of them are known. Unknown users
        get empty slots: the non-personalised path."""
        ctx = self.users(ws)
        return torch.as_tensor(ctx.ids(user_ids)), ctx.known(user_ids)

    @torch.no_grad()
    def decode(self, texts: list[str], width: int, context: torch.Tensor | None = None, gate: float = 1.0) -> Beams:
        """Beams of `texts` (+ `context`); `gate` < 1 weighs the user term down (`beam_search`)."""
        ids, mask = self.tok.encode(texts, self.model.cfg.max_len, self.device)
        return self.decode_encoded(ids, mask, width, context, gate)

    @torch.no_grad()
    def decode_encoded(self, ids: torch.Tensor, mask: torch.Tensor, width: int, context: torch.Tensor | None = None,
                       gate: float = 1.0) -> Beams:
        """`decode` of texts the tokenizer already encoded (ids, mask)."""
        check(self.model, self.trie, width)  # bad inputs are refused here, not inside a compiled graph
        check_gate(gate)
        plain = self.model.probe is None and self.model.terms == TERMS  # what the graph was compiled for (see the class)
        fn = self._beams if self.compiled and plain else beams
        return Beams(*fn(self.model, self.trie, ids, mask, None if context is None else context.to(self.device), width, gate))

    def search(self, texts: list[str], width: int, context: torch.Tensor | None = None,
               batch_size: int = 64, gate: float = 1.0) -> list[list[Hit]]:
        out = []
        for s in range(0, len(texts), batch_size):
            ctx = None if context is None else context[s:s + batch_size]
            out += self.hits(self.decode(texts[s:s + batch_size], width, ctx, gate))
        return out

    def hits(self, beams: Beams) -> list[list[Hit]]:
        """Per query, its decoded SIDs with their products, best first."""
        return [[Hit(sid, lp, self.lookup(row), row) for sid, lp, row in q] for q in beams.to_lists()]


def _cut(hits: list[Hit], k: int | None) -> list[Sequence[str]]:
    """Each hit's products while fewer than k are taken: a big catalog's SIDs can hold thousands each,
    and a channel keeps the first few hundred of all (so nothing past the cut is copied)."""
    if k is None:
        return [h.products for h in hits]
    out, left = [], k
    for h in hits:
        if left <= 0:
            break
        out.append(h.products[:left])
        left -= len(out[-1])
    return out


def ranked_products(hits: list[Hit], k: int | None = None) -> list[str]:
    """The retrieved list: products of the best SID first, then the next SID's, ... (cut at k)."""
    return [p for ps in _cut(hits, k) for p in ps]


def candidates(hits: list[Hit], budget: int | None = None) -> tuple[list[str], np.ndarray]:
    """A recall channel's candidate set: the decoded SIDs' products in beam order (best SID first),
    cut at `budget` products, and each product's SID log-probability."""
    taken = _cut(hits, budget)
    logp = np.repeat(np.array([h.logp for h in hits[:len(taken)]], float), [len(ps) for ps in taken])
    return [p for ps in taken for p in ps], logp


class CosineOrder:
    """In-cluster ranking: order a channel's candidates by

        score(q, p) = cos(q, p) + logp_weight x log P(SID of p | q)

    with the workspace's embedder (the one its SIDs were built on); ties keep beam order. Products of
    one SID otherwise come in popularity order, which on a catalog without logs is arbitrary. With
    `pool` > 1 the first pool x budget products of the beam are scored and the best `budget` kept, so a
    relevant product in the beam's tail is not lost to the cut before it is scored. With `compact` M > 0 the
    vectors are held as M one-byte product-quantisation codes each (`compact.PQVectors`) and the cosine is
    scored from them (or give `vectors` as a `PQVectors` already coded: a catalog coded block by block)."""

    def __init__(self, embedder, product_ids, vectors: np.ndarray | PQVectors, logp_weight: float = 0.0, query_dtype: str = "float32",
                 pool: int = 1, popularity: np.ndarray | None = None, popularity_weight: float = 0.0, compact: int = 0):
        if len(product_ids) != len(vectors):
            raise ValueError(f"{len(product_ids)} product ids for {len(vectors)} vectors")
        if popularity_weight and (popularity is None or len(popularity) != len(vectors)):
            raise ValueError("a popularity weight needs the popularity of every product (one per vector)")
        self.embedder, self.logp_weight, self.query_dtype, self.pool = embedder, logp_weight, query_dtype, pool
        self.ids = pd.Index(np.asarray(product_ids, dtype=object))  # product id -> its row of `vectors`
        if isinstance(vectors, PQVectors):
            self.vectors = vectors
        else:
            self.vectors = PQVectors.train(vectors, compact) if compact else np.asarray(vectors, np.float32)  # (N, d), unit norm
        self.prior = (popularity_weight * np.log1p(np.asarray(popularity, np.float32)) if popularity_weight
                      else np.zeros(len(vectors), np.float32))  # (N,) the behaviour term of each product
        self._bound: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ProductLookup -> its positions' rows of `vectors`

    def dot(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """<q, product> for the products at `rows` (n,), from float32 vectors or PQ codes: (n,)."""
        return self.vectors.dot(rows, q) if isinstance(self.vectors, PQVectors) else self.vectors[rows] @ q

    def align(self, lookup: ProductLookup) -> None:
        """Hold the products in `lookup`'s position order (the rest after them), so that a SID's candidates are
        one run of consecutive rows: at 10M products the scattered reads of a beam's codes, not the sums,
        are most of the scoring (3.2 times slower at 25,600 candidates; `workbench bench pq-score`). The
        scores and orders are unchanged."""
        rows = self.ids.get_indexer(lookup.ids)
        if (rows < 0).any():
            raise ValueError(f"products without an embedding in the channel's order: {lookup.ids[rows < 0][:5].tolist()}")
        rest = np.setdiff1d(np.arange(len(self.ids)), rows, assume_unique=True)
        rows = np.r_[rows, rest].astype(np.int64)  # (N,) new row -> old row
        self.ids = self.ids[rows]
        self.vectors = self.vectors.take(rows) if isinstance(self.vectors, PQVectors) else self.vectors[rows]
        self.prior = self.prior[rows]
        self._bound = weakref.WeakKeyDictionary()

    @classmethod
    def from_workspace(cls, ws, cfg: ChannelConfig, device: str = "cpu") -> CosineOrder:
        """The order `cfg` (a ChannelConfig) asks for, over the workspace's products and embedder."""
        e = get_embedder(workspace_embedder(ws), device)
        vecs = embed_workspace(ws, e, ("products",), progress=False)["products"]  # stored: always float32
        ids = ws.table("products")["product_id"]
        pop = ids.map(popularity(ws)).fillna(0).to_numpy(np.float32) if cfg.popularity_weight else None
        return cls(e, ids.tolist(), vecs, cfg.logp_weight, cfg.query_dtype, cfg.pool, pop, cfg.popularity_weight, cfg.compact)

    def __call__(self, texts: list[str], hits: list[list[Hit]], budget: int | None = None) -> list[list[str]]:
        return [ids for ids, _ in self.scored(texts, hits, budget)]

    def scored(self, texts: list[str], hits: list[list[Hit]], budget: int | None = None,
               vectors: np.ndarray | None = None, lookup: ProductLookup | None = None) -> list[tuple[list[str], np.ndarray]]:
        """Per query: its candidates best first, and each one's score; `vectors`: the queries' embeddings by
        this order's embedder when already computed (float32 only: a bfloat16 order encodes its own).
        `lookup`: the ProductLookup the hits' products come from, whose positions are mapped to this
        order's rows once, so that candidates are found by integer rows instead of by id."""
        reuse = vectors is not None and self.query_dtype == "float32"
        q = vectors if reuse else self.embedder.encode(list(texts), dtype=self.query_dtype)  # (Q, d), unit norm
        if lookup is not None and all(h.row >= 0 for hs in hits for h in hs):
            return [self._by_rows(qv, hs, budget, lookup) for qv, hs in zip(q, hits)]
        cands = [candidates(h, None if budget is None else budget * self.pool) for h in hits]
        flat = np.array([p for ids, _ in cands for p in ids], dtype=object)  # every query's candidates: one lookup
        rows = self.ids.get_indexer(flat) if len(flat) else np.zeros(0, np.intp)
        if (rows < 0).any():
            raise KeyError(f"products without an embedding in the channel's order: {flat[rows < 0][:5].tolist()}")
        out, start = [], 0
        for qv, (ids, logp) in zip(q, cands):
            mine, start = rows[start:start + len(ids)], start + len(ids)
            if not ids:
                out.append(([], np.zeros(0, np.float32)))
                continue
            score = self.dot(mine, qv) + self.logp_weight * logp + self.prior[mine]  # (n,)
            order = np.argsort(-score, kind="stable")[:budget]
            out.append(([ids[i] for i in order], score[order]))
        return out

    def _by_rows(self, qv: np.ndarray, hits: list[Hit], budget: int | None, lookup: ProductLookup) -> tuple[list[str], np.ndarray]:
        """One query's `scored` by positions in `lookup` (the same candidates and order as by id)."""
        if lookup not in self._bound:  # once per lookup (the channel may serve several generators)
            self._bound[lookup] = self.ids.get_indexer(lookup.ids).astype(np.int32)  # (N,) -1: a product the order lacks
        rows = self._bound[lookup]
        if not hits:
            return [], np.zeros(0, np.float32)
        start = lookup.offsets[[h.row for h in hits]]  # (H,) each SID's first position
        size = lookup.offsets[[h.row + 1 for h in hits]] - start
        cap = size.sum() if budget is None else budget * self.pool
        take = np.minimum(size, np.maximum(cap - np.r_[0, np.cumsum(size)[:-1]], 0))  # beam order, cut at cap
        before = np.r_[0, np.cumsum(take)[:-1]]
        pos = np.repeat(start - before, take) + np.arange(take.sum())  # (n,) positions in lookup.ids
        mine = rows[pos]
        if (mine < 0).any():
            raise KeyError(f"products without an embedding in the channel's order: {lookup.ids[pos[mine < 0]][:5].tolist()}")
        logp = np.repeat(np.array([h.logp for h in hits], float), take)
        score = self.dot(mine, qv) + self.logp_weight * logp + self.prior[mine]  # (n,)
        order = np.argsort(-score, kind="stable")[:budget]
        return lookup.ids[pos[order]].tolist(), score[order]


@dataclass
class Channel:
    """Decoded Hits -> the ranked product lists the channel hands the ranker (see ChannelConfig)."""

    cfg: ChannelConfig = field(default_factory=ChannelConfig)
    order: CosineOrder | None = None  # required when cfg.order is cosine

    @classmethod
    def from_workspace(cls, ws, cfg: ChannelConfig | None = None, device: str = "cpu") -> Channel:
        cfg = cfg or ChannelConfig()
        order = CosineOrder.from_workspace(ws, cfg, device) if cfg.order == "cosine" else None
        return cls(cfg, order)

    def __post_init__(self):
        if self.cfg.order == "cosine" and self.order is None:
            raise ValueError("a cosine-ordered channel needs its CosineOrder (Channel.from_workspace builds it)")

    def __call__(self, texts: list[str], hits: list[list[Hit]], budget: int | None = None) -> list[list[str]]:
        return [ids for ids, _ in self.scored(texts, hits, budget)]

    def scored(self, texts: list[str], hits: list[list[Hit]], budget: int | None = None,
               vectors: np.ndarray | None = None, lookup: ProductLookup | None = None) -> list[tuple[list[str], np.ndarray]]:
        """The channel's lists (candidates cut at `budget`, by default the config's) with each product's
        score: the cosine order's (`vectors`: the queries' embeddings, when computed; `lookup`: where the hits'
        products come from), or its SID's log-probability."""
        budget = self.cfg.budget if budget is None else budget
        if self.cfg.order == "cosine":
            return self.order.scored(texts, hits, budget, vectors, lookup)
        return [candidates(h, budget) for h in hits]


class Generative:
    """The generator as a recall channel: `scored(queries, budget)` decodes a constrained beam of `width`
    SIDs per query and hands over the decoded SIDs' products in beam order, cut at `budget`, ordered
    inside by `channel` (the interface of `baselines.BM25` and `baselines.Dense`). The last few decodes
    are kept, so asking the same queries at several budgets decodes once."""

    name = "generative"
    slots = False
    KEEP = 4  # decodes kept: an evaluation asks the same query lists (train, validation, test) at several budgets

    def __init__(self, retriever: Retriever, channel: Channel, width: int, terms: tuple[str, ...] | None = None):
        """`terms`: decode with only these logit terms of the generator (`Generator.using`), e.g. ("tree",)."""
        self.retriever, self.channel, self.width, self.terms = retriever, channel, width, terms
        self._decoded: dict[tuple, list[list[Hit]]] = {}  # the last KEEP anonymous decodes, by their queries

    def hits(self, queries: list[str], context: torch.Tensor | None = None) -> list[list[Hit]]:
        """The decoded SIDs per query (users' `context` decodes afresh each time)."""
        if context is not None:
            return self._search(queries, context)
        key = tuple(queries)
        if key not in self._decoded:
            if len(self._decoded) >= self.KEEP:
                self._decoded.pop(next(iter(self._decoded)))
            self._decoded[key] = self._search(queries)
        return self._decoded[key]

    def _search(self, queries, context=None) -> list[list[Hit]]:
        model = self.retriever.model
        with model.using(*self.terms) if self.terms else nullcontext():
            return self.retriever.search(list(queries), self.width, context=context, gate=self.channel.cfg.user_gate)

    def scored(self, queries: list[str], budget: int, context: torch.Tensor | None = None) -> list[tuple[list[str], np.ndarray]]:
        """A generator with the sentence backbone already embedded the queries with the order's embedder:
        the order takes those vectors instead of encoding the queries a second time."""
        hits, order = self.hits(queries, context), self.channel.order
        reuse = getattr(self.retriever.tok, "vectors", None)
        vectors = reuse(list(queries), order.embedder.key) if reuse is not None and order is not None else None
        return self.channel.scored(list(queries), hits, budget, vectors, self.retriever.lookup)

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        """The first k products of the channel as served (at its configured budget)."""
        return [ids[:k] for ids, _ in self.scored(queries, self.channel.cfg.budget)]
