"""The tree head: the generator's level heads start as a search of the SID tree in embedding space.

Every node of the SID tree (a valid prefix of length 1..L) gets a vector, initialised to the mean of
its products' sentence embeddings (unit norm), and the level-l logit of code c after prefix p is

    tree(q, p, c) = scale_l * <q, e(p + c)>          (0 where p + c is not a node)

added to the decoder's own logit, with q the query's unit-norm sentence embedding. Before any
training the generator is then a beam search of the cluster tree by cosine to each cluster's centroid,
which on a catalog without logs already ranks clusters the way dense retrieval ranks products; the
node vectors, the scales and the decoder then learn from the curriculum like any other weight.

The head keeps its own copy of the tree (dense child tables, nodes numbered in sorted prefix order),
so a generator never depends on the SID index it is served with: a SID added later (`workbench sid
assign`) is simply not a node (tree logit 0), and the decoder scores it alone.

    next[l]   (N_l, K_l) int32   child node at depth l+1 of depth-l node and code, -1 if none (N_0 = 1)
    node[l]   (N_{l+1}, D)       the vectors, a parameter per level
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MAX_TABLE = 1 << 24  # entries of one level's dense child table


def tree_tables(codes: np.ndarray, vocab: tuple[int, ...]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(N, L) product codes -> per level the dense child table (N_l, K_l) and each product's depth-(l+1)
    node (N,). Nodes at depth l are the distinct prefixes of length l in sorted order."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2 or codes.shape[1] != len(vocab) or not len(codes):
        raise ValueError(f"the tree head needs (N, {len(vocab)}) product codes, got shape {codes.shape}")
    tables, members = [], []
    parent, n_parent = np.zeros(len(codes), np.int64), 1
    for lvl, k in enumerate(vocab):
        if n_parent * k > MAX_TABLE:
            raise ValueError(f"the tree head's level {lvl + 1} table would hold {n_parent * k:,} entries (> {MAX_TABLE:,}); "
                             "use fewer codes per level or no tree head")
        prefixes, child = np.unique(codes[:, : lvl + 1], axis=0, return_inverse=True)  # sorted: the trie's numbering
        child = child.reshape(-1)
        table = np.full((n_parent, k), -1, np.int32)
        table[parent, codes[:, lvl]] = child
        tables.append(table)
        members.append(child)
        parent, n_parent = child, len(prefixes)
    return tables, members


def tree_nodes(codes: np.ndarray) -> tuple[int, ...]:
    """(N, L) product codes -> the number of tree nodes (distinct prefixes) at depths 1..L."""
    codes = np.asarray(codes)
    return tuple(len(np.unique(codes[:, : lvl + 1], axis=0)) for lvl in range(codes.shape[1]))


class TreeHead(nn.Module):
    def __init__(self, vocab: tuple[int, ...], nodes: tuple[int, ...], dim: int, scale: float = 20.0):
        super().__init__()
        if len(nodes) != len(vocab):
            raise ValueError(f"the tree head needs a node count per level ({len(vocab)}), got {nodes}")
        parents = (1, *nodes[:-1])
        for lvl, (n, k) in enumerate(zip(parents, vocab)):
            self.register_buffer(f"next{lvl}", torch.full((n, k), -1, dtype=torch.int32))
        self.node = nn.ParameterList(nn.Parameter(torch.zeros(n, dim)) for n in nodes)  # L x (N_{l+1}, D)
        self.scale = nn.Parameter(torch.full((len(vocab),), float(scale)))

    def next(self, level: int) -> torch.Tensor:
        return getattr(self, f"next{level}")

    @torch.no_grad()
    def init_from(self, codes: np.ndarray, vectors: np.ndarray) -> None:
        """Child tables from the products' (N, L) codes; node vectors = their products' mean (N, D) vector."""
        tables, members = tree_tables(codes, tuple(self.next(lvl).shape[1] for lvl in range(len(self.node))))
        v = F.normalize(torch.as_tensor(np.asarray(vectors), dtype=torch.float32), dim=-1)
        if len(v) != len(codes) or v.shape[1] != self.node[0].shape[1]:
            raise ValueError(f"{len(codes)} products' codes need ({len(codes)}, {self.node[0].shape[1]}) vectors, got {tuple(v.shape)}")
        for lvl, (table, child) in enumerate(zip(tables, members)):
            if table.shape != tuple(self.next(lvl).shape) or child.max() + 1 != len(self.node[lvl]):
                raise ValueError(f"level {lvl + 1}: the products' tree has {child.max() + 1} nodes under a {table.shape} table, "
                                 f"the head {len(self.node[lvl])} under {tuple(self.next(lvl).shape)}")
            self.next(lvl).copy_(torch.as_tensor(table))
            sums = torch.zeros_like(self.node[lvl]).index_add_(0, torch.as_tensor(child), v)
            self.node[lvl].copy_(F.normalize(sums, dim=-1))

    def walk(self, prefix: torch.Tensor) -> torch.Tensor:
        """(..., t) codes -> (...,) their depth-t node, -1 where the prefix is not in the tree."""
        node = torch.zeros(prefix.shape[:-1], dtype=torch.long, device=prefix.device)
        for lvl in range(prefix.shape[-1]):
            nxt = self.next(lvl)[node.clamp_min(0), prefix[..., lvl]].long()
            node = torch.where(node >= 0, nxt, node)
        return node

    def logits(self, query: torch.Tensor, node: torch.Tensor, level: int) -> torch.Tensor:
        """query (B, D) unit norm, node (B, W) depth-`level` nodes -> (B, W, K_level) tree logits."""
        child = self.next(level)[node.clamp_min(0)].long()  # (B, W, K)
        child = child.masked_fill((node < 0)[..., None], -1)
        vec = self.node[level]
        if child[0].numel() < len(vec):  # few children per query (training, narrow beams): gather their vectors
            rows = F.embedding(child.clamp_min(0).flatten(1), vec)  # (B, W*K, D): a row gather, faster than vec[child]
            got = (rows @ query[:, :, None]).view(child.shape)  # (B, W*K, 1) -> (B, W, K)
        else:  # score every node of the level once per query, then gather
            got = (query @ vec.T).gather(1, child.clamp_min(0).flatten(1)).view(child.shape)  # (B, N) -> (B, W, K)
        return self.scale[level] * got.masked_fill(child < 0, 0.0)
