"""Distillation: a teacher's ranked products become soft SID targets."""

import numpy as np
import pandas as pd
import pytest

from workbench.gen import stages as st
from workbench.gen.distill import distill_pairs, soft_targets, teacher

SIDS = pd.DataFrame({"product_id": ["a", "b", "c"], "sid_1": [0, 0, 0], "sid_2": [0, 1, 0], "sid_3": [2, 2, 2]})


def test_soft_targets_by_hand():
    p = soft_targets(["q", "r"], [["a", "b", "ghost", "c"], ["b"]], SIDS)
    # q: ranks 1, 2, (ghost 3, skipped), 4 -> weights 1, 1/2, 1/4 over the norm 1 + 1/2 + 1/3 + 1/4 = 25/12
    assert p.text == ["q", "q", "r"] and p.sids.tolist() == [[0, 0, 2], [0, 1, 2], [0, 1, 2]]
    np.testing.assert_allclose(p.weight, [(1 + 1 / 4) * 12 / 25, (1 / 2) * 12 / 25, 1.0])
    assert p.source == "distill"
    with pytest.raises(ValueError, match="2 texts for 1 teacher lists"):
        soft_targets(["q", "r"], [["a"]], SIDS)


def test_teachers_and_bad_inputs(trained):
    ws, _ = trained
    texts = ["cordless drill", "red dress"]
    bm = teacher(ws, "bm25")(texts, 5)
    hybrid = teacher(ws, "hybrid")(texts, 5)
    assert all(len(x) == 5 for x in bm + hybrid) and bm != hybrid
    sids = pd.read_parquet(ws.path / "sid" / "sids.parquet")
    p = distill_pairs(ws, sids, texts, "dense", k=5)
    for t in texts:  # every text weighs as much as one example
        assert p.weight[np.asarray(p.text) == t].sum() == pytest.approx(1.0)
    for args, msg in [(("magic", 5), "unknown teacher 'magic'"), (("bm25", 0), "k must be >= 1")]:
        with pytest.raises(ValueError, match=msg):
            distill_pairs(ws, sids, texts, *args)
    with pytest.raises(ValueError, match="no texts"):
        distill_pairs(ws, sids, [], "bm25")
    with pytest.raises(ValueError, match="distill must be one of"):
        st.StagesConfig(distill="magic")
