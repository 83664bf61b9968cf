"""The compact in-cluster order (gen/compact.py): product-quantised vectors score like float32 ones."""

from dataclasses import replace

import numpy as np
import pytest

from workbench.gen.compact import PQVectors
from workbench.gen.config import ChannelConfig
from workbench.gen.retrieve import CosineOrder, Hit


def exact_catalog(n: int = 300, m: int = 4, dsub: int = 4, values: int = 5, seed: int = 0) -> np.ndarray:
    """n distinct products, each a concatenation of one of `values` sub-vectors per sub-space: PQ codes them exactly."""
    rng = np.random.default_rng(seed)
    subs = rng.standard_normal((m, values, dsub)).astype(np.float32)
    combos = rng.choice(values ** m, n, replace=False)
    digits = np.stack([(combos // values ** i) % values for i in range(m)], 1)  # (n, m)
    return subs[np.arange(m), digits].reshape(n, m * dsub)


class Echo:
    """An embedder whose query vector is given: encode(['3']) -> the third of `queries`."""

    def __init__(self, queries: np.ndarray):
        self.queries = queries

    def encode(self, texts, dtype="float32"):
        return self.queries[[int(t) for t in texts]]


def test_exact_codes_score_and_order_like_float32():
    x = exact_catalog()
    pq = PQVectors.train(x, 4)
    assert np.allclose(pq.decode(), x, atol=1e-6)  # every product coded exactly
    q = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    rows = np.arange(len(x))
    assert np.allclose(pq.dot(rows, q[0]), x @ q[0], atol=1e-4)
    ids = [f"p{i}" for i in range(len(x))]
    hits = [[Hit((0,), -0.5, tuple(ids[:150])), Hit((1,), -1.0, tuple(ids[150:]))]] * 3
    full, small = CosineOrder(Echo(q), ids, x, pool=4), CosineOrder(Echo(q), ids, x, pool=4, compact=4)
    for (a, sa), (b, sb) in zip(full.scored(["0", "1", "2"], hits, 100), small.scored(["0", "1", "2"], hits, 100)):
        assert a == b and np.allclose(sa, sb, atol=1e-4)
    assert small.vectors.nbytes == len(x) * 4 + 4 * 256 * 4 * 4  # 4 bytes a product and the codebooks, not 64


def test_lossy_codes_keep_most_of_the_order():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pq = PQVectors.train(x, 8)
    q = x[:20] + 0.1 * rng.standard_normal((20, 32)).astype(np.float32)
    overlap = [len(set(np.argsort(-(x @ v))[:50]) & set(np.argsort(-pq.dot(np.arange(2000), v))[:50])) / 50 for v in q]
    assert np.mean(overlap) > 0.6  # 8 codes of 4 dimensions each: coarse, not random (random: 50 / 2000)
    assert pq.codes.dtype == np.uint8 and pq.codes.shape == (2000, 8)


def test_the_compiled_lookup_sums_each_candidates_codes_and_refuses_rows_outside_the_catalog():
    rng = np.random.default_rng(3)
    pq = PQVectors(rng.standard_normal((6, 256, 2)).astype(np.float32), rng.integers(0, 256, (500, 6), dtype=np.uint8))
    q = rng.standard_normal(12).astype(np.float32)
    rows = rng.integers(0, 500, 80)  # repeats and any order, as a beam's positions map to rows
    table = np.einsum("mkd,md->mk", pq.centroids, q.reshape(6, 2))  # (M, 256): the reference, in numpy
    want = np.array([sum(float(table[m, pq.codes[r, m]]) for m in range(6)) for r in rows])
    got = pq.dot(rows, q)
    assert got.dtype == np.float32 and got.shape == (80,) and np.allclose(got, want, atol=1e-5)
    assert np.allclose(got, pq.decode()[rows] @ q, atol=1e-4)
    assert pq.dot(np.zeros(0, np.int64), q).shape == (0,)
    for bad in ([0, 500], [-1, 3]):
        with pytest.raises(IndexError, match=r"rows must lie in \[0, 500\)"):
            pq.dot(np.array(bad), q)


@pytest.mark.parametrize("m, n, match", [(5, 300, "M must divide 16"), (0, 300, "M must divide"), (4, 100, "at least 256 products")])
def test_bad_compact_settings_are_named(m, n, match):
    with pytest.raises(ValueError, match=match):
        PQVectors.train(exact_catalog(n=n if n >= 256 else 100, values=5), m)


def test_a_negative_compact_setting_is_refused():
    with pytest.raises(ValueError, match="compact is a number of one-byte codes"):
        ChannelConfig(compact=-1)
    with pytest.raises(ValueError, match="do not fit"):
        PQVectors(np.zeros((4, 256, 4)), np.zeros((10, 3)))


def test_the_generative_channel_serves_a_compact_order(trained):
    from click.testing import CliRunner

    from workbench.cli import main
    from workbench.gen.retrieve import Channel, Generative, Retriever

    ws, _ = trained
    retriever = Retriever.from_workspace(ws)
    queries = ws.table("queries")["query"].astype(str).tolist()[:20]
    lists = {}
    for compact in (0, 8):
        ch = Channel.from_workspace(ws, ChannelConfig(budget=30, compact=compact))
        lists[compact] = [ids for ids, _ in Generative(retriever, ch, 8).scored(queries, 30)]
        assert isinstance(ch.order.vectors, PQVectors) == bool(compact)
    assert np.mean([len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(lists[0], lists[8])]) > 0.5
    r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "search", "drill", "--width", "4", "--compact", "8"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "search", "drill", "--width", "4", "--compact", "7"])
    assert r.exit_code != 0 and "M must divide 64" in r.output and "Traceback" not in r.output


def test_bench_compact_states_recall_and_bytes_against_float32(trained):
    from click.testing import CliRunner

    from workbench.bench.compact import run
    from workbench.cli import main

    ws, _ = trained
    rows = {r["case"]: r for r in run(ws, codes=(8,), budget=20, width=8)}
    assert list(rows) == ["generative float32", "dense-exact float32", "generative 8 codes", "dense-ivfpq 8 codes"]
    assert rows["generative float32"]["d_vs_float32"] == 0 and rows["dense-exact float32"]["ann_recall"] == 1.0
    assert rows["generative float32"]["bytes_per_product"] == 64 * 4  # hashing-64, float32
    assert 8 <= rows["generative 8 codes"]["bytes_per_product"] < 64 * 4 / 4  # 8 codes and a share of the codebooks
    lo, d, hi = (rows["generative 8 codes"][k] for k in ("d_lo", "d_vs_float32", "d_hi"))
    assert lo <= d <= hi and 0 < rows["dense-ivfpq 8 codes"]["ann_recall"] <= 1
    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "compact", "--codes", "7", "--budget", "20", "--width", "8"])
    assert r.exit_code != 0 and "M must divide 64" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("compact", [0, 8])
def test_the_order_by_lookup_positions_equals_the_order_by_ids(trained, compact):
    """The integer path (candidates found by their ProductLookup positions) gives the id path's lists and scores."""
    from workbench.gen.retrieve import Channel, Retriever

    ws, _ = trained
    retriever = Retriever.from_workspace(ws)
    queries = ws.table("queries")["query"].astype(str).tolist()[:15]
    hits = retriever.search(queries, 8)
    assert all(h.row >= 0 for hs in hits for h in hs)
    for budget, pool in [(30, 1), (5, 4), (None, 1)]:
        order = Channel.from_workspace(ws, ChannelConfig(budget=30, compact=compact, pool=pool, logp_weight=0.1)).order
        by_id = order.scored(queries, hits, budget)
        by_row = order.scored(queries, hits, budget, lookup=retriever.lookup)
        assert [ids for ids, _ in by_row] == [ids for ids, _ in by_id]
        for (_, a), (_, b) in zip(by_row, by_id):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    assert order.scored(queries[:1], [[]], 10, lookup=retriever.lookup) == [([], pytest.approx(np.zeros(0)))]


@pytest.mark.parametrize("compact", [0, 8])
def test_an_order_aligned_to_the_lookups_positions_scores_and_orders_the_same(trained, compact):
    from workbench.gen.retrieve import Retriever

    ws, _ = trained
    r = Retriever.from_workspace(ws)
    order = CosineOrder.from_workspace(ws, ChannelConfig(compact=compact, pool=4))
    qs = ["cordless drill", "paint roller", "garden hose"]
    hits = r.search(qs, width=8)
    before, by_id = order.scored(qs, hits, 20, lookup=r.lookup), order.scored(qs, [[replace(h, row=-1) for h in hs] for hs in hits], 20)
    order.align(r.lookup)
    assert list(order.ids[:len(r.lookup.ids)]) == list(r.lookup.ids) and len(order.ids) == len(order.vectors)
    for got in (order.scored(qs, hits, 20, lookup=r.lookup), order.scored(qs, [[replace(h, row=-1) for h in hs] for hs in hits], 20)):
        for (a, sa), (b, sb), (c, _) in zip(before, got, by_id):
            assert a == b == c and np.allclose(sa, sb, atol=1e-6)
    np.testing.assert_array_equal(order._bound[r.lookup], np.arange(len(r.lookup.ids)))  # positions are rows
    stale = CosineOrder(order.embedder, list(order.ids[1:]), order.vectors.take(np.arange(1, len(order.ids))) if compact
                        else order.vectors[1:])
    with pytest.raises(ValueError, match="products without an embedding"):
        stale.align(r.lookup)


def test_bench_pq_score_times_both_scorers_on_both_layouts_and_names_bad_settings(tmp_path):
    from click.testing import CliRunner

    from workbench import Workspace
    from workbench.cli import main

    ws = tmp_path / "ws"
    r = CliRunner().invoke(main, ["-w", str(ws), "bench", "pq-score", "--products", "5000", "--candidates", "100,2000",
                                  "--seconds", "0.05"])
    assert r.exit_code == 0, r.output
    got = Workspace(ws).logbook().query("SELECT case_name, metric, value FROM bench WHERE bench = 'pq-score'")
    assert set(got["case_name"]) == {f"{c} candidates, {layout}" for c in ("100", "2,000") for layout in ("scattered", "aligned")}
    assert (got[got["metric"].isin(["numpy_ms", "compiled_ms", "speedup"])]["value"] > 0).all()
    for args, says in ((["--codes", "7"], "M must divide 384, got 7"), (["--candidates", "0"], "values must be >= 1")):
        bad = CliRunner().invoke(main, ["-w", str(ws), "bench", "pq-score", "--products", "5000", *args])
        assert bad.exit_code in (1, 2) and says in bad.output, bad.output
