"""Metrics, baselines and the evaluation harness."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from workbench import metrics
from workbench.baselines import BM25, Dense, rrf, supplement
from workbench.cli import main
from workbench.embed import get_embedder
from workbench.eval.config import EvalConfig
from workbench.eval.harness import evaluate, judgments_file
from workbench.gen.config import ChannelConfig

IDS = ["p1", "p2", "p3", "p4"]
TITLES = ["Cordless Drill 18 V Black", "Red Dress Up Doll", "Stainless Steel Stand Mixer", "Drill Bit Set, 20 Pieces"]


def test_graded_metrics_by_hand():
    got = [["a", "b", "c"], ["x", "y"]]
    rel = [{"a": 3.0, "c": 1.0, "z": 2.0}, {"y": 1.0}]
    pq = metrics.per_query(got, rel, 2)
    ideal = 3 + 2 / np.log2(3)
    assert pq["ndcg"][0] == pytest.approx(3 / ideal)
    assert pq["ndcg"][1] == pytest.approx((1 / np.log2(3)) / 1.0)
    assert pq["recall"].tolist() == pytest.approx([1 / 3, 1.0])
    assert metrics.mrr(got, rel) == pytest.approx((1 + 1 / 2) / 2)
    assert metrics.coverage(got, 1, 10) == pytest.approx(0.2)
    assert np.isnan(metrics.recall_at_k([["a"]], [{}], 5))  # no relevant product: left out


def test_bm25_keeps_one_character_tokens_and_ignores_stop_word_queries():
    bm = BM25(IDS, TITLES)
    assert bm.search(["18 v drill"], 4)[0][0] == "p1"
    assert bm.search(["drills"], 4)[0][:2] in (["p1", "p4"], ["p4", "p1"])  # stemmed
    assert bm.search(["the and of", "zzzz"], 4) == [[], []]
    with pytest.raises(ValueError, match="one text per product"):
        BM25(IDS, TITLES[:2])


def test_dense_exact_cosine_and_fusions():
    e = get_embedder("hashing-64")
    dense = Dense(IDS, e.encode(TITLES), e)
    assert dense.search(["stainless steel stand mixer"], 2)[0][0] == "p3"
    assert len(dense.search(["x"], 99)[0]) == 4
    fused = rrf([[["a", "b", "c"]], [["c", "a", "d"]]], k=3)
    assert fused == [["a", "c", "b"]]
    sup = supplement([["a", "b", "c", "d"]], [["x", "a", "y"]], k=4, share=0.5)
    assert sup == [["a", "b", "x", "y"]]  # base keeps 2 slots, generation fills the rest, no repeats
    assert supplement([["a", "b"]], [[]], k=4, share=0.5) == [["a", "b"]]
    with pytest.raises(ValueError, match="share"):
        supplement([["a"]], [["b"]], 2, share=1.5)


def test_harness_compares_every_method_on_the_same_queries(trained):
    ws, _ = trained
    with ws.logbook().run("eval", {}) as run:
        df = evaluate(ws, EvalConfig(ks=(5, 20), width=8, embedder="hashing-64"), progress=False, run=run)
    assert df["method"].tolist() == ["generative", "oracle-sids", "bm25", "dense", "dense-ann", "hybrid", "bm25+gen", "dense+gen", "hybrid+gen"]
    for col in ("recall@5", "ndcg@20", "hit@20", "coverage@20", "click_hit@20", "mrr"):
        assert df[col].between(0, 1).all(), col
    gen = df.set_index("method").loc["generative"]
    assert gen["sids"] == 8 and gen["cluster_size"] >= 1 and 0 <= gen["valid_sid_rate_unconstrained"] <= 1
    assert 0 <= gen["personal_hit@20"] <= 1 and 0 <= gen["anonymous_hit@5"] <= 1  # the fixture trained stage 3
    assert (df["recall@20"] >= df["recall@5"] - 1e-9).all()
    assert gen["width"] == 8 and 1 <= gen["candidates@300"] <= 300
    oracle = df.set_index("method").loc["oracle-sids"]
    assert oracle["channel_recall@1000"] == pytest.approx(1.0)  # every relevant product's SID is decoded, all fit
    for b in (100, 300, 1000):
        for name in ("generative", "oracle-sids"):
            row = df.set_index("method").loc[name]
            assert 0 <= row[f"unique_recall@{b}"] <= row[f"channel_recall@{b}"] <= 1, (name, b)
    by = df.set_index("method")
    assert (by.loc["dense-ann", [f"ann_recall@{b}" for b in (100, 300, 1000)]] >= 0.95).all()  # HNSW finds the exact scan's top B
    for b in (100, 300, 1000):  # every channel at the same budgets, none handing over more
        assert by[f"channel_recall@{b}"].between(0, 1).all() and (by[f"candidates@{b}"] <= b).all(), b
    assert np.isnan(by.loc["bm25", "unique_recall@100"]) and (by["channel_recall@1000"] >= by["channel_recall@100"] - 1e-9).all()
    with pytest.raises(ValueError, match="unknown methods"):
        EvalConfig(methods=("generative", "magic"))
    with pytest.raises(ValueError, match="budgets"):
        EvalConfig(budgets=())

    for bad, msg in [(dict(budget=0), "budget must be >= 1"), (dict(order="random"), "order must be"),
                     (dict(query_dtype="float16"), "query dtype must be one of")]:
        with pytest.raises(ValueError, match=msg):
            ChannelConfig(**bad)


def test_unique_recall_by_hand():
    channel, base = [["a", "b", "c"], ["x"]], [["b", "z"], ["x"]]
    rel = [{"a", "b", "q"}, {"x"}]
    # query 1: a is found only by the channel (b by both): 1 of 3; query 2: nothing unique
    assert metrics.unique_recall(channel, base, rel, 3) == pytest.approx((1 / 3 + 0) / 2)
    assert metrics.unique_recall(channel, base, rel, 1) == pytest.approx((1 / 3 + 0) / 2)  # channel[:1] = a
    assert metrics.unique_recall([["b"], ["x"]], base, rel, 2) == 0.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        metrics.unique_recall(channel, base, rel, 0)


def test_candidates_are_cut_at_the_budget_and_ranked_inside_by_cosine():
    from workbench.gen.retrieve import CosineOrder, Hit, candidates, ranked_products

    hits = [Hit((0, 0), -0.1, ["p2", "p1"]), Hit((1, 0), -2.0, ["p3", "p4"])]  # beam order, popularity inside
    assert candidates(hits, 3)[0] == ["p2", "p1", "p3"] and candidates(hits, 3)[1].tolist() == [-0.1, -0.1, -2.0]
    rng = np.random.default_rng(0)  # the cut stops early: the same as cutting the whole list, at every budget
    many = [Hit((i,), -float(i), [f"s{i}p{j}" for j in range(rng.integers(0, 6))]) for i in range(8)]
    every = [(p, h.logp) for h in many for p in h.products]
    for b in [None, 0, 1, 2, 5, 7, len(every) - 1, len(every), len(every) + 10]:
        ids, logp = candidates(many, b)
        assert list(zip(ids, logp.tolist())) == every[:b] and logp.dtype == np.float64
        assert ranked_products(many, b) == [p for p, _ in every[:b]]
    e = get_embedder("hashing-64")
    order = CosineOrder(e, IDS, e.encode(TITLES))
    (got,) = order(["cordless drill"], [hits], 3)
    assert got[0] == "p1" and sorted(got) == ["p1", "p2", "p3"]  # the drill first; p4 is past the budget
    assert order(["drill bit set 20 pieces"], [hits])[0][0] == "p4"
    heavy = CosineOrder(e, IDS, e.encode(TITLES), logp_weight=10.0)  # the SID's probability dominates
    assert heavy(["drill bit set 20 pieces"], [hits])[0][:2] in (["p1", "p2"], ["p2", "p1"])
    assert order(["x"], [[]]) == [[]]
    # a pool scores the beam's first pool x budget products and keeps the best budget: the beam's tail is not cut unseen
    assert order(["drill bit set 20 pieces"], [hits], 1) == [["p2"]]  # p4 lies past the cut of one
    pooled = CosineOrder(e, IDS, e.encode(TITLES), pool=4)
    assert pooled(["drill bit set 20 pieces"], [hits], 1) == [["p4"]]
    # the behaviour prior adds w x log(1 + popularity) to each product's score, exactly
    pop = np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.0, 1e6, 0.0, 0.0])
    (plain, s0), = CosineOrder(e, IDS, e.encode(TITLES), popularity=pop[0], popularity_weight=1.0).scored(["cordless drill"], [hits])
    (lifted, s1), = CosineOrder(e, IDS, e.encode(TITLES), popularity=pop[1], popularity_weight=0.5).scored(["cordless drill"], [hits])
    assert lifted[0] == "p2" and plain[0] == "p1"  # the doll sold a million times comes first
    assert dict(zip(lifted, s1))["p2"] == pytest.approx(dict(zip(plain, s0))["p2"] + 0.5 * np.log1p(1e6), rel=1e-6)
    with pytest.raises(ValueError, match="popularity of every product"):
        CosineOrder(e, IDS, e.encode(TITLES), popularity_weight=1.0)
    assert pooled(["drill bit set 20 pieces"], [hits], 2) == [order(["drill bit set 20 pieces"], [hits])[0][:2]]
    from workbench.baselines import Dense

    class Spy:  # records what the queries are computed in
        seen: list = []

        def encode(self, texts, dtype="float32"):
            self.seen.append(dtype)
            return e.encode(texts)

    CosineOrder(Spy(), IDS, e.encode(TITLES), query_dtype="bfloat16")(["drill"], [hits])
    Dense(IDS, e.encode(TITLES), Spy(), query_dtype="bfloat16").search(["drill"], 2)
    assert Spy.seen == ["bfloat16", "bfloat16"]
    with pytest.raises(ValueError, match="query dtype must be one of"):
        Dense(IDS, e.encode(TITLES), e, query_dtype="half")
    with pytest.raises(ValueError, match="product ids for"):
        CosineOrder(e, IDS[:2], e.encode(TITLES))
    from workbench.gen.retrieve import Channel

    assert Channel(ChannelConfig(budget=3), order)(["cordless drill"], [hits]) == [got]
    for bad, msg in [({"pool": 0}, "pool must be >= 1"), ({"logp_weight": float("nan")}, "logp_weight must be a finite"),
                     ({"popularity_weight": float("inf")}, "popularity_weight must be a finite")]:
        with pytest.raises(ValueError, match=msg):
            ChannelConfig(**bad)
    assert Channel(ChannelConfig(order="popularity", budget=3))(["x"], [hits]) == [["p2", "p1", "p3"]]
    with pytest.raises(ValueError, match="needs its CosineOrder"):
        Channel(ChannelConfig())


def test_judgments_csv_via_the_cli_and_its_errors(trained, tmp_path):
    ws, _ = trained
    j = ws.table("judgments").merge(ws.table("queries"), on="query_id")[["query", "product_id", "relevance"]]
    good = tmp_path / "j.csv"
    j.head(300).to_csv(good, index=False)
    r = CliRunner().invoke(main, ["-w", str(ws.path), "eval", "--judgments", str(good), "--k", "10", "--methods",
                                  "generative,bm25", "--width", "4", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output[r.output.index("["):])
    assert [x["method"] for x in rows] == ["generative", "bm25"] and 0 <= rows[0]["recall@10"] <= 1
    cases = [
        (j.drop(columns=["relevance"]), "missing column"),
        (j.head(3).assign(product_id="NOPE"), "not in the catalog"),
        (j.head(3).assign(relevance="high"), "line 2: relevance is not a number"),
        (j.head(3).assign(relevance=[1.0, float("inf"), 2.0]), "line 3: relevance is not a finite number"),
        (j.head(3).assign(relevance=0.0), "no judgment reaches"),
    ]
    for frame, msg in cases:
        frame.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(ValueError, match=msg):
            judgments_file(ws, tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError):
        judgments_file(ws, tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="threshold must be a finite number, got nan"):
        judgments_file(ws, good, threshold=float("nan"))
    logged = ws.logbook().query("SELECT DISTINCT method FROM evals WHERE stage = 'eval'")
    assert {"generative", "bm25"} <= set(logged["method"])


def test_a_channel_at_a_budget_hands_over_at_most_that_many_and_the_hybrid_never_moves(trained):
    """At a budget of 5 the generative channel returns at most 5 products per query, all from its decoded
    SIDs; the hybrid's figures are the same whether or not the generative channel is evaluated beside it
    (BM25 used to be searched deeper when it was)."""
    from workbench.eval.channels import Channels
    from workbench.gen.data import eval_set

    ws, _ = trained
    cfg = EvalConfig(ks=(5, 20), width=8, embedder="hashing-64")
    texts = eval_set(ws)["query"].tolist()[:40]
    gen = Channels(ws, cfg, progress=False)["generative"]
    for (ids, scores), hits in zip(gen.scored(texts, 5), gen.hits(texts)):
        decoded = {p for h in hits for p in h.products}
        assert len(ids) <= 5 and set(ids) <= decoded and len(scores) == len(ids)
        assert list(scores) == sorted(scores, reverse=True)
    alone = evaluate(ws, replace(cfg, methods=("hybrid",)), progress=False)
    beside = evaluate(ws, replace(cfg, methods=("generative", "oracle-sids", "hybrid", "hybrid+gen")), progress=False)
    figures = [c for c in alone.columns if c not in ("method", "ms_per_query")]  # all but the clock
    pd.testing.assert_series_equal(alone.set_index("method").loc["hybrid", figures], beside.set_index("method").loc["hybrid", figures])
    with pytest.raises(ValueError, match="unknown channel 'magic'"):
        Channels(ws, cfg)["magic"]


def test_a_learned_ranker_fuses_channels_at_one_budget_with_paired_intervals(trained):
    """Each fusion set's union at one total budget, ordered by LambdaMART trained on training queries and
    early-stopped on validation ones; differences from the reference set with paired intervals."""
    from workbench.eval.channels import Channels
    from workbench.eval.fusion import columns, frame
    from workbench.gen.data import eval_set

    ws, _ = trained
    cfg = EvalConfig(ks=(10,), width=8, embedder="hashing-64", methods=("bm25",), fusion_budget=40,
                     fusions=("bm25", "bm25+dense", "bm25+dense+generative"), fusion_reference="bm25+dense")
    ch = Channels(ws, cfg, progress=False)
    texts = eval_set(ws, "validation")["query"].tolist()[:30]
    f = frame(ch, ("bm25", "dense", "generative"), texts, 40)
    assert (f.groupby("q").size() <= 39).all() and not f.duplicated(["q", "product_id"]).any()  # 13 each, a union
    assert set(columns(("bm25", "generative"))) >= {"rank_generative", "sid_logp", "cluster", "cosine"}
    with ws.logbook().run("eval", {"test": "fusion"}) as run:
        df = evaluate(ws, cfg, progress=False, run=run).set_index("method")
    logged = ws.logbook().query(f"SELECT metric, k, value FROM evals WHERE run_id = '{run.run_id}' "
                                "AND method = 'fused bm25+dense+generative' AND metric LIKE 'd_recall%'")
    assert sorted(logged["metric"]) == ["d_recall", "d_recall_hi", "d_recall_lo"] and set(logged["k"]) == {10}  # every figure logged
    fused = df.loc[["fused bm25", "fused bm25+dense", "fused bm25+dense+generative"]]
    assert fused["recall@10"].between(0, 1).all() and (fused["candidates"] <= 40).all() and (fused["trees"] >= 1).all()
    assert (fused["union_recall"] <= 1).all() and (fused["union_recall"] >= fused[[c for c in fused if c.startswith("recall@")]].max(1) - 1e-9).all()
    full = fused.loc["fused bm25+dense+generative"]
    assert full["d_recall@10_lo"] <= full["d_recall@10"] <= full["d_recall@10_hi"]
    assert np.isnan(fused.loc["fused bm25+dense", "d_recall@10"])  # the reference has no difference from itself
    for bad, msg in [(dict(fusions=("bm25+dense",)), "two or more"), (dict(fusions=("bm25", "bm25+magic")), "bm25\\+magic"),
                     (dict(fusions=("bm25", "bm25+bm25")), "distinct"), (dict(fusions=("bm25", "dense")), "reference"),
                     (dict(fusion_budget=1), "fusion_budget")]:
        with pytest.raises(ValueError, match=msg):
            EvalConfig(**bad)
    from click.testing import CliRunner

    from workbench.cli import main

    r = CliRunner().invoke(main, ["-w", str(ws.path), "eval", "--fusions", "bm25+dense"])
    assert r.exit_code != 0 and "a fusion compares sets of channels" in r.output and "Traceback" not in r.output


def test_the_faiss_channel_finds_the_exact_scans_neighbours_and_refuses_what_cannot_hold():
    from workbench.ann import ANN, ANNConfig
    from workbench.baselines import Dense

    e = get_embedder("hashing-64")
    titles = [f"{a} {b} {c}" for a in ("cordless", "corded", "red", "blue", "garden", "kitchen") for b in ("drill", "hose", "lamp", "chair")
              for c in range(40)]
    ids = [f"p{i}" for i in range(len(titles))]
    vecs = e.encode(titles)
    exact = Dense(ids, vecs, e)
    queries = ["cordless drill 7", "blue lamp", "garden hose 12", "kitchen chair"]
    for cfg in (ANNConfig(), ANNConfig(kind="ivf", nlist=16, nprobe=16)):  # ivf probing every cell is exact
        ann = ANN(ids, vecs, e, cfg)
        for (a, sa), (x, _) in zip(ann.scored(queries, 50), exact.scored(queries, 50)):
            assert len(a) == 50 and len(set(a) & set(x)) >= 48 and list(sa) == sorted(sa, reverse=True)
    pq = ANN(ids, vecs, e, ANNConfig(kind="ivfpq", nlist=16, nprobe=16, pq_m=16))  # every cell, codes of 4 dimensions: nearly exact here
    for (a, sa), (x, _) in zip(pq.scored(queries, 50), exact.scored(queries, 50)):
        assert len(a) == 50 and len(set(a) & set(x)) >= 45 and list(sa) == sorted(sa, reverse=True)
    for bad, msg in [(dict(kind="lsh"), "kind must be one of"), (dict(m=0), "must be >= 1"), (dict(pq_m=0), "must be >= 1")]:
        with pytest.raises(ValueError, match=msg):
            ANNConfig(**bad)
    with pytest.raises(ValueError, match="pq_m must divide 64"):
        ANN(ids, vecs, e, ANNConfig(kind="ivfpq", nlist=16, pq_m=7))
    with pytest.raises(ValueError, match="cannot be trained on 960 products"):
        ANN(ids, vecs, e, ANNConfig(kind="ivf", nlist=5000))
    with pytest.raises(ValueError, match="one vector per product"):
        ANN(ids[:3], vecs, e)


def test_a_teachers_sids_hold_its_top_product_and_only_products_of_its_lists_clusters(trained):
    """bm25-sids: the SIDs of BM25's ranked list, first seen first, through the generative channel: what a
    generator that imitated BM25 perfectly would hand over (the distillation ceiling)."""
    from workbench.eval.channels import Channels
    from workbench.gen.data import eval_set

    ws, _ = trained
    # pool 1: the set is the clusters' products in the list's order, so the first product's cluster leads it
    cfg = EvalConfig(ks=(10,), width=8, embedder="hashing-64", methods=("bm25", "bm25-sids"), channel=ChannelConfig(pool=1))
    ch = Channels(ws, cfg, progress=False)
    texts = eval_set(ws)["query"].tolist()[:30]
    rows = ch["generative"].retriever.lookup.rows()  # product -> its SID's row
    for (ids, _), top in zip(ch["bm25-sids"].scored(texts, 20), ch["bm25"].search(texts, 20)):
        assert len(ids) <= 20 and {rows[p] for p in ids} <= {rows[p] for p in top}  # only the list's clusters
        if top and top[0] in rows and len(ch["generative"].retriever.lookup(rows[top[0]])) <= 20:
            assert top[0] in ids  # its first product's cluster comes first
    df = evaluate(ws, cfg, progress=False).set_index("method")
    assert df.loc["bm25-sids", "sids"] >= 1 and df.loc["bm25-sids", "channel_recall@300"] <= 1
