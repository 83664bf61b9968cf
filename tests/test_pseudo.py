"""Pseudo-queries: drawn from product text only, deterministic per product, never a held-out query."""

import pandas as pd
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.data import splits
from workbench.data.pseudo import ABBREVIATIONS, KINDS, PseudoConfig, pseudo_queries, words

PRODUCTS = pd.DataFrame({"product_id": ["a", "b", "c"],
                         "title": ["DEWALT 20-Volt MAX Cordless Drill (Tool Only)", "Stainless Steel 5 Gallon Bucket", "Mop"],
                         "brand": ["DEWALT", None, None], "category": ["Tools > Power Tools > Drills", None, "Cleaning"]})


def test_deterministic_per_product_whatever_the_catalog_order():
    a = pseudo_queries(PRODUCTS, PseudoConfig(seed=3))
    b = pseudo_queries(PRODUCTS.iloc[::-1], PseudoConfig(seed=3))
    key = ["product_id", "query"]
    assert a.sort_values(key).reset_index(drop=True).equals(b.sort_values(key).reset_index(drop=True))
    assert not a.equals(pseudo_queries(PRODUCTS, PseudoConfig(seed=4)))  # another seed, other queries
    assert set(a["kind"]) <= set(KINDS) and not a.duplicated(key).any()
    assert (a.groupby("product_id").size() <= 4).all() and a.groupby("product_id").size()["a"] == 4


def test_queries_are_made_of_the_products_own_words():
    q = pseudo_queries(PRODUCTS, PseudoConfig(per_product=12, seed=0))
    for r in q.itertuples():
        p = PRODUCTS.set_index("product_id").loc[r.product_id]
        own = set(words(p["title"])) | set(words(p["brand"] or "")) | set(words(p["category"] or ""))
        own |= {ABBREVIATIONS.get(w, w) for w in own}
        assert set(r.query.split()) <= own, r
        assert 1 <= len(r.query.split()) <= 6 + 1  # a brand or category word may lead a 6-word span
    assert "brand" not in set(q[q["product_id"] == "b"]["kind"])  # no brand, no brand queries
    assert set(q[q["product_id"] == "c"]["query"]) <= {"cleaning mop", "mop"}  # a one-word title


def test_excluded_texts_never_come_out_and_bad_inputs_are_named():
    q = pseudo_queries(PRODUCTS, PseudoConfig(per_product=20))
    ban = q["query"].iloc[0]
    again = pseudo_queries(PRODUCTS, PseudoConfig(per_product=20), exclude=[ban.upper() + "  "])
    assert ban not in set(again["query"])
    with pytest.raises(ValueError, match="no products"):
        pseudo_queries(PRODUCTS.head(0))
    with pytest.raises(ValueError, match="min_words"):
        PseudoConfig(min_words=5, max_words=2)
    assert pseudo_queries(PRODUCTS, PseudoConfig(per_product=0)).empty


def test_data_pseudo_writes_a_table_without_validation_or_test_queries(sample_ws):
    r = CliRunner().invoke(main, ["-w", str(sample_ws.path), "data", "pseudo", "--per-product", "3", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert "pseudo-queries for 3,000 products" in r.output
    pq = sample_ws.table("pseudo_queries")
    assert len(pq) > 8_000 and set(pq["product_id"]) == set(sample_ws.table("products")["product_id"])
    q = sample_ws.table("queries")
    held = {" ".join(words(t)) for t in q.loc[splits.mask(sample_ws, q["query_id"], "validation", "test"), "query"]}
    assert not held & set(pq["query"])
    assert sample_ws.validate_all()["pseudo_queries"] == len(pq)
    bad = CliRunner().invoke(main, ["-w", str(sample_ws.path), "data", "pseudo", "--per-product", "-1"])
    assert bad.exit_code == 1 and "per_product >= 0" in bad.output
