"""Baseline recall channels, and the ways to combine channels, behind one interface:

    scored(queries, budget) -> per query (product ids, scores), best first, at most `budget` of them
    search(queries, k)      -> per query the ids alone

The generative channel has it too (`gen.retrieve.Generative`), so the evaluation, distillation
(`workbench.gen.distill` teaches the generator to rank the way these do) and the served engine treat
every channel alike.

- `BM25`:   bm25s over product texts, English stemming and stop words, 1-character tokens kept
            ("v", "x" and sizes matter in product search); products with score 0 are not returned.
- `Dense`:  exact cosine between query and product embeddings (all-MiniLM-L6-v2 by default), one
            matrix product per chunk of queries.
- `Hybrid`: reciprocal-rank fusion of channels (`rrf`, score sum_i 1 / (c + rank_i)), each asked at the
            same budget: defined once, whatever else is evaluated.
- `Supplement`: the paper's naive deployment, fixed slots: the base channel keeps its first
            (1 - share) x budget slots, the other's products not already present fill the rest (then the
            base again if it runs short). Its list depends on the number of slots (`slots` is True).
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.embed import check_dtype

TOKEN = r"(?u)\b\w+\b"


class BM25:
    name = "bm25"
    slots = False

    def __init__(self, ids: list[str], texts: list[str], stem: bool = True, backend: str = "numpy"):
        """`backend="numba"`: bm25s's compiled scorer, about 100x faster on many queries (a teacher
        labelling pseudo-queries), with the same scores; products tied at equal scores may come in
        another order, so evaluations keep the default."""
        import bm25s
        import Stemmer

        if len(ids) != len(texts) or not ids:
            raise ValueError(f"BM25 needs one text per product, got {len(ids)} ids and {len(texts)} texts")
        self.ids = np.asarray(ids, dtype=object)
        self.stemmer = Stemmer.Stemmer("english") if stem else None
        self.index = bm25s.BM25(backend=backend)
        self.index.index(self._tok(texts), show_progress=False)

    def _tok(self, texts, ids: bool = True):
        import bm25s

        return bm25s.tokenize(list(texts), stopwords="en", stemmer=self.stemmer, token_pattern=TOKEN,
                              return_ids=ids, show_progress=False)

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        return [ids for ids, _ in self.scored(queries, k)]

    def scored(self, queries: list[str], k: int) -> list[tuple[list[str], np.ndarray]]:
        """Per query: its top k products and their BM25 scores."""
        k = min(k, len(self.ids))
        toks = self._tok(queries, ids=False)
        out = [([], np.zeros(0, np.float32)) for _ in queries]
        live = [i for i, t in enumerate(toks) if t]  # a query of stop words only retrieves nothing
        if live:
            docs, scores = self.index.retrieve([toks[i] for i in live], k=k, show_progress=False)
            for i, d, s in zip(live, docs, scores):
                out[i] = (self.ids[d[s > 0]].tolist(), s[s > 0])
        return out


class Dense:
    name = "dense"
    slots = False

    def __init__(self, ids: list[str], vectors: np.ndarray, embedder, device: str = "cpu", query_dtype: str = "float32"):
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} product ids for {len(vectors)} vectors")
        check_dtype(query_dtype)
        self.ids = np.asarray(ids, dtype=object)
        self.embedder, self.device, self.query_dtype = embedder, device, query_dtype  # query_dtype: what queries are encoded in
        self.p = torch.as_tensor(np.asarray(vectors, np.float32), device=device)  # (N, d), unit norm

    def search(self, queries: list[str], k: int, chunk: int = 1024, vectors: np.ndarray | None = None) -> list[list[str]]:
        """Top k products per query by cosine; `vectors`: the queries' embeddings, if already computed."""
        return [ids for ids, _ in self.scored(queries, k, chunk, vectors)]

    def scored(self, queries: list[str], k: int, chunk: int = 1024, vectors: np.ndarray | None = None) -> list[tuple[list[str], np.ndarray]]:
        """Per query: its top k products and their cosines."""
        k = min(k, len(self.ids))
        q = self.embedder.encode(list(queries), dtype=self.query_dtype) if vectors is None else np.asarray(vectors, np.float32)
        out = []
        for s in range(0, len(q), chunk):
            top = (torch.as_tensor(q[s:s + chunk], device=self.device) @ self.p.T).topk(k, dim=1)  # of (b, N) cosines
            out += [(self.ids[r].tolist(), v) for r, v in zip(top.indices.cpu().numpy(), top.values.cpu().numpy())]
        return out


def rrf(lists: list[list[list[str]]], k: int, c: float = 60.0) -> list[list[str]]:
    """Fuse several methods' ranked lists per query; ties keep the first method's order."""
    return [ids for ids, _ in rrf_scored(lists, k, c)]


def rrf_scored(lists: list[list[list[str]]], k: int, c: float = 60.0) -> list[tuple[list[str], np.ndarray]]:
    """`rrf` with each product's fused score."""
    out = []
    for per_method in zip(*lists):
        score: dict[str, float] = {}
        for ranked in per_method:
            for r, p in enumerate(ranked):
                score[p] = score.get(p, 0.0) + 1.0 / (c + r + 1)
        best = sorted(score, key=lambda p: -score[p])[:k]
        out.append((best, np.array([score[p] for p in best], np.float32)))
    return out


class Hybrid:
    """Reciprocal-rank fusion of `channels`, each asked for `budget` products, cut at `budget`."""

    name = "hybrid"
    slots = False

    def __init__(self, channels: list, c: float = 60.0):
        if len(channels) < 2:
            raise ValueError(f"a hybrid fuses two channels or more, got {len(channels)}")
        self.channels, self.c = channels, c

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        return [ids for ids, _ in self.scored(queries, k)]

    def scored(self, queries: list[str], budget: int) -> list[tuple[list[str], np.ndarray]]:
        return rrf_scored([[ids for ids, _ in ch.scored(queries, budget)] for ch in self.channels], budget, self.c)


class Supplement:
    """`base` with `share` of each list's slots given to `extra` (`supplement`); scores are the slot order."""

    slots = True  # its list at k slots is not the first k of a longer one

    def __init__(self, base, extra, share: float = 0.3, name: str = ""):
        self.base, self.extra, self.share = base, extra, share
        self.name = name or f"{base.name}+{extra.name}"

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        return [ids for ids, _ in self.scored(queries, k)]

    def scored(self, queries: list[str], budget: int) -> list[tuple[list[str], np.ndarray]]:
        lists = supplement(self.base.search(queries, budget), self.extra.search(queries, budget), budget, self.share)
        return [(ids, -np.arange(len(ids), dtype=np.float32)) for ids in lists]


def supplement(base: list[list[str]], gen: list[list[str]], k: int, share: float = 0.3) -> list[list[str]]:
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"supplement share must be in [0, 1], got {share}")
    keep = k - int(round(share * k))
    out = []
    for b, g in zip(base, gen):
        got = list(dict.fromkeys(b[:keep]))
        seen = set(got)
        for p in [*g, *b[keep:]]:
            if len(got) >= k:
                break
            if p not in seen:
                got.append(p)
                seen.add(p)
        out.append(got)
    return out
