"""The SID index: every valid SID once, sorted, with how many products it holds.

It is the set of paths a constrained decoder may emit. Sorted rows make every prefix a contiguous
range, so the decoder compiles it into per-level transition tables (CSR: for each prefix, the
range of its children) with a few vectorised passes; `children` is the reference implementation.
Stored as Parquet with the codebook sizes in the file's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.workspace import atomic_write


@dataclass(frozen=True)
class SIDIndex:
    sids: np.ndarray  # (M, L) int32, lexicographically sorted, unique
    counts: np.ndarray  # (M,) products per SID
    vocab: tuple[int, ...]  # tokens per position (K_l per level; then max dedup + 1 in unique mode)

    @classmethod
    def from_codes(cls, codes: np.ndarray, codebook_sizes: tuple[int, ...]) -> SIDIndex:
        """Codes (N, L) or, in unique mode, (N, L + 1) with the dedup token last."""
        if codes.ndim != 2 or len(codes) == 0 or codes.shape[1] not in (len(codebook_sizes), len(codebook_sizes) + 1):
            raise ValueError(f"SID index needs a non-empty (N, {len(codebook_sizes)}[+1]) codes array, got shape {codes.shape}")
        sids, counts = np.unique(codes, axis=0, return_counts=True)  # lexicographic order
        vocab = list(codebook_sizes)
        if codes.shape[1] > len(codebook_sizes):
            vocab.append(int(codes[:, -1].max()) + 1)
        return cls(sids.astype(np.int32), counts.astype(np.int64), tuple(vocab))

    @property
    def levels(self) -> int:
        return self.sids.shape[1]

    def prefixes(self, length: int) -> np.ndarray:
        """(P, length) distinct valid prefixes, sorted."""
        return np.unique(self.sids[:, :length], axis=0)

    def rows(self, sids: np.ndarray) -> np.ndarray:
        """(B, L) -> (B,) the row of each SID in the index, -1 where it is not a valid SID."""
        sids = np.asarray(sids, dtype=np.int64).reshape(-1, self.levels)
        rows = np.ascontiguousarray(self.sids.astype(np.int64))
        key = rows.view([("", np.int64)] * self.levels).reshape(-1)
        q = np.ascontiguousarray(sids).view([("", np.int64)] * self.levels).reshape(-1)
        pos = np.searchsorted(key, q).clip(0, len(key) - 1)
        return np.where(key[pos] == q, pos, -1)

    def contains(self, sids: np.ndarray) -> np.ndarray:
        """(B, L) -> (B,) whether each row is a valid SID."""
        return self.rows(sids) >= 0

    def children(self, prefix: tuple[int, ...]) -> np.ndarray:
        """Tokens that may follow `prefix` (sorted)."""
        n = len(prefix)
        if n >= self.levels:
            return np.zeros(0, np.int32)
        mask = (self.sids[:, :n] == np.asarray(prefix, np.int32)).all(1) if n else np.ones(len(self.sids), bool)
        return np.unique(self.sids[mask, n])

    def save(self, path: str | Path, tx=None, **meta: str) -> None:
        """`meta`: more file metadata (strings); `tx`: stage the file in that workspace transaction."""
        cols = {f"t{i + 1}": pa.array(self.sids[:, i]) for i in range(self.levels)}
        t = pa.table({**cols, "products": pa.array(self.counts)})
        t = t.replace_schema_metadata({"vocab": json.dumps(list(self.vocab)), **meta})
        atomic_write(Path(path), lambda tmp: pq.write_table(t, tmp), tx)

    @classmethod
    def load(cls, path: str | Path) -> SIDIndex:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no SID index at {path}; train SIDs with `workbench sid train`")
        try:
            t = pq.read_table(path)
            vocab = tuple(json.loads(t.schema.metadata[b"vocab"]))
        except (pa.ArrowInvalid, OSError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a SID index ({e})") from e
        sids = np.stack([t.column(f"t{i + 1}").to_numpy() for i in range(len(vocab))], 1).astype(np.int32)
        return cls(sids, t.column("products").to_numpy(), vocab)
