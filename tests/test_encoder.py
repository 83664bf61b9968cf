"""The fine-tuned bi-encoder (`workbench dense train`): trained on training queries only, written as
safetensors, loaded as its own embedder and evaluated as the dense-tuned channel."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.data import splits
from workbench.embed import MiniLM, Tuned, get_embedder
from workbench.encoder import EncoderConfig, encoder_dir, pairs
from workbench.lineage import StaleError
from workbench.sid.store import workspace_embedder


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


def test_the_tuned_embedder_is_named_by_its_workspace_or_directory(tmp_path):
    with pytest.raises(ValueError, match="'tuned'"):  # `tuned` alone needs the workspace it belongs to
        get_embedder("tuned")
    with pytest.raises(FileNotFoundError, match="workbench dense train"):
        get_embedder("tuned", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="workbench dense train"):
        get_embedder(f"tuned:{tmp_path}")


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
    r = CliRunner().invoke(main, ["-w", str(ws.path), "sid", "train", "--embedder", "tuned", "--epochs", "1",
                                  "--codebook-sizes", "8,4"])  # SIDs on the fine-tuned encoder's vectors
    assert r.exit_code == 0, r.output
    assert workspace_embedder(ws) == f"tuned:{encoder_dir(ws)}" and get_embedder(workspace_embedder(ws)).key == tuned.key
    r = CliRunner().invoke(main, ["-w", str(ws.path), "dense", "train", "--max-pairs", "64", "--batch-size", "32", "--seed", "1"])
    assert r.exit_code == 0, r.output
    with pytest.raises(StaleError, match="sid train --embedder tuned"):  # the encoder changed under its SIDs
        workspace_embedder(ws)
    meta = encoder_dir(ws) / "workbench.json"  # a model fine-tuned before the split existed is refused
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "lineage": {}}))
    with pytest.raises(StaleError, match="workbench dense train"):
        Tuned(encoder_dir(ws))
