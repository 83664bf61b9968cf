"""The compiled decode (`Retriever(compiled=True)`, torch.compile) answers exactly as the eager one."""

import numpy as np
import pandas as pd
import pytest
import torch

from workbench.gen.config import GenConfig
from workbench.gen.model import Generator
from workbench.gen.retrieve import ProductLookup, Retriever
from workbench.gen.tokenizer import SentenceTokenizer
from workbench.gen.tree import tree_nodes
from workbench.sid.index import SIDIndex

VOCAB = (16, 8, 4)


def sentence_retriever(compiled: bool, context_vocab: int = 0) -> Retriever:
    """A random sentence-backbone generator with the tree head (the few-logs recipe's shape) over 300 random SIDs."""
    rng = np.random.default_rng(0)
    codes = np.unique(np.column_stack([rng.integers(0, k, 400) for k in VOCAB]), axis=0)[:300]
    index = SIDIndex.from_codes(codes, VOCAB)
    tok = SentenceTokenizer("hashing-32")
    torch.manual_seed(0)
    cfg = GenConfig(sid_vocab=VOCAB, text_vocab=1, backbone="sentence", embed_dim=32, tree=tree_nodes(codes), d_model=32,
                    n_heads=4, dec_layers=2, d_ff=64, dropout=0.0, context_vocab=context_vocab)
    model = Generator(cfg).eval()
    model.tree.init_from(codes, rng.standard_normal((len(codes), 32)).astype(np.float32))
    sids = pd.DataFrame({"product_id": [f"p{i}" for i in range(len(codes))],
                         **{f"sid_{lvl + 1}": codes[:, lvl] for lvl in range(len(VOCAB))}})
    return Retriever(model, tok, index, ProductLookup(index, sids), compiled=compiled)


QUERIES = ["cordless drill", "led bulb 60w", "garden hose", "ceiling fan with light", "paint roller", "door knob"]


def same_beams(a, b) -> None:
    assert torch.equal(a.sids, b.sids)
    assert torch.equal(a.row, b.row)
    torch.testing.assert_close(a.logp, b.logp, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_decode_equals_eager_at_each_batch_shape_and_width():
    eager, compiled = sentence_retriever(False), sentence_retriever(True)
    for texts, width in [(QUERIES[:1], 8), (QUERIES, 8), (QUERIES[:3], 8), (QUERIES[:2], 3)]:
        same_beams(compiled.decode(texts, width), eager.decode(texts, width))
    with compiled.model.using("tree"), eager.model.using("tree"):  # other logit terms than the graph's: not its answers
        same_beams(compiled.decode(QUERIES, 8), eager.decode(QUERIES, 8))
    with torch.no_grad():  # weights changed in place reach the graph
        for m in (compiled.model, eager.model):
            m.head.bias.add_(torch.linspace(-1, 1, m.head.bias.numel()))
    same_beams(compiled.decode(QUERIES, 8), eager.decode(QUERIES, 8))
    got, want = compiled.search(QUERIES, 8), eager.search(QUERIES, 8)
    assert [[(h.sid, h.products) for h in q] for q in got] == [[(h.sid, h.products) for h in q] for q in want]
    np.testing.assert_allclose([h.logp for q in got for h in q], [h.logp for q in want for h in q], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_decode_with_users_and_a_gate_equals_eager():
    eager, compiled = sentence_retriever(False, 10), sentence_retriever(True, 10)
    ctx = torch.tensor([[1, 2, -1], [3, -1, -1]])
    same_beams(compiled.decode(QUERIES[:2], 4, ctx, 0.5), eager.decode(QUERIES[:2], 4, ctx, 0.5))  # both memories, mixed


def test_a_compiled_retriever_refuses_bad_inputs_before_compiling():
    r = sentence_retriever(True)
    with pytest.raises(ValueError, match="beam width"):
        r.decode(QUERIES[:1], 0)
    with pytest.raises(ValueError, match="gate"):
        r.decode(QUERIES[:1], 4, torch.tensor([[-1]]), float("nan"))
    with pytest.raises(ValueError, match="empty"):
        r.decode([""], 4)


@pytest.mark.slow
def test_a_compiled_engine_serves_the_eager_answers(trained):
    """What `workbench serve --compiled` loads: the engine's answers (SIDs, products, scores) are the eager ones."""
    from workbench.engine import Engine
    from workbench.service import ServeConfig

    ws, _ = trained
    assert ServeConfig(compiled=True).compiled and not ServeConfig().compiled
    queries = ws.table("queries")["query"].astype(str).tolist()[:5]
    eager, compiled = Engine(ws, width=8), Engine(ws, width=8, compiled=True)
    assert compiled.retriever.compiled and not eager.retriever.compiled
    for a, b in zip(compiled.search_many(queries), eager.search_many(queries)):
        assert a.sids() == b.sids() and a.products == b.products
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)
