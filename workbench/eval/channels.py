"""The channels an evaluation compares, built by name, each the same interface (`baselines`):
`scored(queries, budget) -> per query (product ids, scores)`, best first, at most `budget`.

    bm25, dense        workbench.baselines (dense: the exact scan)
    dense-ann          the same vectors in a FAISS index (workbench.ann, EvalConfig.ann)
    dense-tuned        exact cosine with the workspace's fine-tuned bi-encoder (workbench.encoder)
    hybrid             RRF of bm25 and dense, each at the budget (one definition, whatever else runs)
    generative         the workspace's generator as a recall channel (gen.retrieve.Generative)
    generative-tree    the same checkpoint decoding with its tree head's logits alone (the decoder's zeroed):
                       a nearest-centroid search of the SID tree
    generative-decoder the same with the decoder's own logits alone (the tree term zeroed)
    oracle-sids        the same channel had it decoded exactly the SIDs of each query's relevant products
                       (`Oracle`): the ceiling of the SIDs, so a shortfall splits into what the SIDs lose
                       and what the generator loses
    oracle-sids+beam   the relevant SIDs first, then the beam's own: the ceiling at the beam's budget
    <teacher>-sids     bm25-sids, dense-sids, hybrid-sids: the SIDs of that channel's ranked list, first seen
                       first, through the generative channel (what perfect distillation of it would decode)
    <base>+gen         a fixed-slot supplement of <base> by the generative channel (the naive merge)

`Channels(ws, cfg, relevant)` builds a channel on first use and keeps it, so one that others need
(bm25 for the hybrid and for unique recall, generative for the supplements) is built once.
"""

from __future__ import annotations

import numpy as np

from workbench.ann import ANN
from workbench.baselines import BM25, Dense, Hybrid, Supplement
from workbench.embed import embed_workspace, get_embedder, product_texts
from workbench.eval.config import METHODS, EvalConfig
from workbench.gen.retrieve import Channel, Generative, Hit, Retriever


def sid_hits(lookup, index, products: list) -> list[list[Hit]]:
    """Per query the Hits of the SIDs of its `products` (ids, in order; first seen first, log-prob 0)."""
    row_of = lookup.rows()
    out = []
    for ids in products:
        rows = dict.fromkeys(row_of[p] for p in ids if p in row_of)
        out.append([Hit(tuple(int(c) for c in index.sids[row]), 0.0, lookup(row), int(row)) for row in rows])
    return out


class Oracle:
    """The generative channel fed the relevant products' SIDs instead of the beam's: `relevant` maps a query
    text to its relevant product ids (the evaluation's judgments). With `fill`, the channel's own list (the
    beam's products, pooled and scored as served) follows the relevant SIDs' products, so the oracle hands
    over as many products as the channel at every budget and never fewer relevant ones than without the
    fill: the equal-budget ceiling."""

    slots = False

    def __init__(self, generative: Generative, relevant: dict[str, dict], fill: bool = False):
        self.generative, self.relevant, self.fill = generative, relevant, fill
        self.name = "oracle-sids+beam" if fill else "oracle-sids"

    def relevant_hits(self, queries: list[str]) -> list[list[Hit]]:
        r = self.generative.retriever
        return sid_hits(r.lookup, r.index, [self.relevant.get(q, {}) for q in queries])

    def hits(self, queries: list[str]) -> list[list[Hit]]:
        best = self.relevant_hits(queries)
        if not self.fill:
            return best
        return [b + [h for h in beam if h.sid not in {x.sid for x in b}] for b, beam in zip(best, self.generative.hits(queries))]

    def scored(self, queries: list[str], budget: int) -> list[tuple[list[str], np.ndarray]]:
        """The channel's list over the relevant SIDs; with `fill`, the channel's own list (its pool scored as
        served) fills the rest of the budget, so the fill never pushes a relevant SID's product out."""
        best = self.generative.channel.scored(list(queries), self.relevant_hits(queries), budget)
        if not self.fill:
            return best
        out = []
        for (ids, score), (beam, beam_score) in zip(best, self.generative.scored(queries, budget)):
            have = set(ids)
            keep = [i for i, p in enumerate(beam) if p not in have][:budget - len(ids)]
            out.append((ids + [beam[i] for i in keep], np.concatenate([score, beam_score[keep]])))
        return out

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        return [ids[:k] for ids, _ in self.scored(queries, self.generative.channel.cfg.budget)]


SUPPLEMENTS = {"bm25+gen": "bm25", "dense+gen": "dense", "hybrid+gen": "hybrid"}  # supplement -> its base channel
TERMS = {"generative-tree": ("tree",), "generative-decoder": ("decoder",)}  # decomposition -> the logit terms decoded with


class TeacherSIDs:
    """The SIDs of a teacher channel's ranked list, first seen first, through the generative channel: what a
    generator that imitated that teacher perfectly would decode (the ceiling of distillation)."""

    slots = False

    def __init__(self, teacher, generative: Generative):
        self.teacher, self.generative, self.name = teacher, generative, f"{teacher.name}-sids"

    def hits(self, queries: list[str], budget: int | None = None) -> list[list[Hit]]:
        r = self.generative.retriever
        return sid_hits(r.lookup, r.index, self.teacher.search(queries, budget or self.generative.channel.cfg.budget))

    def scored(self, queries: list[str], budget: int) -> list[tuple[list[str], np.ndarray]]:
        return self.generative.channel.scored(list(queries), self.hits(queries, budget), budget)

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        return [ids[:k] for ids, _ in self.scored(queries, self.generative.channel.cfg.budget)]


TEACHERS = {"bm25-sids": "bm25", "dense-sids": "dense", "hybrid-sids": "hybrid"}  # teacher-SID channel -> its teacher


class Channels:
    """The evaluation's channels by name (`METHODS`), each built once, on first use."""

    def __init__(self, ws, cfg: EvalConfig, relevant: dict[str, dict] | None = None, progress: bool = True):
        self.ws, self.cfg, self.relevant, self.progress = ws, cfg, relevant or {}, progress
        self._built: dict[str, object] = {}
        self._products = ws.table("products")

    def __getitem__(self, name: str):
        if name not in METHODS:
            raise ValueError(f"unknown channel {name!r}; channels: {', '.join(METHODS)}")
        if name not in self._built:
            self._built[name] = self._build(name)
        return self._built[name]

    def _build(self, name: str):
        ws, cfg, ids = self.ws, self.cfg, self._products["product_id"].tolist()
        if name == "bm25":
            return BM25(ids, product_texts(self._products))
        if name == "dense-tuned":
            e = get_embedder("tuned", cfg.device, ws.path)
            return Dense(ids, embed_workspace(ws, e, ("products",), progress=self.progress)["products"], e, cfg.device)
        if name in ("dense", "dense-ann"):
            e = get_embedder(cfg.embedder, cfg.device)
            vectors = embed_workspace(ws, e, ("products",), progress=self.progress)["products"]
            e.encode(["warm up"])  # load the model before any clock starts
            return Dense(ids, vectors, e, cfg.device) if name == "dense" else ANN(ids, vectors, e, cfg.ann)
        if name == "hybrid":
            return Hybrid([self["bm25"], self["dense"]])
        if name == "generative":
            retriever = Retriever.from_workspace(ws, cfg.generator, cfg.device)
            return Generative(retriever, Channel.from_workspace(ws, cfg.channel, cfg.device), cfg.width)
        if name in TERMS:  # the same checkpoint decoding with one logit term
            g = self["generative"]
            g.retriever.model.check_terms(*TERMS[name])  # a tree term without a tree head: refused here and now
            return Generative(g.retriever, g.channel, g.width, TERMS[name])
        if name == "oracle-sids":
            return Oracle(self["generative"], self.relevant)
        if name == "oracle-sids+beam":
            return Oracle(self["generative"], self.relevant, fill=True)
        if name in TEACHERS:
            return TeacherSIDs(self[TEACHERS[name]], self["generative"])
        return Supplement(self[SUPPLEMENTS[name]], self["generative"], cfg.share, name=name)
