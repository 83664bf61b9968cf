"""Pseudo-queries: training text drawn from the product text itself ("document as query").

Generative retrieval learns to map *queries* to IDs, yet a catalog before launch has few logged
queries. Pradeep et al. 2023 (arXiv 2305.11841) found queries sampled from the document itself the
single most useful training text; NCI (arXiv 2206.02743) used them beside generated queries. Here,
for each product, `per_product` pseudo-queries, each of one kind:

    span      a contiguous run of min_words..max_words words of the title
    drop      words of the title dropped at random, the rest kept in order (min..max words)
    shuffle   a span with its words reordered (people type "drill cordless 20v")
    abbrev    a span with the abbreviations shoppers type (inch -> in, gallon -> gal: ABBREVIATIONS)
    brand     the brand, then a span (where the catalog has brands)
    category  the category's leaf, then a short span (where the catalog has categories)

Words are lowercased with punctuation trimmed, the way people type. Deterministic: each product's
queries come from its own generator seeded by (seed, product id), so adding products or reordering
the catalog changes no other product's queries. A pseudo-query is only ever built from product text;
`exclude` drops any that happen to equal a text the caller names (the validation and test queries), so the
evaluation text is never training text, even by coincidence.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("span", "drop", "shuffle", "abbrev", "brand", "category")
ABBREVIATIONS = {"inch": "in", "inches": "in", "foot": "ft", "feet": "ft", "pound": "lb", "pounds": "lbs",
                 "gallon": "gal", "gallons": "gal", "volt": "v", "volts": "v", "watt": "w", "watts": "w",
                 "ounce": "oz", "ounces": "oz", "square": "sq", "stainless": "ss", "package": "pk", "pack": "pk",
                 "and": "&", "with": "w/", "millimeter": "mm", "centimeter": "cm", "amp": "a", "amps": "a"}
_WORD = re.compile(r"[^\W_][\w./'-]*", re.UNICODE)


@dataclass(frozen=True)
class PseudoConfig:
    per_product: int = 4  # pseudo-queries per product (0: none)
    min_words: int = 2  # shortest pseudo-query, in words
    max_words: int = 6  # longest pseudo-query, in words
    seed: int = 0  # random seed (same seed, same queries)

    def __post_init__(self):
        if self.per_product < 0 or not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"per_product >= 0 and 1 <= min_words <= max_words needed, got {self.per_product}, "
                             f"{self.min_words}, {self.max_words}")


def words(text) -> list[str]:
    """Lowercased words, punctuation trimmed: '18-Volt, Cordless (Tool Only)' -> ['18-volt', 'cordless', 'tool', 'only']."""
    return [w.strip(".'-/") for w in _WORD.findall(str(text).lower()) if w.strip(".'-/")]


def _rng(seed: int, product_id: str) -> np.random.Generator:
    h = hashlib.blake2b(f"{seed}\0{product_id}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(h, "little"))


def _span(w: list[str], r: np.random.Generator, lo: int, hi: int) -> list[str]:
    n = int(r.integers(min(lo, len(w)), min(hi, len(w)) + 1))
    start = int(r.integers(0, len(w) - n + 1))
    return w[start:start + n]


def one(w: list[str], kind: str, r: np.random.Generator, cfg: PseudoConfig, brand: list[str], leaf: list[str]) -> list[str]:
    """One pseudo-query's words of `kind` from title words `w` (see the module docstring)."""
    lo, hi = cfg.min_words, cfg.max_words
    if kind == "span":
        return _span(w, r, lo, hi)
    if kind == "drop":
        n = int(r.integers(min(lo, len(w)), min(hi, len(w)) + 1))
        return [w[i] for i in np.sort(r.choice(len(w), n, replace=False))]
    if kind == "shuffle":
        s = _span(w, r, max(lo, 2), hi)
        return [s[i] for i in r.permutation(len(s))]
    if kind == "abbrev":
        return [ABBREVIATIONS.get(x, x) for x in _span(w, r, lo, hi)]
    if kind == "brand":
        return brand + _span(w, r, max(lo - len(brand), 1), max(hi - len(brand), 1))
    if kind == "category":
        return leaf + _span(w, r, 1, max(hi - len(leaf), 1))
    raise ValueError(f"unknown pseudo-query kind {kind!r}; kinds: {', '.join(KINDS)}")


def pseudo_queries(products: pd.DataFrame, cfg: PseudoConfig | None = None, exclude=()) -> pd.DataFrame:
    """product_id, query, kind: `cfg.per_product` distinct pseudo-queries per product (fewer for very
    short titles), none equal to a text in `exclude` (compared as words)."""
    cfg = cfg or PseudoConfig()
    if products.empty:
        raise ValueError("no products to draw pseudo-queries from")
    banned = {" ".join(words(t)) for t in exclude}
    has_brand, has_cat = "brand" in products, "category" in products
    rows = []
    for rec in products.itertuples(index=False):
        w = words(rec.title)
        if not w or cfg.per_product == 0:
            continue
        brand = words(rec.brand) if has_brand and isinstance(rec.brand, str) else []
        leaf = words(rec.category.split(">")[-1]) if has_cat and isinstance(rec.category, str) else []
        kinds = [k for k in KINDS if (k != "brand" or brand) and (k != "category" or leaf)]
        r, seen = _rng(cfg.seed, str(rec.product_id)), set()
        for _ in range(4 * cfg.per_product):  # distinct queries; a short title may have fewer
            if len(seen) == cfg.per_product:
                break
            kind = kinds[int(r.integers(len(kinds)))]
            q = " ".join(one(w, kind, r, cfg, brand, leaf))
            if q and q not in seen and q not in banned:
                seen.add(q)
                rows.append((str(rec.product_id), q, kind))
    return pd.DataFrame(rows, columns=["product_id", "query", "kind"])
