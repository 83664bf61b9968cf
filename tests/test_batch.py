"""Chunked batch jobs: the same answers in chunks as in one piece, valid SIDs, clear errors, no half-written output."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from workbench import batch
from workbench.cli import main
from workbench.embed import get_embedder
from workbench.sid.store import load_model, load_sids


@pytest.fixture(scope="module")
def catalog(trained, tmp_path_factory):
    ws, _ = trained
    d = tmp_path_factory.mktemp("batch")
    return ws, batch.tile_catalog(ws.table("products"), 7_000, d / "products.parquet", chunk=2_500), d


def cli(ws, *args):
    return CliRunner().invoke(main, ["-w", str(ws.path), "batch", *args])


def test_tiled_catalog_has_unique_ids_and_texts(catalog):
    ws, src, _ = catalog
    df, base = pd.read_parquet(src), ws.table("products")
    assert len(df) == 7_000 and df["product_id"].is_unique and len(base) < 7_000
    assert df["title"].nunique() >= 2 * base["title"].nunique()  # each copy's titles differ from the others'


def test_stream_works_chunk_by_chunk(catalog, tmp_path):
    _, src, _ = catalog
    sizes = []

    def fn(rb):
        sizes.append(rb.num_rows)
        return pa.table({"product_id": rb.column("product_id")})

    stats = batch.stream(src, tmp_path / "ids.parquet", ["product_id"], fn, chunk=3_000, progress=False)
    assert sizes == [3_000, 3_000, 1_000] and stats["rows"] == 7_000 and stats["peak_rss_mib"] > 0
    assert pd.read_parquet(tmp_path / "ids.parquet")["product_id"].tolist() == pd.read_parquet(src)["product_id"].tolist()


def test_embed_sids_decode_in_chunks_equal_one_piece(catalog):
    ws, src, d = catalog
    for chunk in ("1000", "100000"):
        r = cli(ws, "embed", str(src), str(d / f"vec-{chunk}.parquet"), "--embedder", "hashing-64", "--chunk", chunk)
        assert r.exit_code == 0, r.output
    a, b = pd.read_parquet(d / "vec-1000.parquet"), pd.read_parquet(d / "vec-100000.parquet")
    assert a["product_id"].tolist() == pd.read_parquet(src)["product_id"].tolist()
    assert np.array_equal(batch.vectors_of(pa.Table.from_pandas(a)), batch.vectors_of(pa.Table.from_pandas(b))) and batch.vectors_of(pa.Table.from_pandas(a)).shape == (7_000, 64)

    # SIDs from vectors equal SIDs from text, and the sample's own products get the workspace's SIDs
    assert cli(ws, "sids", str(d / "vec-1000.parquet"), str(d / "sid-v.parquet"), "--vectors", "--chunk", "1500").exit_code == 0
    assert cli(ws, "sids", str(src), str(d / "sid-t.parquet"), "--chunk", "4000").exit_code == 0
    v, t = pd.read_parquet(d / "sid-v.parquet"), pd.read_parquet(d / "sid-t.parquet")
    assert v.equals(t)
    # the workspace's own products, streamed, get exactly the SIDs training wrote for them
    assert cli(ws, "sids", str(ws.table_path("products")), str(d / "own.parquet"), "--chunk", "700").exit_code == 0
    own = pd.read_parquet(d / "own.parquet")
    assert own.equals(load_sids(ws)[own.columns].astype(own.dtypes.to_dict()))

    r = cli(ws, "decode", str(src), str(d / "dec.parquet"), "--width", "8", "--top", "3", "--chunk", "2000")
    assert r.exit_code == 0, r.output
    dec = pd.read_parquet(d / "dec.parquet")
    assert len(dec) == 7_000 and dec["product_id"].tolist() == v["product_id"].tolist()
    known = set(load_sids(ws)[["sid_1", "sid_2", "sid_3"]].astype(str).agg("-".join, axis=1))
    assert all(1 <= len(s) <= 3 and set(s) <= known for s in dec["sids"])  # only SIDs that exist (the trie)
    assert all(list(lp) == sorted(lp, reverse=True) for lp in dec["logp"])
    # with --products the rows carry the channel's ranked products, the same as the app and gen search rank them
    head = d / "head.parquet"
    pd.read_parquet(ws.table_path("products")).head(50).to_parquet(head)
    r = cli(ws, "decode", str(head), str(d / "dec-p.parquet"), "--width", "8", "--products", "5", "--chunk", "20")
    assert r.exit_code == 0, r.output
    withp = pd.read_parquet(d / "dec-p.parquet")
    from workbench.gen.retrieve import Channel, Retriever

    ret, titles = Retriever.from_workspace(ws), withp["title"].tolist()
    expect = Channel.from_workspace(ws)(titles, ret.search(titles, 8))
    assert [list(p) for p in withp["products"]] == [g[:5] for g in expect]
    assert cli(ws, "decode", str(head), str(d / "x.parquet"), "--products", "-1").exit_code == 2
    runs = ws.logbook().query("SELECT name FROM runs WHERE kind = 'batch' AND status = 'finished'")["name"].tolist()
    assert {"batch embed", "batch sids", "batch decode"} <= set(runs)


def test_bad_inputs_are_named_and_leave_no_output(catalog, tmp_path):
    ws, src, d = catalog
    out = tmp_path / "out.parquet"
    r = cli(ws, "embed", str(tmp_path / "none.parquet"), str(out), "--embedder", "hashing-64")
    assert r.exit_code != 0 and "no input file" in r.output
    (tmp_path / "bad.parquet").write_text("not parquet")
    r = cli(ws, "embed", str(tmp_path / "bad.parquet"), str(out), "--embedder", "hashing-64")
    assert r.exit_code != 0 and "not a Parquet file" in r.output
    pq.write_table(pa.table({"product_id": ["a"], "name": ["x"]}), tmp_path / "nocol.parquet")
    r = cli(ws, "embed", str(tmp_path / "nocol.parquet"), str(out), "--embedder", "hashing-64")
    assert r.exit_code != 0 and "no column(s) ['title']" in r.output
    pq.write_table(pa.table({"product_id": pa.array([], pa.string()), "title": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    r = cli(ws, "embed", str(tmp_path / "empty.parquet"), str(out), "--embedder", "hashing-64")
    assert r.exit_code != 0 and "no rows" in r.output
    r = cli(ws, "embed", str(src), str(src), "--embedder", "hashing-64")
    assert r.exit_code != 0 and "overwrite the input" in r.output
    # vectors of another dimension than the SID model's
    assert cli(ws, "embed", str(src), str(tmp_path / "v32.parquet"), "--embedder", "hashing-32").exit_code == 0
    r = cli(ws, "sids", str(tmp_path / "v32.parquet"), str(out), "--vectors")
    assert r.exit_code != 0 and "64" in r.output and "32" in r.output
    r = cli(ws, "decode", str(src), str(out), "--column", "query")
    assert r.exit_code != 0 and "no column(s) ['query']" in r.output
    assert not out.exists() and not list(tmp_path.glob(".out.parquet.*"))  # nothing half-written
    assert load_model(ws)[1].model.input_dim == 64
    assert get_embedder("hashing-64").dim == 64


@pytest.mark.slow
def test_torchrun_deals_out_chunks_and_merges_them_in_order(catalog, tmp_path):
    """2 processes: 5 chunks dealt 3 + 2, and 1 chunk (rank 1 idle); the outputs equal one process's."""
    import subprocess

    from workbench import dist

    ws, src, _ = catalog

    def run(procs, *args):
        r = subprocess.run(dist.command(procs, ["-w", str(ws.path), "batch", *args]), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        return r.stdout

    for procs in (1, 2):
        out = run(procs, "decode", str(src), str(tmp_path / f"dec{procs}.parquet"), "--width", "4", "--top", "2", "--chunk", "1500")
        assert out.count("decode: 7,000 rows") == 1  # rank 0 reports the whole job
        run(procs, "embed", str(src), str(tmp_path / f"vec{procs}.parquet"), "--embedder", "hashing-64", "--chunk", "100000")
    one, two = (pd.read_parquet(tmp_path / f"dec{p}.parquet") for p in (1, 2))
    assert one["product_id"].equals(two["product_id"]) and one["sids"].map(list).equals(two["sids"].map(list))
    assert np.allclose(np.concatenate(one["logp"].to_numpy()), np.concatenate(two["logp"].to_numpy()), atol=1e-4)
    assert pd.read_parquet(tmp_path / "vec1.parquet").equals(pd.read_parquet(tmp_path / "vec2.parquet"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dec1.parquet", "dec2.parquet", "vec1.parquet", "vec2.parquet"]  # no parts left
    runs = ws.logbook().query("SELECT config->>'$.processes' AS p FROM runs WHERE kind = 'batch' AND name = 'batch decode'")
    assert {"1", "2"} <= set(runs["p"])


@pytest.mark.slow
def test_bench_batch_runs_each_job_on_each_process_count(trained_copy):
    """`bench batch --procs 1,2`: a row per job and process count, the cores split between the processes, the
    speed-up over one process; a bad count is named before anything runs."""
    ws = trained_copy
    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "batch", "--n", "3000", "--jobs", "embed,sids",
                                  "--embedder", "hashing-64", "--procs", "1,2", "--chunk", "1000"])
    assert r.exit_code == 0, r.output
    got = ws.logbook().query("SELECT case_name, metric, value FROM bench WHERE bench = 'batch-scale'")
    procs = got[got["metric"] == "processes"].set_index("case_name")["value"]
    assert procs.to_dict() == {"embed 3,000, 1 x 2 threads": 1, "embed 3,000, 2 x 1 threads": 2,
                               "sids 3,000, 1 x 2 threads": 1, "sids 3,000, 2 x 1 threads": 2}
    rows = got[got["metric"] == "products"]
    assert (rows["value"] == 3000).all() and len(rows) == 4
    speed = got[got["metric"] == "speedup"].set_index("case_name")["value"]
    assert speed["embed 3,000, 1 x 2 threads"] == 1 and speed["sids 3,000, 2 x 1 threads"] > 0
    bad = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "batch", "--n", "3000", "--procs", "1,0"])
    assert bad.exit_code == 2 and "values must be >= 1" in bad.output
