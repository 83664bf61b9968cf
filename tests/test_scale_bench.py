"""`workbench bench scale` (bench/scale.py): the grown catalog, its exact truth, the memory plan and the runs."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from workbench.bench import scale
from workbench.cli import main


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_a_grown_catalog_keeps_its_originals_and_is_the_same_in_any_chunks():
    base = unit(np.random.default_rng(0).normal(size=(50, 8)))
    n = scale.BLOCK + 300  # crosses a noise block's boundary
    whole = scale.tiled_vectors(base, 0, n, sigma=0.5, seed=3)
    assert whole.shape == (n, 8) and np.allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(whole[:50], base)
    cuts = [0, 17, 50, 4096, scale.BLOCK - 1, scale.BLOCK + 1, n]
    pieces = np.concatenate([scale.tiled_vectors(base, a, b, 0.5, 3) for a, b in zip(cuts[:-1], cuts[1:])])
    np.testing.assert_array_equal(pieces, whole)
    np.testing.assert_array_equal(np.concatenate(list(scale.blocks(base, n, 0.5, 3))), whole)
    cos = (whole[50:5050] * base[np.arange(50, 5050) % 50]).sum(1)  # a variant is near its original, not on it
    assert 0.8 < cos.mean() < 0.95 and cos.max() < 0.999
    assert not np.array_equal(scale.tiled_vectors(base, 0, 200, 0.5, seed=4), whole[:200])
    dead = base.copy()
    dead[:, 0] = 0  # a dimension the encoder never uses (MiniLM has three): a variant leaves it alone
    dead = unit(dead)
    assert np.abs(scale.tiled_vectors(dead, 0, 1000, 0.5)[:, 0]).max() == 0
    assert scale.tiled_titles(["a", "b"], 5) == ["a", "b", "a, variant 1", "b, variant 1", "a, variant 2"]


def test_the_exact_truth_streamed_in_blocks_is_the_full_scan():
    base = unit(np.random.default_rng(1).normal(size=(40, 6)))
    q = unit(np.random.default_rng(2).normal(size=(5, 6)))
    n = scale.BLOCK + 1000
    full = q @ scale.tiled_vectors(base, 0, n, 0.3).T  # (5, n)
    got = scale.exact_top(base, n, q, 25, 0.3)
    np.testing.assert_array_equal(got, np.argsort(-full, axis=1, kind="stable")[:, :25])


def test_the_plan_leaves_out_what_does_not_fit_and_refuses_a_generative_channel_that_does_not():
    est = {c: scale.estimate_mib(c, 10_000_000, 384, 96) for c in scale.CHANNELS}
    assert est["ivfpq"] < est["generative"] < est["hnsw"] and est["exact"] < est["hnsw"]
    assert scale.estimate_mib("generative", 10_000_000, 384, 0) > scale.estimate_mib("generative", 10_000_000, 384, 96)
    runs, left = scale.plan((100_000, 10_000_000), ("generative", "exact", "ivfpq"), 384, 96, memory_mib=12 * 1024)
    assert {(n, c) for n, c, _ in runs} == {(100_000, "generative"), (100_000, "exact"), (100_000, "ivfpq"),
                                             (10_000_000, "generative"), (10_000_000, "ivfpq")}
    assert [r["case"] for r in left] == ["exact 10,000,000"] and "GiB available" in left[0]["left_out"]
    with pytest.raises(ValueError, match=r"10,000,000 products do not fit: the generative channel needs about .* GiB"):
        scale.plan((100_000, 10_000_000), ("generative",), 384, 0, memory_mib=8 * 1024)
    with pytest.raises(ValueError, match="unknown channel 'faiss'"):
        scale.estimate_mib("faiss", 10, 384, 96)


def test_a_tiled_catalog_keeps_every_products_sid_valid_in_the_trie(trained):
    ws, _ = trained
    from workbench.embed import embed_workspace, get_embedder

    base = embed_workspace(ws, get_embedder("hashing-64"), ("products",), progress=False)["products"]
    n = 3 * len(base)
    ids = [str(i) for i in range(n)]
    r, built = scale.grown_retriever(ws, base, ids, sigma=0.5)
    assert built["sids"] == len(r.index.sids) and built["sid_assign_s"] > 0
    rows = r.lookup.rows()
    assert len(rows) == n  # every product is in one SID's list
    sids = torch.as_tensor(r.index.sids[[rows[p] for p in ids]], dtype=torch.long)  # (n, L) each product's SID
    node = torch.zeros(n, dtype=torch.long)
    for level in range(r.trie.levels):
        node = r.trie.step(level, node, sids[:, level])
        assert (node >= 0).all(), f"a product's SID leaves the trie at level {level}"
    assert r.index.counts.sum() == n and len(r.index.sids) > 1


def test_bench_scale_measures_each_channel_at_each_size(trained, tmp_path):
    ws, _ = trained
    n0 = len(ws.table("products"))
    rows = scale.run(ws, (n0, 2 * n0), budget=20, widths=(8,), compact=8, queries=12, echo=lambda *_: None)
    assert sorted((r["channel"], r["products"]) for r in rows) == sorted((c, n) for c in scale.CHANNELS for n in (n0, 2 * n0))
    by = {(r["channel"], r["products"]): r for r in rows}
    for n in (n0, 2 * n0):
        assert by["exact", n]["exact_recall@20"] > 0.99  # the scan finds the streamed truth (but for ties at the cut: hashing vectors tie)
        assert by["exact", n]["bytes_per_product"] == 64 * 4
        assert by["ivfpq", n]["bytes_per_product"] < by["hnsw", n]["bytes_per_product"]
        assert 0 < by["generative", n]["exact_recall@20"] <= 1
        assert by["generative", n]["bytes_per_product"] < 64 * 4  # 8 codes, not 64 floats
        assert by["generative", n]["sid_assign_s"] > 0 and by["generative", n]["sids"] > 1
    for r in rows:
        assert r["c1_p50_ms"] > 0 and r["c1_p99_ms"] >= r["c1_p50_ms"] and r["c32_qps"] > 0 and r["peak_rss_mib"] > 0
    page = scale.chart(rows, tmp_path / "scale.html")
    assert "plotly" in page.read_text()[:5000]


def test_the_generative_widths_and_pools_share_one_build_and_a_larger_pool_finds_at_least_as_much(trained, tmp_path):
    ws, _ = trained
    n0 = len(ws.table("products"))
    rows = scale.run(ws, (2 * n0,), ("generative",), budget=10, widths=(8, 4), compact=0, queries=12, pools=(4, 1),
                     echo=lambda *_: None)
    cases = [(w, p) for w in (4, 8) for p in (1, 4)]
    assert [(r["case"], r["width"], r["pool"]) for r in rows] == [(f"generative {2 * n0:,} width {w} pool {p}", w, p) for w, p in cases]
    assert len({r["build_s"] for r in rows}) == 1 and {r["decode"] for r in rows} == {"eager"}
    by = {(r["width"], r["pool"]): r["exact_recall@10"] for r in rows}
    for w in (4, 8):  # the float32 order keeps the exact top of its candidates, and pool 4's candidates hold pool 1's
        assert by[w, 4] >= by[w, 1]
    for r in rows:  # the mean of its queries' recalls, inside its own interval
        assert len(r["per_query"]) == 12 and r["exact_recall@10"] == pytest.approx(np.mean(r["per_query"]))
        assert r["recall_lo"] <= r["exact_recall@10"] <= r["recall_hi"]
    diffs = {d["case"]: d for d in scale.paired(rows)}
    ref = f"generative {2 * n0:,} width 4 pool 1"
    assert set(diffs) == {f"{r['case']} - {ref}" for r in rows[1:]}
    for r in rows[1:]:
        d = diffs[f"{r['case']} - {ref}"]
        assert d["difference"] == pytest.approx(r["exact_recall@10"] - rows[0]["exact_recall@10"]) and d["lo"] <= d["difference"] <= d["hi"]
    assert diffs[f"generative {2 * n0:,} width 4 pool 4 - {ref}"]["lo"] >= 0  # never lower, query by query
    page = scale.chart(rows, tmp_path / "pools.html").read_text()
    assert '"name":"generative width 4 pool 1"' in page and '"name":"generative width 8 pool 4"' in page
    one = scale.run(ws, (n0,), ("generative",), budget=10, widths=(4,), compact=0, queries=4, echo=lambda *_: None)
    assert one[0]["case"] == f"generative {n0:,}" and one[0]["width"] == 4  # one case: nothing to tell apart in its name
    with pytest.raises(ValueError, match="pools must be >= 1"):
        scale.run(ws, (n0,), ("generative",), pools=(0,), echo=lambda *_: None)
    with pytest.raises(ValueError, match="widths must be >= 1"):
        scale.run(ws, (n0,), ("generative",), widths=(0,), echo=lambda *_: None)


def test_capacity_takes_the_better_of_one_at_a_time_and_batches_within_each_budget():
    row = {"case": "hnsw 1,000,000", "channel": "hnsw", "products": 10**6, "c1_qps": 50.0, "c1_p99_ms": 30.0,
           "c32_qps": 300.0, "c32_p99_ms": 140.0}
    slow = {**row, "case": "exact 1,000,000", "channel": "exact", "c1_p99_ms": 190.0, "c1_qps": 6.5, "c32_p99_ms": 700.0, "c32_qps": 54.0}
    left = {"case": "bm25 10,000,000", "channel": "bm25", "products": 10**7, "left_out": "needs about 20 GiB"}
    got = {r["case"]: r for r in scale.capacity([row, slow, left], 10_000, (50, 250))}
    assert set(got) == {"hnsw 1,000,000, p99 <= 50 ms", "hnsw 1,000,000, p99 <= 250 ms", "exact 1,000,000, p99 <= 250 ms"}
    assert got["hnsw 1,000,000, p99 <= 50 ms"]["batch"] == 1 and got["hnsw 1,000,000, p99 <= 50 ms"]["machines"] == 200
    assert got["hnsw 1,000,000, p99 <= 250 ms"]["batch"] == 32 and got["hnsw 1,000,000, p99 <= 250 ms"]["machines"] == 34
    assert got["exact 1,000,000, p99 <= 250 ms"]["batch"] == 1 and got["exact 1,000,000, p99 <= 250 ms"]["machines"] == 1539
    assert scale.capacity([slow], 10_000, (50,)) == []  # nothing within 50 ms: no line, and the table says so


def test_paired_sets_each_row_against_its_sizes_generative_reference_query_by_query():
    def row(case, channel, n, per):
        return {"case": case, "channel": channel, "products": n, "exact_recall@5": float(np.mean(per)), "per_query": per}

    rows = [row("hnsw 100", "hnsw", 100, [1.0, 1.0, 0.8, 1.0]), row("generative 100", "generative", 100, [0.6, 0.8, 0.8, 1.0]),
            row("exact 100", "exact", 100, [1.0, 1.0, 1.0, 1.0]), {"case": "bm25 100", "channel": "bm25", "products": 100, "left_out": "x"},
            row("hnsw 200", "hnsw", 200, [0.2, 0.4, 0.4, 0.4]), row("exact 200", "exact", 200, [0.2, 0.4, 0.6, 0.4])]
    got = {d["case"]: d for d in scale.paired(rows)}
    assert set(got) == {"hnsw 100 - generative 100", "exact 100 - generative 100", "exact 200 - hnsw 200"}
    d = got["exact 100 - generative 100"]
    assert d["difference"] == pytest.approx(0.2) and d["reference"] == pytest.approx(0.8) and d["queries"] == 4
    assert 0 < d["lo"] <= 0.2 <= d["hi"] <= 0.4  # every query gains 0 to 0.4: so does every resample's mean
    e = got["exact 200 - hnsw 200"]
    assert e["difference"] == pytest.approx(0.05) and e["lo"] == 0 and 0.05 < e["hi"] <= 0.2  # one query of four gains 0.2


def test_bench_scale_logs_its_rows_their_paired_differences_and_capacity(trained):
    ws, _ = trained
    n0 = len(ws.table("products"))
    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "scale", "--sizes", str(n0), "--channels", "generative",
                                  "--widths", "4", "--pools", "1,4", "--queries", "6", "--budget", "10", "--compact", "0"])
    assert r.exit_code == 0, r.output
    assert "scale-paired" in r.output and f"generative {n0:,} pool 4 - generative {n0:,} pool 1" in r.output
    got = ws.logbook().query("SELECT bench, case_name, metric FROM bench WHERE bench LIKE 'scale%'")
    assert set(got["bench"]) == {"scale", "scale-paired", "scale-capacity (10,000 q/s)"}
    assert "per_query" not in set(got["metric"]) and {"recall_lo", "recall_hi"} <= set(got["metric"])
    assert {"difference", "lo", "hi"} <= set(got[got["bench"] == "scale-paired"]["metric"])


def test_an_empty_table_prints_that_it_has_no_rows(capsys):
    from workbench.report import report

    report("scale-capacity", [])
    assert capsys.readouterr().out == "\nscale-capacity\n(no rows)\n"


def test_bench_scale_names_bad_inputs(trained):
    ws, _ = trained
    n0 = len(ws.table("products"))

    def bench(*args):
        return CliRunner().invoke(main, ["-w", str(ws.path), "bench", "scale", *args])

    r = bench("--sizes", str(n0 - 1))
    assert r.exit_code == 1 and f"below the catalog's {n0:,} products" in r.output
    r = bench("--sizes", str(n0), "--channels", "generative,faiss")
    assert r.exit_code == 1 and "unknown channel(s) ['faiss']" in r.output
    r = bench("--sizes", "100000000", "--memory-gib", "4", "--compact", "8")
    assert r.exit_code == 1 and "100,000,000 products do not fit" in r.output and "GiB" in r.output
    r = bench("--sizes", str(n0), "--compact", "7")
    assert r.exit_code == 1 and "M must divide 64" in r.output
    r = bench("--sizes", "ten")
    assert r.exit_code == 2 and "comma-separated integers" in r.output
    r = bench("--sizes", str(n0), "--sigma", "nan")
    assert r.exit_code == 2
    r = bench("--sizes", str(n0), "--widths", "8,0")
    assert r.exit_code == 2 and "values must be >= 1" in r.output
    r = bench("--sizes", str(n0), "--pools", "16,0")
    assert r.exit_code == 2 and "values must be >= 1" in r.output
    r = bench("--sizes", str(n0), "--p99-ms", "50,fast")
    assert r.exit_code == 2 and "comma-separated milliseconds" in r.output
