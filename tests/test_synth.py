import hashlib
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from workbench import Workspace
from workbench.cli import main
from workbench.data.synth import SynthConfig, bm25_matrix, generate

from .conftest import SAMPLE

SMALL = replace(SynthConfig(), n_products=600, n_users=80, n_sessions=800, n_judged_queries=50)


def digest(folder):
    """Each data file's hash (the writer's empty lock file, `.writer.lock`, is not data)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".writer.lock"}


def test_sample_data_regenerates_byte_identical(tmp_path):
    out = tmp_path / "regen"
    r = CliRunner().invoke(main, ["data", "synth", "--preset", "sample", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert digest(out) == digest(SAMPLE)


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = generate(SMALL, False), generate(SMALL, False), generate(replace(SMALL, seed=1), False)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert not a["products"]["title"].equals(c["products"]["title"])


def test_sample_marketplace_has_the_promised_shape():
    ws = Workspace(SAMPLE)
    p, log = ws.table("products"), ws.table("search_log")
    assert 1000 <= len(p) <= 10000 and 100 <= len(ws.table("users")) <= 1000
    assert 10_000 <= log["impressed"].sum() <= 100_000
    assert (p["category"].str.count(" > ") == 2).all() and p["category"].nunique() >= 50
    assert p["brand"].nunique() >= 50 and p["price"].gt(0).all()
    keys = set().union(*(json.loads(a).keys() for a in p["attributes"]))
    assert {"colour", "material", "size"} <= keys
    q = ws.table("queries")["query"]
    assert q.str.contains(r"\bunder \d+").any() and q.str.contains("cheap|budget|affordable").any()
    assert ws.table("truth_sessions")["typo"].mean() > 0.02
    assert set(ws.table("judgments")["relevance"]) == {0.0, 1.0, 2.0, 3.0}


def test_position_bias_and_clickbait_mislead_clicks():
    ws = Workspace(SAMPLE)
    log = ws.table("search_log").merge(ws.table("truth_products"), on="product_id")
    seen = log[log["impressed"]]
    ctr = seen.groupby("position")["clicked"].mean()
    assert ctr[1] > 2 * ctr[10]  # position bias
    by = seen.groupby("clickbait").agg(ctr=("clicked", "mean"), buys=("purchased", "sum"), clicks=("clicked", "sum"))
    cvr = by["buys"] / by["clicks"]
    assert by.loc[True, "ctr"] > 1.5 * by.loc[False, "ctr"]  # click-bait attracts clicks...
    assert cvr[True] < 0.6 * cvr[False]  # ...but rarely sells
    assert log.groupby("session_id")["purchased"].sum().max() == 1  # at most one purchase per session
    assert not (log["clicked"] & ~log["impressed"]).any()


def test_queries_express_their_intent():
    frames = generate(SMALL, False)
    sess, q = frames["truth_sessions"], frames["queries"].set_index("query_id")["query"]
    log = frames["search_log"].drop_duplicates("session_id").merge(sess, on="session_id")
    branded = log[log["brand"].notna() & ~log["typo"]]
    assert len(branded) and all(b.lower() in q[i] for b, i in zip(branded["brand"], branded["query_id"]))
    # the legacy engine puts same-category products on top for plain (no typo) leaf queries
    top = frames["search_log"][frames["search_log"]["position"] == 1].merge(sess, on="session_id")
    top = top[(top["leaf"] >= 0) & ~top["typo"]].merge(frames["products"], on="product_id", suffixes=("", "_p"))
    assert (top["category"] == top["category_p"]).mean() > 0.7


def test_bm25_prefers_rarer_terms_and_shorter_docs():
    vocab = {}
    W = bm25_matrix([["red", "mug"], ["red", "tea", "pot", "large", "heavy"], ["blue", "mug"]], vocab).toarray()
    assert W[0, vocab["mug"]] > W[1, vocab["red"]]  # same tf, shorter doc wins
    assert W[2, vocab["blue"]] > W[2, vocab["mug"]]  # rarer term weighs more


@pytest.mark.parametrize("bad", [{"n_products": 0}, {"clickbait_share": 1.5}, {"typo_rate": -0.1}])
def test_bad_config(bad):
    with pytest.raises(ValueError, match="SynthConfig"):
        replace(SynthConfig(), **bad)


def test_cli_rejects_bad_size(tmp_path):
    r = CliRunner().invoke(main, ["data", "synth", "--out", str(tmp_path / "w"), "--products", "0"])
    assert r.exit_code != 0 and "n_products must be >= 1" in r.output
    assert not (tmp_path / "w").exists()


def test_tiny_marketplace_still_valid(tmp_path):
    frames = generate(replace(SynthConfig(), n_products=5, n_users=2, n_sessions=40, n_judged_queries=2), False)
    Workspace(tmp_path).write_tables(frames)  # validates every table and every reference
    assert np.isin(frames["search_log"]["product_id"], frames["products"]["product_id"]).all()
