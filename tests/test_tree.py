import shutil

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from workbench import Workspace
from workbench.checkpoint import load, load_into, save
from workbench.gen import stages as st
from workbench.gen.beam import beam_search, greedy
from workbench.gen.config import GenConfig
from workbench.gen.model import Generator
from workbench.gen.retrieve import Retriever
from workbench.gen.tree import MAX_TABLE, TreeHead, tree_nodes, tree_tables
from workbench.gen.trie import compile_trie
from workbench.sid.index import SIDIndex

CODES = np.array([[0, 1], [0, 1], [1, 0], [1, 1]])  # 3 SIDs; SID (0, 1) holds two products


def test_tables_and_centroids_by_hand():
    tables, members = tree_tables(CODES, (2, 2))
    assert tables[0].tolist() == [[0, 1]]  # the root's children: prefixes (0,) and (1,)
    assert tables[1].tolist() == [[-1, 0], [1, 2]]  # (0,) -> (0, 1); (1,) -> (1, 0), (1, 1)
    assert members[1].tolist() == [0, 0, 1, 2] and tree_nodes(CODES) == (2, 3)
    head = TreeHead((2, 2), (2, 3), dim=2)
    vecs = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    head.init_from(CODES, vecs)
    s = 0.5 ** 0.5
    torch.testing.assert_close(head.node[1].data, torch.tensor([[s, s], [1.0, 0.0], [0.0, 1.0]]))  # unit-norm means
    torch.testing.assert_close(head.node[0].data, torch.tensor([[s, s], [s, s]]))
    # level-2 logits after prefix (1,): scale x cosine to (1, 0) and (1, 1); after (0,): code 0 is no node -> 0
    q = torch.tensor([[1.0, 0.0]])
    got = head.logits(q, torch.tensor([[1, 0]]), 1)  # (B=1, W=2, K=2)
    torch.testing.assert_close(got, 20.0 * torch.tensor([[[1.0, 0.0], [0.0, s]]]))
    assert head.walk(torch.tensor([[0, 0], [1, 1]])).tolist() == [-1, 2]  # (0, 0) is not in the tree
    assert head.logits(q, torch.tensor([[-1]]), 1).abs().sum() == 0  # nor are its children


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="needs the sentence backbone"):
        GenConfig(sid_vocab=(2, 2), text_vocab=10, tree=(2, 3))
    with pytest.raises(ValueError, match="node count per SID level"):
        GenConfig(sid_vocab=(2, 2), text_vocab=10, backbone="sentence", tree=(2,))
    with pytest.raises(ValueError, match="tree head needs the sentence backbone"):
        st.StagesConfig(tree=True)
    with pytest.raises(ValueError, match="product codes"):
        tree_tables(np.zeros((0, 2)), (2, 2))
    with pytest.raises(ValueError, match="entries"):
        tree_tables(np.arange(2 * 2).reshape(2, 2), (MAX_TABLE, MAX_TABLE))
    head = TreeHead((2, 2), (2, 3), dim=2)
    with pytest.raises(ValueError, match="vectors"):
        head.init_from(CODES, np.ones((4, 3)))
    with pytest.raises(ValueError, match="nodes under"):
        TreeHead((2, 2), (2, 4), dim=2).init_from(CODES, np.ones((4, 2)))


def tree_model(rng, vocab=(6, 4, 3), n=120, dim=16, seed=0):
    codes = np.column_stack([rng.integers(0, k, n) for k in vocab])
    torch.manual_seed(seed)
    cfg = GenConfig(sid_vocab=vocab, text_vocab=1, backbone="sentence", embed_dim=dim, tree=tree_nodes(codes), **TINY)
    model = Generator(cfg)
    model.tree.init_from(codes, rng.normal(size=(n, dim)))
    return model.eval(), SIDIndex.from_codes(codes, vocab)


def test_decoding_with_the_tree_equals_teacher_forcing_and_greedy():
    rng = np.random.default_rng(0)
    model, index = tree_model(rng)
    q = torch.as_tensor(rng.normal(size=(5, 16)), dtype=torch.float32)
    ones = torch.ones(5, 1, dtype=torch.bool)
    sids = torch.as_tensor(index.sids[rng.integers(0, len(index.sids), 5)], dtype=torch.long)
    with torch.no_grad():
        full, mem = model(q, ones, sids), model.memory(q, ones)
        cache = None
        for t in range(3):
            lg, cache = model.step(mem, sids[:, None, :t] if t else None, t, cache, 1)
            torch.testing.assert_close(lg[:, 0], full[t], atol=1e-5, rtol=1e-5)
        assert model.tree.logits(mem.query, torch.zeros(5, 1, dtype=torch.long), 0).abs().sum() > 0  # the tree counts
    trie = compile_trie(index)
    b, g = beam_search(model, mem, trie, 1), greedy(model, mem, trie)
    assert torch.equal(b.sids, g.sids)
    torch.testing.assert_close(b.logp, g.logp)
    wide = beam_search(model, mem, trie, 8)  # both ways of scoring a level's nodes (gather, all nodes) agree
    assert index.contains(wide.sids[wide.valid].numpy()).all()


def test_untrained_tree_ranks_a_products_own_cluster_first_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    model, index = tree_model(rng, vocab=(8, 4), n=200, dim=32)
    with torch.no_grad():
        model.head.weight.zero_()  # the decoder says nothing: only the tree ranks
        model.tree.scale.fill_(50.0)
    # a query equal to a leaf's centroid decodes that leaf first
    leaf = 5
    q = model.tree.node[1].data[leaf: leaf + 1]
    b = beam_search(model, model.memory(q, torch.ones(1, 1, dtype=torch.bool)), compile_trie(index), 4)
    assert model.tree.walk(b.sids[:, 0]).item() == leaf
    save(tmp_path / "g.safetensors", model, model.cfg, kind="generator")
    state, cfg, _ = load(tmp_path / "g.safetensors", GenConfig, kind="generator")
    again = Generator(cfg)
    load_into(again, state, tmp_path / "g.safetensors")
    assert torch.equal(again.tree.next(1), model.tree.next(1)) and torch.equal(again.tree.node[1], model.tree.node[1])


def test_stages_train_a_tree_generator(trained, tmp_path):
    ws = Workspace(shutil.copytree(trained[0].path, tmp_path / "ws"))
    cfg = st.StagesConfig(stages=(1,), epochs=(1,), backbone="sentence", tree=True, model=TINY, eval_width=4)
    st.train_stages(ws, cfg, name="tree", progress=False)
    r = Retriever.from_workspace(ws, "tree")
    assert r.model.tree is not None and r.model.cfg.tree == tree_nodes(r.index.sids)
    assert [h.sid for h in r.search(["cordless drill"], 4)[0]]


def test_a_step_sums_the_terms_asked_for_and_the_probe_records_both():
    """`using("tree")` zeroes the decoder's own logits, `using("decoder")` the tree head's; the full step is
    their sum; the probe logs each term's mean |logit| per level."""
    rng = np.random.default_rng(2)
    model, index = tree_model(rng)
    q = torch.as_tensor(rng.normal(size=(3, 16)), dtype=torch.float32)
    mem = model.memory(q, torch.ones(3, 1, dtype=torch.bool))
    with torch.no_grad():
        full, _ = model.step(mem, None, 0, None, 2)
        with model.using("tree"):
            tree, _ = model.step(mem, None, 0, None, 2)
        with model.using("decoder"):
            own, _ = model.step(mem, None, 0, None, 2)
        torch.testing.assert_close(tree + own, full)
        torch.testing.assert_close(tree[0, 0], model.tree.logits(mem.query, torch.zeros(3, 2, dtype=torch.long), 0)[0, 0])
        model.probe = []
        model.step(mem, None, 0, None, 2)
        assert model.probe[0]["level"] == 1 and model.probe[0]["decoder"] > 0 and model.probe[0]["tree"] > 0
    assert model.terms == ("decoder", "tree")  # restored after each block
    with pytest.raises(ValueError, match="logit terms must be some of"):
        with model.using("magic"):
            pass


def test_the_channel_decomposed_tree_decoder_and_the_equal_budget_oracle(trained, tmp_path):
    from dataclasses import replace

    from workbench.eval.config import EvalConfig
    from workbench.eval.harness import evaluate

    ws = Workspace(shutil.copytree(trained[0].path, tmp_path / "ws"))
    st.train_stages(ws, st.StagesConfig(stages=(1,), epochs=(1,), backbone="sentence", tree=True, model=TINY, eval_width=4),
                    name="tree", progress=False)
    cfg = EvalConfig(ks=(10,), width=8, embedder="hashing-64", generator="tree",
                     methods=("generative", "generative-tree", "generative-decoder", "oracle-sids", "oracle-sids+beam"))
    df = evaluate(ws, cfg, progress=False).set_index("method")
    assert list(df.index) == list(cfg.methods) and df["channel_recall@300"].between(0, 1).all()
    full = df.loc["generative"]
    assert np.isfinite(full["decoder_logit@1"]) and full["tree_logit@1"] > 0 and "decoder_logit@1" not in df.loc["generative-tree"].dropna()
    for b in (100, 300, 1000):  # the relevant SIDs first, then the beam's: at least the oracle's recall, the beam's candidates
        assert df.loc["oracle-sids+beam", f"channel_recall@{b}"] >= df.loc["oracle-sids", f"channel_recall@{b}"] - 1e-9
        assert df.loc["oracle-sids+beam", f"candidates@{b}"] >= df.loc["generative", f"candidates@{b}"] - 1e-9
    with pytest.raises(ValueError, match="no tree head"):
        evaluate(ws, replace(cfg, generator="generator", methods=("generative-tree",)), progress=False)
