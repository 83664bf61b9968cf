"""The fine-tuned bi-encoder (`workbench dense train`): trained on training queries only, written as
safetensors, loaded as its own embedder and evaluated as the dense-tuned channel."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.data import splits
from workbench.embed import MiniLM
from workbench.encoder import EncoderConfig, Tuned, encoder_dir, pairs
from workbench.lineage import StaleError


def test_the_pairs_hold_training_queries_and_pseudo_queries_only(sample_ws):
    q = sample_ws.table("queries")
    held = set(q.loc[splits.mask(sample_ws, q["query_id"], "validation", "test"), "query"])
    got = pairs(sample_ws, EncoderConfig(pseudo=1))
    texts = {t for t, _ in got}
    assert not texts & held and len(texts & set(q["query"])) > 100 and len(got) > 3_000  # queries, and a pseudo-query per product
    assert len(pairs(sample_ws, EncoderConfig(pseudo=0, max_pairs=50))) == 50
    for bad, msg in [(dict(batch_size=1), "in-batch negatives"), (dict(lr=0), "lr"), (dict(pseudo=-1), "pseudo >= 0")]:
        with pytest.raises(ValueError, match=msg):
            EncoderConfig(**bad)


@pytest.mark.slow
def test_fine_tuning_writes_a_model_that_encodes_differently_and_is_evaluated(trained_copy):
    ws = trained_copy
    with pytest.raises(FileNotFoundError, match="workbench dense train"):
        Tuned(encoder_dir(ws))
    r = CliRunner().invoke(main, ["-w", str(ws.path), "dense", "train", "--max-pairs", "256", "--batch-size", "32"])
    assert r.exit_code == 0, r.output
    files = {p.name for p in encoder_dir(ws).iterdir()}
    assert "model.safetensors" in files and "workbench.json" in files and not {f for f in files if f.endswith((".bin", ".pkl", ".pt"))}
    tuned, base = Tuned(encoder_dir(ws)), MiniLM()
    texts = ["cordless drill", "garden hose"]
    v = tuned.encode(texts)
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert tuned.key.startswith("tuned-") and tuned.key != base.key and not np.allclose(v, base.encode(texts), atol=1e-4)
    run = ws.logbook().query("SELECT m.name, m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.kind = 'encoder'")
    assert {"loss", "examples_per_s", "seconds", "pairs"} <= set(run["name"])
    r = CliRunner().invoke(main, ["-w", str(ws.path), "eval", "--methods", "dense,dense-tuned", "--k", "10", "--embedder", "hashing-64",
                                  "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["method"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"dense", "dense-tuned"} and 0 <= rows["dense-tuned"]["channel_recall@300"] <= 1
    meta = encoder_dir(ws) / "workbench.json"  # a model fine-tuned before the split existed is refused
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "lineage": {}}))
    with pytest.raises(StaleError, match="workbench dense train"):
        Tuned(encoder_dir(ws))
