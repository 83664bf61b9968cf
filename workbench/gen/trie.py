"""The SID index compiled into transition tables on the device (STATIC-style, arXiv 2602.22647).

Nodes at depth l are the distinct valid prefixes of length l, numbered in sorted order (depth 0 is
the root, node 0). Because the index is sorted, the children of a node are a contiguous run of the
depth-(l+1) nodes, so each level is a CSR table:

    indptr[l]  (P_l + 1,)   children of node p are depth-(l+1) nodes indptr[l][p] .. indptr[l][p+1]-1
    tokens[l]  (P_{l+1},)   the token that leads to each depth-(l+1) node

and, where P_l x K_l fits `dense_budget` entries, also a dense table next_node[l] (P_l, K_l) holding the
child node or -1: one gather per decoding step. Both answer the two questions a constrained decoder
asks, for any batch shape of nodes and without a Python loop over beams:

    valid_mask(l, node)        (..., K_l) bool: which tokens may follow
    step(l, node, token)       (...,) the child node, -1 where the token is not allowed
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workbench.sid.index import SIDIndex


@dataclass
class Trie:
    vocab: tuple[int, ...]
    indptr: list[torch.Tensor]
    tokens: list[torch.Tensor]
    fanout: list[int]  # largest number of children of a node, per level
    next_node: list[torch.Tensor | None]  # dense tables where they fit

    @property
    def levels(self) -> int:
        return len(self.vocab)

    def valid_mask(self, level: int, node: torch.Tensor) -> torch.Tensor:
        if self.next_node[level] is not None:
            return self.next_node[level][node] >= 0
        lo, hi = self.indptr[level][node], self.indptr[level][node + 1]
        idx = lo[..., None] + torch.arange(self.fanout[level], device=node.device)  # (..., F) candidate children
        ok = idx < hi[..., None]
        tok = self.tokens[level][idx.clamp_max(len(self.tokens[level]) - 1)]
        hits = torch.zeros(*node.shape, self.vocab[level], dtype=torch.int32, device=node.device)
        return hits.scatter_add_(-1, torch.where(ok, tok, 0), ok.int()) > 0  # padding slots add 0 to token 0

    def step(self, level: int, node: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        if self.next_node[level] is not None:
            return self.next_node[level][node, token]
        lo, hi = self.indptr[level][node], self.indptr[level][node + 1]
        idx = lo[..., None] + torch.arange(self.fanout[level], device=node.device)  # (..., F)
        ok = idx < hi[..., None]
        hit = ok & (self.tokens[level][idx.clamp_max(len(self.tokens[level]) - 1)] == token[..., None])
        return torch.where(hit.any(-1), (idx * hit).sum(-1), torch.full_like(node, -1))


def compile_trie(index: SIDIndex, device: str | torch.device = "cpu", dense_budget: int = 1 << 24) -> Trie:
    """Transition tables for `index` on `device`; dense per level where P_l * K_l <= dense_budget."""
    sids = index.sids.astype(np.int64)
    indptr, tokens, fanout, dense = [], [], [], []
    parent = np.zeros(len(sids), np.int64)  # node id of each row's prefix at the current depth
    n_parent = 1
    for lvl in range(index.levels):
        # depth-(l+1) node of each row: a new node starts where the prefix of length l+1 changes
        change = np.r_[True, (sids[1:, : lvl + 1] != sids[:-1, : lvl + 1]).any(1)]
        child = np.cumsum(change) - 1
        first = np.flatnonzero(change)
        tok, par = sids[first, lvl], parent[first]
        ptr = np.zeros(n_parent + 1, np.int64)
        np.add.at(ptr, par + 1, 1)
        ptr = np.cumsum(ptr)
        indptr.append(torch.as_tensor(ptr, device=device))
        tokens.append(torch.as_tensor(tok, device=device))
        fanout.append(int(np.diff(ptr).max()))
        if n_parent * index.vocab[lvl] <= dense_budget:
            table = np.full((n_parent, index.vocab[lvl]), -1, np.int64)
            table[par, tok] = np.arange(len(first))
            dense.append(torch.as_tensor(table, device=device))
        else:
            dense.append(None)
        parent, n_parent = child, len(first)
    return Trie(tuple(index.vocab), indptr, tokens, fanout, dense)
