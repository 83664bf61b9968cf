"""Query (+ context) -> SIDs -> products: the generator, its tokenizer, the compiled trie and the
product lists of every SID, loaded once and used by the CLI, the evaluation, the benchmarks and the app.

Products of a SID come in popularity order (purchases and clicks on training queries, then id), so
a retrieved list cut at K products is deterministic. `search` returns per query a list of `Hit`s,
best SID first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.data.relevance import held_out, relevance
from workbench.gen import store
from workbench.gen.beam import Beams, beam_search
from workbench.gen.data import sid_matrix
from workbench.gen.model import Generator
from workbench.gen.tokenizer import TextTokenizer
from workbench.gen.trie import compile_trie
from workbench.sid.index import SIDIndex
from workbench.sid.store import load_sids, sid_dir


@dataclass(frozen=True)
class Hit:
    sid: tuple[int, ...]
    logp: float
    products: list[str]


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

    def __call__(self, row: int) -> list[str]:
        return self.ids[self.offsets[row]: self.offsets[row + 1]].tolist()


def popularity(ws) -> pd.Series:
    """Purchases (2) and clicks (1) per product, on training queries only."""
    rel = relevance(ws, ("purchased", "clicked"))
    rel = rel[~held_out(rel["query_id"])]
    return rel.groupby("product_id")["weight"].sum()


class Retriever:
    def __init__(self, model: Generator, tok: TextTokenizer, index: SIDIndex, lookup: ProductLookup, device: str = "cpu"):
        if tuple(index.vocab) != tuple(model.cfg.sid_vocab):
            raise ValueError(f"the SID index's vocabulary {tuple(index.vocab)} does not match the generator's "
                             f"{tuple(model.cfg.sid_vocab)}: retrain the generator on these SIDs")
        self.model, self.tok, self.index, self.lookup, self.device = model, tok, index, lookup, device
        self.trie = compile_trie(index, device)
        self._context = None

    @classmethod
    def from_workspace(cls, ws, name: str = "generator", device: str = "cpu") -> Retriever:
        model, tok, _ = store.load(ws, name, device)
        index = SIDIndex.load(sid_dir(ws) / "index.parquet")
        return cls(model, tok, index, ProductLookup(index, load_sids(ws), popularity(ws)), device)

    def users(self, ws, history: int = 5):
        """The workspace's UserContext for this generator (built once). A generator trained without
        users (no stage 3) refuses."""
        from workbench.gen.context import UserContext

        if self.model.cfg.context_vocab == 0:
            raise ValueError("this generator was trained without users (stage 3); train with `workbench train --stages 1,2,3`")
        if self._context is None:
            ctx = UserContext.from_workspace(ws, load_sids(ws), self.index.vocab, history)
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
    def decode(self, texts: list[str], width: int, context: torch.Tensor | None = None) -> Beams:
        ids, mask = self.tok.encode(texts, self.model.cfg.max_len, self.device)
        mem = self.model.memory(ids, mask, None if context is None else context.to(self.device))
        return beam_search(self.model, mem, self.trie, width)

    def search(self, texts: list[str], width: int = 16, context: torch.Tensor | None = None,
               batch_size: int = 64) -> list[list[Hit]]:
        out = []
        for s in range(0, len(texts), batch_size):
            ctx = None if context is None else context[s:s + batch_size]
            for hits in self.decode(texts[s:s + batch_size], width, ctx).to_lists():
                out.append([Hit(sid, lp, self.lookup(row)) for sid, lp, row in hits])
        return out


def ranked_products(hits: list[Hit], k: int | None = None) -> list[str]:
    """The retrieved list: products of the best SID first, then the next SID's, ... (cut at k)."""
    out = [p for h in hits for p in h.products]
    return out if k is None else out[:k]
