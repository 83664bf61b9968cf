"""The dense channel a team runs in production: an approximate nearest-neighbour index (FAISS) over the
product vectors, the same interface as `baselines.Dense` (`scored(queries, budget)`).

    hnsw   a graph (IndexHNSWFlat, inner product on unit vectors = cosine): M links per node, built with
           ef_construction, searched with max(ef_search, budget) candidates. The default up to a few
           million products.
    ivf    inverted lists (IndexIVFFlat): `nlist` k-means cells (0: 4 x sqrt(N)), `nprobe` of them searched.
           Less memory per product than HNSW's links, slower to reach the same recall.
    ivfpq  the same lists holding `pq_m` one-byte product-quantisation codes per product instead of its
           float32 vector (IndexIVFPQ): the index a team runs when memory matters (pq_m + 8 bytes a product
           with its id), scored from the codes, so its recall against the exact scan is lower.

Its recall against the exact scan (the share of the exact top B it returns) is what the evaluation
reports beside it (`ann_recall@B`); the parameters are `ANNConfig`'s, stated with every result.
`faiss` is imported when an index is built, so the config costs nothing to import.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

KINDS = ("hnsw", "ivf", "ivfpq")


@dataclass(frozen=True)
class ANNConfig:
    kind: str = "hnsw"  # the FAISS index: hnsw (a graph) or ivf (inverted lists)
    m: int = 32  # HNSW: links per node
    ef_construction: int = 200  # HNSW: candidates kept while building
    ef_search: int = 512  # HNSW: candidates kept while searching (at least the budget asked for)
    nlist: int = 0  # IVF: k-means cells (0: 4 x sqrt(products))
    nprobe: int = 32  # IVF: cells searched per query
    pq_m: int = 48  # IVF-PQ: one-byte codes per product (must divide the vector's dimensions)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ANN kind must be one of {KINDS}, got {self.kind!r}")
        if min(self.m, self.ef_construction, self.ef_search, self.nprobe, self.pq_m) < 1 or self.nlist < 0:
            raise ValueError(f"m, ef_construction, ef_search, nprobe and pq_m must be >= 1 and nlist >= 0, got {self}")


def default_nlist(n: int) -> int:
    """IVF cells when ANNConfig.nlist is 0: 4 x sqrt(products)."""
    return max(1, int(4 * math.sqrt(n)))


class ANN:
    """A FAISS index over unit-norm product vectors; queries encoded by `embedder`."""

    name = "dense-ann"
    slots = False

    def __init__(self, ids: list[str], vectors: np.ndarray | Iterable[np.ndarray], embedder, cfg: ANNConfig | None = None,
                 query_dtype: str = "float32", sample: np.ndarray | None = None):
        """`vectors`: (N, d) unit vectors in the order of `ids`; or blocks of them in that order (a catalog larger
        than memory: the index holds its own copy or codes, never the whole float32 matrix twice), and then
        `sample`, the vectors the IVF kinds learn their cells and codes on (and that give d)."""
        import faiss

        self.cfg = cfg = cfg or ANNConfig()
        if isinstance(vectors, np.ndarray):
            vectors = sample = np.ascontiguousarray(vectors, dtype=np.float32)
            if len(ids) != len(vectors) or not len(vectors):
                raise ValueError(f"an ANN index needs one vector per product, got {len(ids)} ids and {len(vectors)} vectors")
            blocks = (vectors,)
        elif sample is None:
            raise ValueError("an ANN index built from blocks of vectors needs `sample`, vectors to learn on (and to give d)")
        else:
            blocks, sample = vectors, np.ascontiguousarray(sample, dtype=np.float32)
        self.ids, self.embedder, self.query_dtype = np.asarray(ids, dtype=object), embedder, query_dtype
        d, n = sample.shape[1], len(ids)
        if cfg.kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, cfg.m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = cfg.ef_construction
        else:
            nlist = cfg.nlist or default_nlist(n)
            if nlist > len(sample):
                raise ValueError(f"an IVF index of {nlist} cells cannot be trained on {len(sample)} products: "
                                 f"give nlist <= {len(sample)} (0 picks 4 x sqrt(products))")
            quantizer = faiss.IndexFlatIP(d)
            if cfg.kind == "ivf":
                self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            else:
                if d % cfg.pq_m:
                    raise ValueError(f"IVF-PQ cuts the {d} dimensions into pq_m equal parts: pq_m must divide {d}, got {cfg.pq_m}")
                if len(sample) < 256:
                    raise ValueError(f"IVF-PQ learns 256 centroids per part: it needs at least 256 products, got {len(sample)}")
                self.index = faiss.IndexIVFPQ(quantizer, d, nlist, cfg.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
                self.index.cp.min_points_per_centroid = self.index.pq.cp.min_points_per_centroid = 1
            self.index.train(sample)
            self.index.nprobe = min(cfg.nprobe, nlist)
        for block in blocks:
            self.index.add(np.ascontiguousarray(block, dtype=np.float32))
        if self.index.ntotal != n:
            raise ValueError(f"an ANN index needs one vector per product, got {n} ids and {self.index.ntotal} vectors")

    def search(self, queries: list[str], k: int) -> list[list[str]]:
        return [ids for ids, _ in self.scored(queries, k)]

    def scored(self, queries: list[str], k: int, vectors: np.ndarray | None = None) -> list[tuple[list[str], np.ndarray]]:
        """Per query: up to k products and their cosines, best first."""
        k = min(k, len(self.ids))
        q = self.embedder.encode(list(queries), dtype=self.query_dtype) if vectors is None else vectors
        if self.cfg.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.cfg.ef_search, k)
        scores, rows = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return [(self.ids[r[r >= 0]].tolist(), s[r >= 0]) for s, r in zip(scores, rows)]
