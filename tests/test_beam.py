import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.gen.beam import beam_search, greedy
from workbench.gen.config import GenConfig
from workbench.gen.model import Generator
from workbench.gen.trie import compile_trie
from workbench.sid.index import SIDIndex


def tiny(vocab, context_vocab=0, seed=0):
    torch.manual_seed(seed)
    cfg = GenConfig(sid_vocab=tuple(vocab), text_vocab=50, d_model=32, n_heads=4, enc_layers=1, dec_layers=2, d_ff=64,
                    context_vocab=context_vocab)
    return Generator(cfg).eval()


def random_index(rng, vocab, n):
    codes = np.column_stack([rng.integers(0, k, n) for k in vocab])
    return SIDIndex.from_codes(codes, tuple(vocab))


def queries(rng, b, t=6):
    ids = torch.as_tensor(rng.integers(4, 50, (b, t)))
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[0, t // 2:] = False  # one padded query
    return ids, mask


def exact_scores(model, mem_inputs, index):
    """Every SID of the index scored by teacher forcing: (B, M) path log-probabilities."""
    ids, mask = mem_inputs
    B, M = len(ids), len(index.sids)
    sids = torch.as_tensor(index.sids, dtype=torch.long)
    rep = lambda x: x.repeat_interleave(M, 0)  # noqa: E731  (B*M, ...)
    with torch.no_grad():
        logits = model(rep(ids), rep(mask), sids.repeat(B, 1))
    lp = sum(torch.log_softmax(lg, -1).gather(1, sids.repeat(B, 1)[:, i:i + 1])[:, 0] for i, lg in enumerate(logits))
    return lp.view(B, M)


def test_incremental_decoding_equals_teacher_forcing():
    model, rng = tiny((8, 4, 5)), np.random.default_rng(1)
    ids, mask = queries(rng, 3)
    sids = torch.as_tensor(rng.integers(0, 4, (3, 3)))
    with torch.no_grad():
        full = model(ids, mask, sids)
        mem = model.memory(ids, mask)
        cache = None
        for t in range(3):
            lg, cache = model.step(mem, sids[:, None, :t] if t else None, t, cache, 1)
            torch.testing.assert_close(lg[:, 0], full[t], atol=1e-5, rtol=1e-5)


def test_width_one_is_constrained_greedy():
    rng = np.random.default_rng(2)
    index = random_index(rng, (16, 8, 8), 300)
    model, trie = tiny(index.vocab), compile_trie(index)
    mem = model.memory(*queries(rng, 8))
    b, g = beam_search(model, mem, trie, 1), greedy(model, mem, trie)
    assert torch.equal(b.sids, g.sids) and torch.equal(b.row, g.row)
    torch.testing.assert_close(b.logp, g.logp)


def test_a_width_beyond_the_index_returns_every_sid_once_in_exact_order():
    rng = np.random.default_rng(3)
    index = random_index(rng, (6, 3, 4), 40)
    model, trie = tiny(index.vocab), compile_trie(index)
    inputs = queries(rng, 4)
    res = beam_search(model, model.memory(*inputs), trie, len(index.sids) + 50)
    exact = exact_scores(model, inputs, index)
    assert res.valid.sum(1).tolist() == [len(index.sids)] * 4  # the rest are empty slots, never invalid SIDs
    assert not res.valid[:, len(index.sids):].any()
    for q, hits in enumerate(res.to_lists()):
        rows = [r for _, _, r in hits]
        assert sorted(rows) == list(range(len(index.sids)))  # each SID once, and row = its index row
        assert [s for s, _, _ in hits] == [tuple(index.sids[r]) for r in rows]
        torch.testing.assert_close(torch.tensor([lp for _, lp, _ in hits]), exact[q, rows], atol=1e-4, rtol=1e-4)
        assert rows == exact[q].argsort(descending=True).tolist()  # beam search with room for all is exact


@settings(max_examples=30, deadline=None)
@given(vocab=st.lists(st.integers(1, 9), min_size=1, max_size=3), n=st.integers(1, 60),
       width=st.integers(1, 40), batch=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_beam_search_never_yields_an_invalid_sid(vocab, n, width, batch, seed):
    rng = np.random.default_rng(seed)
    index = random_index(rng, vocab, n)
    model, trie = tiny(vocab, seed=seed % 7), compile_trie(index, dense_budget=seed % 2 * (1 << 20))  # dense or CSR
    res = beam_search(model, model.memory(*queries(rng, batch)), trie, width)
    assert res.valid.sum(1).tolist() == [min(width, len(index.sids))] * batch
    for hits in res.to_lists():
        sids = np.array([s for s, _, _ in hits])
        assert index.contains(sids).all() and len(set(map(tuple, sids))) == len(sids)
        assert [tuple(index.sids[r]) for _, _, r in hits] == list(map(tuple, sids))
        lp = [p for _, p, _ in hits]
        assert lp == sorted(lp, reverse=True)


def test_unconstrained_search_decodes_the_same_shapes_without_a_trie():
    rng = np.random.default_rng(4)
    model = tiny((8, 4))
    res = beam_search(model, model.memory(*queries(rng, 2)), None, 16, constrained=False)
    assert res.sids.shape == (2, 16, 2) and res.row is None and res.valid.all()


def test_context_tokens_change_the_memory_and_bad_ids_are_refused():
    rng = np.random.default_rng(5)
    model = tiny((8, 4), context_vocab=10)
    ids, mask = queries(rng, 2)
    a = model.memory(ids, mask, torch.tensor([[1, -1], [2, 3]]))
    assert a.mask.shape == (2, 1, 1, 8) and a.mask[0, 0, 0].tolist()[-2:] == [True, False]
    with pytest.raises(ValueError, match="context_vocab"):
        model.memory(ids, mask, torch.tensor([[10, 0], [0, 0]]))
    with pytest.raises(ValueError, match="without context"):
        tiny((8, 4)).memory(ids, mask, torch.tensor([[1], [2]]))


def test_bf16_decoding_runs_and_stays_valid():
    rng = np.random.default_rng(6)
    index = random_index(rng, (16, 8, 8), 200)
    model = tiny(index.vocab).to(torch.bfloat16)
    res = beam_search(model, model.memory(*queries(rng, 3)), compile_trie(index), 32)
    assert index.contains(res.sids[res.valid].numpy()).all()


@pytest.mark.parametrize("width", [0, -3, 2.5, True, "8"])
def test_bad_widths_are_refused(width):
    index = SIDIndex.from_codes(np.array([[0, 1], [1, 0]]), (2, 2))
    model = tiny((2, 2))
    with pytest.raises(ValueError, match="beam width"):
        beam_search(model, model.memory(*queries(np.random.default_rng(0), 1)), compile_trie(index), width)


def test_an_index_that_does_not_match_the_model_is_refused():
    index = SIDIndex.from_codes(np.array([[0, 1], [1, 0]]), (2, 2))
    model = tiny((4, 2))
    mem = model.memory(*queries(np.random.default_rng(0), 1))
    with pytest.raises(ValueError, match="does not match the generator"):
        beam_search(model, mem, compile_trie(index), 4)
    with pytest.raises(ValueError, match="needs a trie"):
        beam_search(model, mem, None, 4)


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="backbone"):
        GenConfig(sid_vocab=(4,), text_vocab=10, backbone="gpt")
    with pytest.raises(ValueError, match="divisible"):
        GenConfig(sid_vocab=(4,), text_vocab=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="sid_vocab"):
        GenConfig(sid_vocab=(), text_vocab=10)
