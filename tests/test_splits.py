"""Train / validation / test by the normalised query text: stable under reordering and new rows, and no
validation or test text reaches anything that trains."""

import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from tests.conftest import SAMPLE, need_dataset
from workbench import Workspace, checkpoint, lineage
from workbench.cli import main
from workbench.data import splits
from workbench.data.pseudo import words
from workbench.gen import stages, store
from workbench.gen.config import StagesConfig
from workbench.gen.data import pseudo_pairs, query_pairs, unseen
from workbench.pipeline import missing
from workbench.sid.store import relevance_pairs


def test_a_querys_side_is_its_normalised_text():
    texts = ["cordless drill", "Cordless  Drill", " CORDLESS drill ", "ｃｏｒｄｌｅｓｓ drill", "garden hose"]
    s = splits.side(texts)
    assert len(set(s[:4])) == 1 and set(s) <= set(splits.NAMES)
    many = splits.side([f"query {i}" for i in range(20_000)])
    share = {n: (many == n).mean() for n in splits.NAMES}
    assert abs(share["test"] - splits.TEST) < 0.015 and abs(share["validation"] - splits.VALIDATION) < 0.01
    with pytest.raises(ValueError, match="split names must be among"):
        splits.mask(None, [1], "held-out")


def test_the_split_survives_shuffled_files_and_new_queries(tmp_path):
    """Home Depot's judgments imported as they are, shuffled, and with new queries appended: every query
    text keeps its side (the split hashed positional query ids before)."""
    hd = need_dataset("homedepot")
    products = pd.read_csv(hd / "products.csv").head(300)
    judged = pd.read_csv(hd / "judgments_dev.csv")
    judged = judged[judged["product_uid"].isin(products["product_uid"])]
    products.to_csv(tmp_path / "p.csv", index=False)
    variants = {"as-is": judged, "shuffled": judged.sample(frac=1, random_state=3),
                "grown": pd.concat([judged.assign(query="new " + judged["query"]).head(50), judged])}
    got = {}
    for name, j in variants.items():
        j.to_csv(tmp_path / f"{name}.csv", index=False)
        r = CliRunner().invoke(main, ["-w", str(tmp_path / name), "data", "import", "csv", "--products", str(tmp_path / "p.csv"),
                                      "--judgments", str(tmp_path / f"{name}.csv"), "--map", "product_id=product_uid",
                                      "--map", "title=product_title", "--relevance-threshold", "2.5", "--on-duplicate", "mean"])
        assert r.exit_code == 0, r.output
        ws = Workspace(tmp_path / name)
        q = ws.table("queries")
        got[name] = dict(zip(q["query"], splits.sides(ws, q["query_id"])))
    ids = {n: Workspace(tmp_path / n).table("queries").set_index("query")["query_id"] for n in variants}
    assert not ids["as-is"].equals(ids["shuffled"].reindex(ids["as-is"].index))  # the ids did move
    for name in ("shuffled", "grown"):
        assert all(got[name][t] == s for t, s in got["as-is"].items()), name


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    path = tmp_path_factory.mktemp("splits") / "ws"
    shutil.copytree(SAMPLE, path)
    return Workspace(path)


def test_nothing_that_trains_reads_a_validation_or_test_query(ws, monkeypatch):
    """The SIDs' query pairs, stage 2's and 3's examples, the tokenizer's vocabulary, the pseudo-queries and
    the teacher's texts hold training queries only."""
    q = ws.table("queries")
    side = pd.Series(splits.sides(ws, q["query_id"]), index=q["query"].astype(str))
    held = set(side[side != "train"].index)
    assert len(held) > 100 and set(unseen(ws)) == held

    pairs = relevance_pairs(ws, pd.Index(ws.table("products")["product_id"]), pd.Index(q["query_id"]))
    assert (splits.sides(ws, q["query_id"].to_numpy()[pairs["query"].unique()]) == "train").all()

    sids = pd.DataFrame({"product_id": ws.table("products")["product_id"], "sid_1": 0, "sid_2": 0, "sid_3": 0})
    assert not set(query_pairs(ws, sids).text) & held
    seen = {}
    monkeypatch.setattr(stages.TextTokenizer, "train", staticmethod(lambda texts, vocab_size: seen.setdefault("vocab", texts)))
    stages.make_tokenizer(ws, "scratch")
    assert not set(seen["vocab"]) & held and len(set(seen["vocab"]) & set(side[side == "train"].index)) > 100

    pseudo = ws.table("queries")[["query"]].assign(product_id=ws.table("products")["product_id"].iloc[0], kind="span")
    ws.write_tables({"pseudo_queries": pseudo[["product_id", "query", "kind"]]})  # a table drawn under another split
    banned = {" ".join(words(t)) for t in held}
    got = pseudo_pairs(ws, sids, per_product=10_000)
    assert got.text and not {" ".join(words(t)) for t in got.text} & banned

    taught = []
    monkeypatch.setattr(stages, "teacher", lambda *a, **k: None)
    monkeypatch.setattr(stages, "distill_pairs", lambda ws_, sids_, texts, *a, **k: taught.extend(texts) or query_pairs(ws_, sids_))
    stages.query_examples(ws, sids, StagesConfig(distill="bm25"), lambda: [pseudo_pairs(ws, sids, 10_000)], "cpu")
    assert taught and not set(taught) & held


def test_an_artifact_of_another_split_is_refused_with_the_rebuild_command(trained, tmp_path):
    shutil.copytree(trained[0].path, tmp_path / "ws")
    w = Workspace(tmp_path / "ws")
    assert store.load(w, "generator")[2]  # current: loads
    path = store.checkpoint_path(w, "generator")
    model, _, meta = store.load(w, "generator")
    made_from = {k: v for k, v in lineage.decode(meta["lineage"]).items() if k != "split"}  # trained before the split existed
    checkpoint.save(path, model, model.cfg, kind="generator", sid_fingerprint=meta["sid_fingerprint"], lineage=made_from)
    with pytest.raises(lineage.StaleError, match="query-id split of before.*workbench train --fresh"):
        store.load(w, "generator")
    r = CliRunner().invoke(main, ["-w", str(w.path), "data", "validate"])
    assert r.exit_code == 1 and "stale" in r.output and "split" in r.output
    assert "gen" in missing(w)
