"""Personalised search on category-path queries (`bench psearch`): the queries, the skipped targets, and
that on a toy log where only the history says which product a user buys, the user's history pays and
the anonymous model cannot do better than the shelf."""

import numpy as np
import pandas as pd
import pytest

from workbench.bench.psearch import GATES, category_queries, run
from workbench.bench.seqrec import examples, sid_table
from workbench.gen.config import TrainConfig

SHELVES, TYPES = 6, 4  # each shelf (category) holds one product of each type; a user always buys their type


def catalog():
    ids = [f"s{c}t{t}" for c in range(SHELVES) for t in range(TYPES)] + ["loose"]
    products = pd.DataFrame({"product_id": ids,
                             "title": [f"shelf {c} model {'abcd'[t]}" for c in range(SHELVES) for t in range(TYPES)] + ["odd one"],
                             "category": [f"Lab > Shelf {'uvwxyz'[c]}" for c in range(SHELVES) for _ in range(TYPES)] + [None]})
    codes = np.array([[c, t] for c in range(SHELVES) for t in range(TYPES)] + [[0, 0]])
    codes = np.c_[codes, np.r_[np.zeros(len(ids) - 1, int), 1]]  # a third level tells 'loose' from s0t0
    seqs = {}
    rng = np.random.default_rng(0)
    for u in range(240):
        t = u % TYPES
        shelves = rng.choice(SHELVES, size=6)
        seqs[str(u)] = [f"s{c}t{t}" for c in shelves[:3]] + ["loose"] + [f"s{c}t{t}" for c in shelves[3:]]
    return products, pd.Series(seqs), sid_table(products["product_id"], codes)


def test_category_queries_are_the_path_below_the_root_each_word_once():
    products = pd.DataFrame({"product_id": ["a", "b", "c"], "category": [
        "Industrial & Scientific > Fasteners > Collated Fasteners > Staples", None, "Root > Tapes, Adhesives & Sealants"]})
    q = category_queries(products)
    assert q.to_dict() == {"a": "fasteners collated staples", "b": "", "c": "tapes adhesives sealants"}
    with pytest.raises(ValueError, match="products.category"):
        category_queries(products.drop(columns="category"))


def test_targets_without_a_query_are_skipped_but_stay_in_the_history():
    products, seqs, sids = catalog()
    q = category_queries(products)
    code_of = dict(zip(sids["product_id"], sids[["sid_1", "sid_2", "sid_3"]].to_numpy()))
    titles = pd.Series(products["title"].to_numpy(), index=products["product_id"])
    train, targets = examples(seqs.head(1), "train", titles, code_of, np.array([0, SHELVES, SHELVES + TYPES]), 5, queries=q)
    items = seqs.iloc[0]
    assert targets == [items[1], items[2], items[4]]  # positions 1..n-3, 'loose' (position 3) has no query
    assert train.text == [q[items[1]], q[items[2]], q[items[4]]]
    assert (train.context[2] >= 0).sum() == 4 * 3  # i_5's history: four products (loose included), three levels each


@pytest.mark.slow
def test_the_history_pays_where_it_alone_names_the_product():
    products, seqs, sids = catalog()
    model = {"d_model": 64, "n_heads": 4, "enc_layers": 1, "dec_layers": 1, "d_ff": 128}
    rows, facts = run(products, seqs, sids, model, TrainConfig(lr=3e-3, batch_size=64), (10, 10, 25), history=5,
                      width=8, k=1, progress=False)
    hit = {r["search"].split(" (")[0]: r["hit@1"] for r in rows}
    assert facts["test_targets"] == 240 and facts["queries"] == SHELVES and facts["gate"] in GATES
    assert hit["anonymous"] <= 1 / TYPES + 0.1  # the shelf is all a query names: one in four at best
    assert hit["stage 3 with user"] > 0.8 and hit["stage 3 with user"] > hit["stage 3 without user"] + 0.4
    personal = next(r for r in rows if r["search"] == "stage 3 with user")
    assert personal["low"] > 0 and personal["x anonymous model"] > 2  # a paired interval above zero
    assert personal["low "] > 0 and personal["vs same model without user"] > 0.4  # and from the same model without the user
    assert facts["gate"] > 0 and hit["gated"] > 0.8  # validation picks a gate that lets the user in
