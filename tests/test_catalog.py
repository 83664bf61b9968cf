"""A catalog measured end to end with a recipe (what `workbench bench homedepot` runs), on the sample."""

import pytest

from tests.conftest import TINY
from workbench import Workspace
from workbench.bench.catalog import measure, recipe_workspace
from workbench.encoder import EncoderConfig, encoder_dir
from workbench.eval.config import EvalConfig
from workbench.gen.config import StagesConfig
from workbench.recipes import Recipe
from workbench.sid.config import CQSIDConfig, RQVAEConfig


@pytest.mark.slow
def test_a_recipe_measures_a_catalog_in_its_own_workspace(sample_ws, tmp_path):
    tiny = Recipe("tiny", "test", sid=CQSIDConfig(model=RQVAEConfig(hidden=(64,), codebook_sizes=(16, 8, 4)), epochs=3),
                  gen=StagesConfig(stages=(1, 2), epochs=(2, 2), backbone="sentence", model=TINY, pseudo=2, eval_width=8),
                  eval=EvalConfig(ks=(10, 50), width=16, embedder="hashing-64", budgets=(20, 100),
                                  methods=("generative", "oracle-sids", "bm25", "dense-tuned")),
                  encoder=EncoderConfig(max_pairs=96, batch_size=32, pseudo=0))
    ws = recipe_workspace(sample_ws, "tiny", root=tmp_path)
    assert ws.path == tmp_path / "ws-tiny" and ws.tables() == sample_ws.tables()
    assert (ws.cache_dir / "embeddings").resolve() == (sample_ws.cache_dir / "embeddings").resolve()  # shared cache
    lines = []
    df = measure(ws, tiny, "hashing-64", echo=lines.append).set_index("method")
    assert lines[0].startswith("SIDs (16, 8, 4)") and "generator (sentence, stages (1, 2))" in lines[1]
    assert lines[2].startswith("fine-tuned encoder: 96 pairs") and encoder_dir(ws).exists()  # asked for by the eval
    assert 0 <= df.loc["dense-tuned", "recall@10"] <= 1 and not encoder_dir(sample_ws).exists()
    gen, oracle = df.loc["generative"], df.loc["oracle-sids"]
    assert gen["width"] == 16 and 0 < gen["candidates@100"] <= 100 and 0 <= gen["recall@10"] <= 1
    assert oracle["channel_recall@100"] >= gen["channel_recall@100"] - 1e-9  # the SIDs' ceiling bounds the generator
    assert ws.has("pseudo_queries") and not sample_ws.has("pseudo_queries")
    again = []
    measure(Workspace(ws.path), tiny, "hashing-64", echo=again.append)  # a rerun keeps the SIDs and the stages
    assert len(again) == 1 and again[0].startswith("generator (sentence, stages (1, 2)): 1-items kept, 2-queries kept (")  # ... and the encoder
