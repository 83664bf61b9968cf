import json

import numpy as np
import pandas as pd
import pytest

from workbench.bench.sid import ablation, assign_scale, code_stats, lcrec_index
from workbench.sid.config import CQSIDConfig, RQVAEConfig
from workbench.sid.cqsid import SIDData

from .conftest import need_dataset


def test_lcrec_index_parsing_and_code_stats(tmp_path):
    p = tmp_path / "x.index.json"
    p.write_text(json.dumps({"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<b_2>"], "2": ["<a_3>", "<b_0>"]}))
    codes = lcrec_index(p, np.array(["0", "1", "2"]))
    assert codes.tolist() == [[1, 2], [1, 2], [3, 0]]
    row = code_stats("x", codes, pd.Series(["A > b", "A > c", "B > d"]))
    assert row["sids"] == 2 and row["collision_rate"] == pytest.approx(2 / 3) and row["purity_l1_d1"] == 1.0
    with pytest.raises(ValueError, match="no SID for 1 products"):
        lcrec_index(p, np.array(["0", "9"]))


def test_ablation_and_assign_scale_rows():
    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    base = CQSIDConfig(model=RQVAEConfig(input_dim=16, hidden=(32,), latent_dim=8, codebook_sizes=(8, 4)), epochs=1)
    rows = ablation(SIDData(x=x, product_ids=np.arange(300)), base, ["plain"], progress=False)
    assert rows[0]["case"] == "plain" and 1 <= rows[0]["sids"] <= 32 and "coherence_l1" not in rows[0]
    r = assign_scale(2000, dim=16, sizes=(8, 4), chunk=500)
    assert r["products"] == 2000 and r["seconds"] > 0 and 1 <= r["sids"] <= 32


def test_published_scientific_indexes_load():
    d = need_dataset("amazon_scientific")
    ids = np.array([str(i) for i in range(4344)])
    for name in ("rqvae_native", "letter_native"):
        codes = lcrec_index(d / f"{name}__Scientific.index.json", ids)
        assert codes.shape == (4344, 4) and codes.min() >= 0 and codes.max() < 256


def test_bench_sid_cli_logs_rows(sample_ws):
    from click.testing import CliRunner

    from workbench.cli import main

    r = CliRunner().invoke(main, ["-w", str(sample_ws.path), "bench", "sid", "--embedder", "hashing-64", "--codebook-sizes",
                                  "16,4", "--epochs", "1", "--variants", "plain,cq-sid"])
    assert r.exit_code == 0, r.output
    got = sample_ws.logbook().query("SELECT case_name, metric, value FROM bench WHERE bench = 'sid'")
    assert set(got["case_name"]) == {"plain", "cq-sid"} and {"coherence_l1", "purity_l1_d2", "train_s"} <= set(got["metric"])
