"""Next-item benchmark (Amazon Scientific protocol) on a small synthetic catalog: splits, inputs, and
that the same generator learns a sequential pattern on any SID table."""

import numpy as np
import pandas as pd
import pytest

from workbench.bench.seqrec import examples, history_tokens, run_case, sequences, sid_table
from workbench.gen.config import TrainConfig

N = 24  # products; each user walks p, p+1, p+2, ... (mod N)


def catalog():
    products = pd.DataFrame({"product_id": [str(i) for i in range(N)],
                             "title": [f"item {chr(97 + i)} thing" for i in range(N)],
                             "category": ["lab > glass" if i % 2 else "lab > tools" for i in range(N)]})
    rows = []
    for u in range(96):
        start, n = u % N, 5 + u % 3
        rows += [{"user_id": str(u), "product_id": str((start + j) % N), "seq": j, "event": "review"} for j in range(n)]
    return products, pd.DataFrame(rows)


def test_sequences_order_and_minimum_length():
    inter = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b"], "product_id": ["3", "1", "2", "1", "2"],
                          "seq": [2, 0, 1, 0, 1]})
    seqs = sequences(inter)
    assert seqs.to_dict() == {"a": ["1", "2", "3"]}  # b has 2 items: nothing to hold out
    with pytest.raises(ValueError, match="no user has 3"):
        sequences(inter[inter["user_id"] == "b"])
    with pytest.raises(ValueError, match="'seq' or 'time'"):
        sequences(inter.drop(columns="seq"))


def test_history_tokens_newest_first_with_level_offsets():
    offsets = np.array([0, 4])  # vocab (4, 3)
    got = history_tokens([np.array([1, 2]), np.array([3, 0])], offsets, history=3)
    assert got.tolist() == [3, 4, 1, 6, -1, -1]


def test_leave_last_out_splits_and_inputs():
    seqs = pd.Series({"u": ["a", "b", "c", "d", "e"]})
    titles = pd.Series({p: p.upper() for p in "abcde"})
    code_of = {p: np.array([i, 0]) for i, p in enumerate("abcde")}
    offsets = np.array([0, 5])
    tr, tr_t = examples(seqs, "train", titles, code_of, offsets, history=2)
    va, va_t = examples(seqs, "valid", titles, code_of, offsets, history=2)
    te, te_t = examples(seqs, "test", titles, code_of, offsets, history=2, n_titles=3)
    assert (tr_t, va_t, te_t) == (["b", "c"], ["d"], ["e"])
    assert te.text == ["D | C | B"]  # three titles, newest first
    assert va.text == ["C"]  # by default the latest title only
    assert te.context.tolist() == [[3, 5, 2, 5]]  # d then c, each (level 1, level 2 + 5)
    assert tr.sids.tolist() == [[1, 0], [2, 0]]
    assert tr.context[0].tolist() == [0, 5, -1, -1]  # one item of history, one empty slot


def test_missing_sid_is_named():
    products, inter = catalog()
    sids = sid_table(products["product_id"][:-1], np.zeros((N - 1, 2), np.int64))
    with pytest.raises(ValueError, match="no SID for 1 products"):
        run_case(products, sequences(inter), sids, {"d_model": 32}, TrainConfig(), (1, 1), label="x", progress=False)


def test_generator_learns_the_next_item():
    products, inter = catalog()
    codes = np.column_stack([np.arange(N) // 6, np.arange(N) % 6])  # unique 2-level SIDs
    model = {"d_model": 48, "n_heads": 4, "enc_layers": 1, "dec_layers": 1, "d_ff": 96}
    row = run_case(products, sequences(inter), sid_table(products["product_id"], codes), model,
                   TrainConfig(batch_size=32, lr=3e-3), (3, 25), width=8, label="toy", progress=False)
    assert row["sids"] == N and row["products_per_sid"] == 1 and row["test_users"] == 96
    assert row["recall@5"] > 0.8  # chance is 5/24
    assert 0 < row["ndcg@10"] <= row["recall@10"] <= 1
