"""A compact in-cluster order: the product vectors product-quantised (Jégou et al., 2011), so the generative
channel's cosine order holds M bytes per product instead of 4 x d.

    train   cut the d dimensions into M sub-spaces of d / M; k-means (FAISS's ProductQuantizer) learns 256
            centroids per sub-space on the product vectors (FAISS samples 256 per centroid at most)
    encode  each product -> M one-byte codes: its nearest centroid in each sub-space
    score   <q, p^> = sum_m <q_m, C_m[code_m(p)]>: per query one (M, 256) table of sub-space inner products,
            then per candidate M lookups and a sum (asymmetric: the query stays float, only products are coded),
            in a compiled loop (`adc`, numba) that reads each candidate's M bytes in place: about 0.1 us a
            candidate in consecutive rows, so a larger candidate pool costs little (numpy's fancy indexing
            builds an (n, M) float array first: 5 to 6 times slower at 6,400 to 25,600 candidates;
            `workbench bench pq-score`)

Invariants: a product vector that is a concatenation of centroids is coded exactly, so its score equals the
float32 inner product up to float rounding (the toy test); memory per product is M bytes plus a shared
M x 256 x d / M float32 codebook.
"""

from __future__ import annotations

from collections.abc import Iterable

import numba
import numpy as np

BITS = 8  # one byte per code: 256 centroids per sub-space


@numba.njit(cache=True, nogil=True)
def adc(table: np.ndarray, codes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Asymmetric distance computation: (M, 256) float32 table, (N, M) uint8 codes, (n,) rows -> (n,) float32,
    out[i] = sum_m table[m, codes[rows[i], m]], summed in float64."""
    out = np.empty(len(rows), np.float32)
    for i in range(len(rows)):
        r, acc = rows[i], 0.0
        for m in range(table.shape[0]):
            acc += table[m, codes[r, m]]
        out[i] = acc
    return out


def check(d: int, m: int) -> None:
    """ValueError unless `m` codes can cut `d` dimensions into equal sub-spaces."""
    if m < 1 or d % m:
        raise ValueError(f"product quantisation cuts the {d} dimensions into M equal sub-spaces: M must divide {d}, got {m}")


class PQVectors:
    """Product-quantised unit vectors with an inner-product scorer (`dot`), in place of a float32 matrix."""

    def __init__(self, centroids: np.ndarray, codes: np.ndarray):
        self.centroids = np.ascontiguousarray(centroids, np.float32)  # (M, 256, d / M)
        self.codes = np.ascontiguousarray(codes, np.uint8)  # (N, M)
        if self.centroids.ndim != 3 or self.codes.ndim != 2 or self.codes.shape[1] != self.centroids.shape[0]:
            raise ValueError(f"codebooks {self.centroids.shape} and codes {self.codes.shape} do not fit: "
                             "expected (M, 256, d / M) and (N, M)")
        self.m, self.dsub = self.centroids.shape[0], self.centroids.shape[2]

    @classmethod
    def train(cls, vectors: np.ndarray, m: int, seed: int = 0, blocks: Iterable[np.ndarray] | None = None) -> PQVectors:
        """Learn M codebooks on `vectors` (N, d) and code them; d must divide by M, N be >= 256. With `blocks`
        (arrays of (n_i, d), a catalog larger than memory) the codebooks are learnt on `vectors` (a sample)
        and the blocks are coded one at a time, in order."""
        import faiss

        x = np.ascontiguousarray(vectors, np.float32)
        n, d = x.shape
        check(d, m)
        if n < 1 << BITS:
            raise ValueError(f"a compact order learns {1 << BITS} centroids per sub-space: it needs at least {1 << BITS} "
                             f"products, got {n:,}")
        pq = faiss.ProductQuantizer(d, m, BITS)
        pq.cp.seed, pq.cp.min_points_per_centroid = seed, 1  # few products per centroid is a fine toy, not a warning
        pq.train(x)
        centroids = faiss.vector_to_array(pq.centroids).reshape(m, 1 << BITS, d // m)
        if blocks is None:
            return cls(centroids, pq.compute_codes(x))
        return cls(centroids, np.concatenate([pq.compute_codes(np.ascontiguousarray(b, np.float32)) for b in blocks]))

    def __len__(self) -> int:
        return len(self.codes)

    def table(self, q: np.ndarray) -> np.ndarray:
        """The query's (M, 256) sub-space inner products with every centroid: what a candidate's codes look up."""
        return np.einsum("mkd,md->mk", self.centroids, q.reshape(self.m, self.dsub).astype(np.float32))

    def dot(self, rows: np.ndarray, q: np.ndarray) -> np.ndarray:
        """<q, product> for the products at `rows`, from their codes: (len(rows),) float32."""
        table = self.table(q)  # (M, 256)
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self.codes)):  # the compiled loop does not check bounds
            raise IndexError(f"rows must lie in [0, {len(self.codes)}), got {rows.min()}..{rows.max()}")
        return adc(table, self.codes, rows)  # (n,)

    def take(self, rows: np.ndarray) -> PQVectors:
        """The products at `rows`, in that order (the codebooks shared)."""
        return PQVectors(self.centroids, self.codes[np.asarray(rows, np.int64)])

    def decode(self) -> np.ndarray:
        """The vectors the codes stand for: (N, d) float32 (for measuring, not for serving)."""
        return self.centroids[np.arange(self.m), self.codes].reshape(len(self.codes), -1)

    @property
    def nbytes(self) -> int:
        """Bytes held: the codes and the shared codebooks."""
        return self.codes.nbytes + self.centroids.nbytes
