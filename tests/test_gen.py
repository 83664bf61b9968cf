"""The generator on a workspace: training, storage, retrieval, CLI and the beam benchmark."""

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import TINY
from workbench import Workspace
from workbench.checkpoint import CheckpointError
from workbench.cli import main
from workbench.data import splits
from workbench.data.relevance import relevance
from workbench.eval import width
from workbench.gen import stages as st
from workbench.gen import store
from workbench.gen.config import GenConfig, TrainConfig
from workbench.gen.data import Pairs, eval_set, item_pairs, query_pairs
from workbench.gen.model import Generator
from workbench.gen.retrieve import ProductLookup, Retriever, ranked_products
from workbench.gen.stages import make_tokenizer, recall_eval
from workbench.gen.train import check_pairs, fit
from workbench.metrics import hit_at_k, recall_at_k


def test_training_learns_the_held_out_queries_better_than_an_untrained_model(trained):
    ws, rows = trained
    result = rows[-1]
    history = ws.logbook().query("SELECT m.stage, m.step, m.value FROM metrics m JOIN runs r USING (run_id) "
                                 "WHERE r.kind = 'gen-train' AND m.name = 'loss' ORDER BY m.stage, m.step")
    assert history.groupby("stage").size().to_dict() == {"1-items": 3, "2-queries": 3, "3-personal": 2}
    q = history[history["stage"] == "2-queries"]["value"]
    assert q.iloc[-1] < q.iloc[0]
    r = Retriever.from_workspace(ws)
    untrained = Generator(r.model.cfg).eval()
    fresh = Retriever(untrained, r.tok, r.index, r.lookup)
    ev = eval_set(ws, "validation")  # what training reports each epoch (test is for `workbench eval`)
    assert recall_eval(r, ev, 16)["recall@50"] > 1.5 * recall_eval(fresh, ev, 16)["recall@50"]
    assert result["recall@50"] == pytest.approx(recall_eval(r, ev, 16)["recall@50"])  # saved = evaluated
    evals = ws.logbook().query("SELECT stage, metric, k FROM evals WHERE method = 'generator/scratch'")
    assert set(evals["stage"]) == {"1-items", "2-queries", "3-personal"} and {1, 10, 50} == set(evals["k"])
    assert {"recall", "item_hit"} <= set(evals["metric"])
    assert {"personal_hit", "anonymous_hit"} <= set(evals[evals["stage"] == "3-personal"]["metric"])


def test_search_returns_existing_sids_and_their_products(trained):
    ws, _ = trained
    r = Retriever.from_workspace(ws)
    sids = pd.read_parquet(ws.path / "sid" / "sids.parquet")
    by_sid = {tuple(row[1:]): row[0] for row in sids.itertuples(index=False)}
    hits = r.search(["cordless drill", "x" * 10_000, "☃ ✈"], width=8)
    assert [len(h) for h in hits] == [8, 8, 8]
    for h in hits[0]:
        assert h.products and all(tuple(sids.set_index("product_id").loc[p]) == h.sid for p in h.products)
        assert h.sid in by_sid
    assert ranked_products(hits[0], 5) == ranked_products(hits[0])[:5]
    with pytest.raises(ValueError, match="empty"):
        r.search(["drill", " "], 8)


def test_products_of_a_sid_come_in_popularity_order(trained):
    ws, _ = trained
    r = Retriever.from_workspace(ws)
    sids = pd.read_parquet(ws.path / "sid" / "sids.parquet")
    big = int(np.argmax(r.index.counts))
    pop = pd.Series({p: float(len(r.lookup(big)) - i) for i, p in enumerate(sorted(r.lookup(big)))})
    look = ProductLookup(r.index, sids, pop)
    assert list(look(big)) == sorted(r.lookup(big))  # reordered by the given popularity
    assert look(big) is look(big) and isinstance(look(big), tuple)  # built once, shared, so immutable
    assert [p for row in range(len(r.index.sids)) for p in look(row)] == list(look.ids)  # every product once, by row
    with pytest.raises(ValueError, match="disagree"):
        ProductLookup(r.index, sids.assign(sid_1=sids["sid_1"] + 100))


def test_stored_generator_is_refused_after_the_sids_change_or_when_corrupt(trained, tmp_path):
    ws, _ = trained
    copy = Workspace(shutil.copytree(ws.path, tmp_path / "ws"))
    model, tok, meta = store.load(copy)
    assert meta["run_id"] and model.cfg.tokenizer == tok.key
    rq = copy.path / "sid" / "rqvae.safetensors"
    rq.write_bytes(rq.read_bytes() + b" ")  # another CQ-SID model
    with pytest.raises(CheckpointError, match="other SIDs"):
        store.load(copy)
    with pytest.raises(FileNotFoundError, match="has no generator 'other'.*it has generator"):
        store.load(ws, "other")
    bad = Workspace(shutil.copytree(ws.path, tmp_path / "ws2"))
    (bad.path / "gen" / "generator.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        store.load(bad)
    swapped = Workspace(shutil.copytree(ws.path, tmp_path / "ws3"))
    model, _, _ = store.load(swapped)
    make_tokenizer(swapped, "scratch", vocab_size=300).save(store.tokenizer_path(swapped, model.cfg.tokenizer))
    with pytest.raises(CheckpointError, match="built for tokenizer"):
        store.load(swapped)


def test_examples_are_checked_against_the_model(trained):
    ws, _ = trained
    model, tok, _ = store.load(ws)
    items = item_pairs(ws)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        check_pairs(model, replace(items, sids=items.sids + 100))
    with pytest.raises(ValueError, match="levels"):
        check_pairs(model, replace(items, sids=items.sids[:, :2]))
    with pytest.raises(ValueError, match="context ids"):
        check_pairs(model, replace(items, context=np.full((len(items), 2), model.cfg.context_vocab)))
    plain = Generator(replace(model.cfg, context_vocab=0))
    with pytest.raises(ValueError, match="no context tokens"):
        check_pairs(plain, replace(items, context=np.zeros((len(items), 1), int)))
    other = make_tokenizer(ws, "scratch", vocab_size=300)
    with pytest.raises(ValueError, match="not the one the generator was built for"):
        fit(model, other, items, TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="no training examples"):
        Pairs.concat([Pairs([], np.zeros((0, 3)), np.zeros(0))])


def test_validation_and_test_queries_never_reach_training(trained):
    ws, _ = trained
    train_q = set(query_pairs(ws).text)
    for split in ("validation", "test"):
        ev = eval_set(ws, split)
        assert len(ev) > 10 and not train_q & set(ev["query"])
        assert (splits.sides(ws, ev["query_id"]) == split).all()
    with pytest.raises(ValueError, match="unknown relevance"):
        relevance(ws, ("liked",))


def test_target_weights_change_stage_two_targets_as_stated(trained):
    """Clicks weighted 0 leave only purchased products as a query's targets, each at the purchase
    weight; the defaults are data.relevance's; bad weights are refused by name."""
    from workbench.gen.config import StagesConfig, TargetWeights

    ws, _ = trained
    from workbench.data.relevance import judged

    log = ws.table("search_log")  # relevance() covers every query; query_pairs keeps the training ones
    bought = set(zip(log.loc[log["purchased"], "query_id"], log.loc[log["purchased"], "product_id"]))
    good = set(zip(judged(ws)["query_id"], judged(ws)["product_id"])) if ws.has("judgments") else set()
    default, only_bought = relevance(ws), relevance(ws, weights={"clicked": 0.0, "purchased": 5.0})
    assert set(zip(only_bought["query_id"], only_bought["product_id"])) == bought | good and len(only_bought) < len(default)
    n_bought = log[log["purchased"]].groupby(["query_id", "product_id"]).size()
    w = {(q, p): v for q, p, v in only_bought.itertuples(index=False)}
    assert all(w[k] == 5.0 * n_bought.get(k, 0) + 1.0 * (k in good) for k in w)  # each purchase at 5, a judgment adds 1
    assert StagesConfig().targets.weights() == {"purchased": 2.0, "clicked": 1.0, "judged": 1.0}
    assert len(query_pairs(ws, weights={"clicked": 0.0}).text) < len(query_pairs(ws).text)
    for bad in ({"clicked": -1.0}, {"purchased": float("nan")}, {"purchased": 0.0, "clicked": 0.0, "judged": 0.0}):
        with pytest.raises(ValueError, match="target weights must be finite"):
            TargetWeights(**bad)
    with pytest.raises(ValueError, match="unknown relevance sources"):
        relevance(ws, weights={"liked": 1.0})


def test_recall_and_hit_at_k():
    got = [["a", "b", "c"], ["x"], ["q"]]
    rel = [["a", "c", "z", "w"], ["y"], []]
    assert recall_at_k(got, rel, 2) == pytest.approx((1 / 4 + 0) / 2)
    assert recall_at_k(got, rel, 3) == pytest.approx((2 / 4 + 0) / 2)
    assert hit_at_k(got, rel, 1) == 0.5
    with pytest.raises(ValueError, match="retrieved lists"):
        recall_at_k(got[:2], rel, 2)
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(got, rel, 0)


def test_minilm_backbone_starts_from_the_packaged_weights_and_round_trips(tmp_path):
    from safetensors.torch import load_file

    from workbench import checkpoint
    from workbench.gen.model import _minilm_folder
    from workbench.gen.tokenizer import TextTokenizer

    tok = TextTokenizer.minilm()
    cfg = GenConfig(sid_vocab=(8, 4), text_vocab=tok.vocab_size, tokenizer=tok.key, backbone="minilm", **TINY)
    model = Generator(cfg).eval()
    ref = load_file(str(_minilm_folder() / "model.safetensors"))
    w = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(model.encoder.bert.state_dict()[w], ref[w])
    ids, mask = tok.encode(["cordless drill", "a doll"])
    checkpoint.save(tmp_path / "g.safetensors", model, cfg, kind="generator")
    state, cfg2, _ = checkpoint.load(tmp_path / "g.safetensors", GenConfig, kind="generator")
    back = Generator(cfg2, pretrained=False)
    checkpoint.load_into(back, state, tmp_path / "g.safetensors")
    s = torch.tensor([[1, 2], [3, 0]])
    with torch.no_grad():
        for a, b in zip(model(ids, mask, s), back.eval()(ids, mask, s)):
            torch.testing.assert_close(a, b)


def test_gen_cli_search_and_errors(trained):
    ws, _ = trained
    r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "search", "cordless drill", "--width", "4", "--top", "2"])
    assert r.exit_code == 0, r.output
    assert "'cordless drill': 4 SIDs" in r.output and "logp" in r.output
    assert "channel (cosine order, " in r.output
    r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "search", "drill", "--width", "4", "--order", "popularity",
                                  "--budget", "3"])
    assert r.exit_code == 0 and "channel (popularity order, 3 candidates)" in r.output, r.output
    for args, msg in [(["   "], "empty"), (["drill", "--width", "0"], "--width': 0 is not in the range 1<=x<=1024"), (["drill", "--name", "nope"], "no generator"),
                      (["drill", "--top", "-1"], "--top': -1 is not in the range x>=1"), (["drill", "--budget", "0"], "budget must be >= 1"),
                      (["drill", "--order", "random"], "'random' is not one of")]:
        r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "search", *args])
        assert r.exit_code != 0 and msg in r.output, r.output


def test_bench_beam_sweep_logs_and_picks_a_width(trained, tmp_path):
    shutil.copytree(trained[0].path, tmp_path / "ws")  # the sweep sets the width the workspace serves
    ws = Workspace(tmp_path / "ws")
    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "beam", "--no-speed", "--ids", "workspace",
                                  "--widths", "1,4,16", "--batch-sizes", "1,8", "--rounds", "1", "--k", "20"])
    assert r.exit_code == 0, r.output
    got = ws.logbook().query("SELECT bench, case_name, metric, value FROM bench WHERE bench LIKE 'beam%'")
    sweep = got[got["bench"] == "beam-sweep (workspace IDs)"]
    assert set(sweep["case_name"]) == {f"workspace w{w} b{b}" for w in (1, 4, 16) for b in (1, 8)}
    assert {"p50_ms", "p95_ms", "queries_per_s", "recall@20"} <= set(sweep["metric"])
    rec = sweep[sweep["metric"] == "recall@20"].groupby("case_name")["value"].first()
    assert rec["workspace w16 b8"] >= rec["workspace w1 b8"]  # a wider beam retrieves more products
    choice = got[got["bench"] == "beam-width-choice"]
    assert {"width", "latency_saving", "width_for_target"} <= set(choice["metric"])
    assert choice[choice["metric"] == "width"]["value"].iloc[0] == width.load_choice(ws)["width"]
    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "beam", "--widths", "0,4"])
    assert r.exit_code != 0 and ">= 1" in r.output


def test_pick_width_and_flop_count():
    from workbench.bench.beam import decode_flops, widths_per_step
    from workbench.eval.width import pick_width, width_for_recall

    rows = [{"width": w, "batch": 32, "recall@50": r, "p50_ms": ms, "queries_per_s": 1000 / ms}
            for w, r, ms in [(1, 0.2, 1.0), (4, 0.5, 2.0), (16, 0.69, 4.0), (64, 0.70, 10.0)]]
    p = pick_width(rows, 50, tolerance=0.02)
    assert p["width"] == 16 and p["widest"] == 64 and p["latency_saving"] == pytest.approx(0.6)
    assert width_for_recall(rows, 50, 0.5) == 4 and width_for_recall(rows, 50, 0.9) is None
    assert widths_per_step((64, 16, 8), 256) == [1, 64, 256] and widths_per_step((4, 4, 4), 8) == [1, 4, 8]
    cfg = GenConfig(sid_vocab=(64, 64, 64), text_vocab=100, d_model=256, dec_layers=4, d_ff=1024)
    assert decode_flops(cfg, 32, 64, 12) == pytest.approx(31.08e9, rel=0.01)  # as in the closing note


@pytest.mark.slow
def test_speed_benchmark_runs_with_the_hugging_face_peer():
    from workbench.bench.beam import speed

    rows, summary = speed(batch=2, width=4, n_sids=200, vocab=(8, 8, 8), d_model=32, n_heads=4, layers=1, d_ff=64,
                          text_vocab=100, query_len=5, rounds=1)
    assert [r["case"] for r in rows][-2:] == ["HF T5 generate + prefix_allowed_tokens_fn", "HF T5 generate, unconstrained"]
    assert all(r["s_per_batch"] > 0 for r in rows) and summary["decode_gflop_per_s"] > 0
    assert np.isfinite(summary["speedup_vs_hf_fp32"]) and summary["sids"] == 200


def test_sentence_backbone_reads_cached_embeddings_with_the_same_logits_and_round_trips(trained, tmp_path):
    from workbench.gen.model import SentenceEncoder
    from workbench.gen.tokenizer import SentenceTokenizer, load_tokenizer

    ws = Workspace(shutil.copytree(trained[0].path, tmp_path / "ws"))
    cfg = st.StagesConfig(stages=(1, 2), epochs=(2, 1), backbone="sentence", model=TINY, eval_width=4)
    rows = st.train_stages(ws, cfg, name="sent", progress=False)
    assert rows[-1]["examples_per_s"] > 0 and 0 <= rows[-1]["recall@10"] <= 1
    r = Retriever.from_workspace(ws, "sent")
    assert isinstance(r.tok, SentenceTokenizer) and r.model.cfg.embed_dim == 64 and r.tok.key == "sentence-hashing-64-v1"
    # the bulk (cached) path and the per-batch (uncached) path give the same vectors, so the same logits
    texts = [f"cordless drill {i}" for i in range(SentenceTokenizer.BULK)]
    cached, _ = r.tok.encode(texts)
    assert any((ws.cache_dir / "embeddings").rglob("*")), "a bulk encode fills the cache"
    again, _ = r.tok.encode(texts)  # read back from the cache
    single = torch.cat([r.tok.encode(texts[i:i + 64])[0] for i in range(0, len(texts), 64)])
    torch.testing.assert_close(cached, single)
    torch.testing.assert_close(again, single)
    sids = torch.zeros(len(texts), 3, dtype=torch.long)
    ones = torch.ones(len(texts), 1, dtype=torch.bool)
    with torch.no_grad():
        for a, b in zip(r.model(again, ones, sids), r.model(single, ones, sids)):
            torch.testing.assert_close(a, b)
    assert [h.sid for h in r.search(["cordless drill"], 4)[0]]  # decodes existing SIDs
    tok = load_tokenizer(store.tokenizer_path(ws, r.tok.key))
    assert tok.key == r.tok.key
    with pytest.raises(ValueError, match="reads \\(B, D\\) embeddings"):
        SentenceEncoder(r.model.cfg)(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        r.tok.encode(["ok", "  "])


def test_bench_backbone_compares_encoders_in_one_run(trained):
    ws, _ = trained
    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "backbone", "--backbones", "scratch,sentence", "--n", "200"])
    assert r.exit_code == 0, r.output
    got = ws.logbook().query("SELECT case_name, metric, value FROM bench WHERE bench = 'backbone-throughput'")
    assert set(got["case_name"]) == {"scratch", "sentence"}
    assert {"first_epoch_per_s", "later_epochs_per_s", "tokenize_s", "x_vs_minilm"} <= set(got["metric"])
    bad = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "backbone", "--epochs", "1"])
    assert bad.exit_code == 2 and "--epochs': 1 is not in the range x>=2" in bad.output, bad.output


def test_the_order_reuses_the_sentence_backbones_query_vectors(trained):
    """A sentence-backbone generator has embedded its queries with the order's embedder already: the order
    takes those vectors (one encode a search, not two) and returns the same lists; other texts encode anew."""
    from workbench.gen.config import ChannelConfig
    from workbench.gen.retrieve import Channel, Generative, Retriever
    from workbench.gen.tokenizer import SentenceTokenizer

    ws, _ = trained
    retriever, channel = Retriever.from_workspace(ws), Channel.from_workspace(ws, ChannelConfig(budget=20))
    queries = ws.table("queries")["query"].astype(str).tolist()[:8]
    before = Generative(retriever, channel, 8).scored(queries, 20)
    sentence = SentenceTokenizer("hashing-64")
    assert sentence.embedder.key == channel.order.embedder.key
    sentence.encode(queries)
    assert sentence.vectors(queries, channel.order.embedder.key) is not None
    assert sentence.vectors(queries[:3], channel.order.embedder.key) is None  # other texts: encode anew
    assert sentence.vectors(queries, "another-embedder") is None
    retriever.tok.vectors = sentence.vectors  # the decoder keeps its own tokenizer; only the order's vectors are swapped in
    calls = []
    encode = channel.order.embedder.encode
    channel.order.embedder.encode = lambda texts, **kw: calls.append(texts) or encode(texts, **kw)
    after = Generative(retriever, channel, 8).scored(queries, 20)
    assert calls == [] and [a for a, _ in after] == [b for b, _ in before]
    Generative(retriever, channel, 8).scored(queries[:3], 20)
    assert calls == [queries[:3]]
