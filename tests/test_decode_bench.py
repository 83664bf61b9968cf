"""`workbench bench decode`: where a generative query's time goes, beside FAISS HNSW."""

import math

import pytest
from click.testing import CliRunner

from workbench.bench.decode import run
from workbench.cli import main


def test_bench_decode_times_each_stage_and_profiles_the_decode(trained):
    ws, _ = trained
    rows, profile = run(ws, queries=12, width=8, budget=20, modes=("eager",), warmup=2, echo=lambda s: None)
    rows = {r["case"]: r for r in rows}
    assert list(rows) == ["generative eager", "dense-hnsw"]
    gen, hnsw = rows["generative eager"], rows["dense-hnsw"]
    for k in ("encode_ms", "decode_ms", "lists_ms", "order_ms", "beyond_ms"):
        assert gen[k] > 0, k
    assert gen["decode_ms"] <= gen["beyond_ms"] <= gen["beyond_p99_ms"]
    assert hnsw["search_ms"] == hnsw["beyond_ms"] > 0 and math.isnan(hnsw["ops_per_query"])
    for r in rows.values():
        assert 0 <= r["exact_recall@20"] <= 1 and 0 <= r["recall@20"] <= 1
    assert gen["ops_per_query"] >= 30  # three levels of decoder layers, heads, top-k and gathers
    assert profile and {p["mode"] for p in profile} == {"eager"}
    assert all(0 < p["share"] <= 1 and p["calls_per_query"] > 0 for p in profile)
    assert sum(p["share"] for p in profile) <= 1 + 1e-9


@pytest.mark.slow
def test_the_compiled_decode_finds_what_the_eager_one_finds(trained):
    ws, _ = trained
    rows, _ = run(ws, queries=12, width=8, budget=20, warmup=2, echo=lambda s: None)
    eager, compiled = rows[0], rows[1]
    assert compiled["case"] == "generative compiled" and compiled["first_s"] > 0
    assert compiled["exact_recall@20"] == pytest.approx(eager["exact_recall@20"])
    assert compiled["recall@20"] == pytest.approx(eager["recall@20"])


def test_bench_decode_refuses_bad_modes(trained):
    ws, _ = trained
    with pytest.raises(ValueError, match="decode modes"):
        run(ws, modes=("fast",))
    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "decode", "--modes", "jit"])
    assert r.exit_code != 0 and "decode modes must be some of" in r.output and "Traceback" not in r.output
