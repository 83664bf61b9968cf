"""Which queries train, which choose and which report: train / validation / test by a hash of the
normalised query text.

    normalise(texts)       NFKC, case-folded, whitespace collapsed: the form that decides a query's side
    side(texts)            (N,) "train" | "validation" | "test"
    sides(ws, query_ids)   the same through the workspace's queries table
    mask(ws, query_ids, *names)   (N,) bool: the query ids on those sides

Invariants:
- a query's side is a pure function of its text: file order, query ids and rows added later change
  nothing, and "Cordless  Drill" and "cordless drill" land together;
- TEST of the hash space reports, VALIDATION chooses (recipes, epochs, the fusion model, the served
  beam width), the rest trains; nothing trained (SIDs, generator, tokenizer, pseudo-queries, teacher
  labels, ranker, fusion) reads a validation or test query, and test is never tuned on;
- every artifact trained on queries records `SPLIT` in its lineage, and readers refuse one that
  records another split (or none: trained before this split existed), naming the command that
  rebuilds it (`lineage.check_split`).
"""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np
import pandas as pd

TEST = 0.2  # share of the query space that reports
VALIDATION = 0.1  # share that chooses settings
NAMES = ("train", "validation", "test")
SPLIT = f"query-text:v1:test={TEST}:validation={VALIDATION}"  # recorded in the lineage of what trains on queries


def normalise(texts) -> list[str]:
    return [" ".join(unicodedata.normalize("NFKC", str(t)).casefold().split()) for t in texts]


def side(texts) -> np.ndarray:
    """(N,) the side of each query text."""
    h = np.asarray([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8, person=b"wb-split").digest(), "little")
                    for t in normalise(texts)], dtype=np.uint64)
    u = h.astype(np.float64) / 2.0**64  # uniform in [0, 1)
    return np.where(u < TEST, "test", np.where(u < TEST + VALIDATION, "validation", "train"))


def sides(ws, query_ids) -> np.ndarray:
    """(N,) the side of each query id, by its text in the workspace's queries table."""
    q = ws.table("queries")
    by_id = pd.Series(side(q["query"].astype(str)), index=q["query_id"].to_numpy())
    ids = pd.Index(np.asarray(query_ids))
    got = by_id.reindex(ids)
    if got.isna().any():
        raise ValueError(f"query ids without a row in {ws.table_path('queries')}: {sorted(ids[got.isna()].unique())[:5]}")
    return got.to_numpy(dtype=object)


def mask(ws, query_ids, *names: str) -> np.ndarray:
    """(N,) True where the query id's side is one of `names`."""
    bad = set(names) - set(NAMES)
    if not names or bad:
        raise ValueError(f"split names must be among {NAMES}, got {names}")
    return np.isin(sides(ws, query_ids), names)
