import numpy as np
import pytest
import torch

from workbench.gen.trie import compile_trie
from workbench.sid.index import SIDIndex


def paths(trie):
    """Every path the trie allows, walked level by level with valid_mask and step (batched over nodes)."""
    nodes, prefixes = torch.zeros(1, dtype=torch.long), [()]
    for lvl in range(trie.levels):
        mask = trie.valid_mask(lvl, nodes)  # (P, K)
        p, t = torch.nonzero(mask, as_tuple=True)
        nxt = trie.step(lvl, nodes[p], t)
        assert (nxt >= 0).all()
        prefixes = [prefixes[i] + (int(k),) for i, k in zip(p.tolist(), t.tolist())]
        nodes = nxt
    return sorted(prefixes)


@pytest.mark.parametrize("budget", [1 << 24, 0])  # dense tables, then CSR only
def test_trie_allows_exactly_the_index(budget):
    r = np.random.default_rng(0)
    codes = np.column_stack([r.integers(0, 8, 500), r.integers(0, 4, 500), r.integers(0, 16, 500)])
    index = SIDIndex.from_codes(codes, (8, 4, 16))
    trie = compile_trie(index, dense_budget=budget)
    assert all(t is None for t in trie.next_node) == (budget == 0)
    assert paths(trie) == sorted(map(tuple, index.sids.tolist()))


def test_invalid_tokens_step_to_minus_one_and_both_layouts_agree():
    index = SIDIndex.from_codes(np.array([[0, 1], [0, 2], [3, 0]]), (4, 3))
    dense, csr = compile_trie(index), compile_trie(index, dense_budget=0)
    nodes = torch.tensor([[0, 0], [0, 0]])
    toks = torch.tensor([[0, 1], [3, 2]])
    assert dense.step(0, nodes, toks).tolist() == [[0, -1], [1, -1]] == csr.step(0, nodes, toks).tolist()
    both = torch.tensor([0, 1])  # depth-1 nodes: prefix (0,), prefix (3,)
    assert dense.valid_mask(1, both).tolist() == [[False, True, True], [True, False, False]] == csr.valid_mask(1, both).tolist()
    assert csr.fanout == [2, 2]
