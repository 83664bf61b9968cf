"""Cluster labels (workbench.sid.labels) and the stored Codebooks map (workbench.sid.map): computed from
the products, stored with the SIDs, refused or recomputed when the SIDs change, shown on every surface."""


import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from workbench import app_data, engine
from workbench.cli import main
from workbench.lineage import StaleError
from workbench.sid import labels
from workbench.sid.store import load_labels, load_map, load_model, load_sids, write_map, write_table


def toy():
    """Two level-1 clusters (drills, mowers); the drills split into cordless and corded at level 2."""
    titles = ["cordless drill 20v", "cordless drill brushless", "cordless drill kit", "corded drill hammer",
              "corded drill 7a", "lawn mower electric", "lawn mower gas", "lawn mower push"]
    cats = ["Tools > Power Tools > Drills"] * 4 + ["Tools > Power Tools > Saws"] + ["Garden > Outdoor Power > Mowers"] * 3
    products = pd.DataFrame({"product_id": [f"p{i}" for i in range(8)], "title": titles, "category": cats})
    sids = pd.DataFrame({"product_id": products["product_id"], "sid_1": [0, 0, 0, 0, 0, 1, 1, 1],
                         "sid_2": [0, 0, 0, 1, 1, 0, 0, 0]})
    return products, sids


def test_labels_name_each_cluster_by_its_category_and_the_words_that_set_it_apart():
    products, sids = toy()
    lab = labels.compute(products, sids, levels=2).set_index("prefix")
    assert lab.loc["0", "category"] == "Tools > Power Tools > Drills" and lab.loc["0", "category_share"] == 0.8  # the deepest >= half
    assert lab.loc["1", "category"] == "Garden > Outdoor Power > Mowers" and lab.loc["1", "label"].startswith("Mowers 100% · ")
    assert set(lab.loc["1", "terms"].split(", ")) == {"lawn", "mower"}  # in all 3; "electric" is in only one
    assert lab.loc["0-0", "terms"] == "cordless" and lab.loc["0-1", "terms"] == "corded"  # siblings told apart, not "drill"
    assert lab.loc["0-1", "category"] is not None and lab.loc["0-1", "category_share"] == 0.5  # 1 drill, 1 saw
    for _, g in lab.groupby("level"):
        assert g["products"].sum() == 8  # every product in one cluster per level
    assert lab.loc["0-0", "parent"] == "0" and lab.loc["1", "parent"] == ""
    q = labels.label_quality(lab.reset_index())
    assert q["label_category_share@1"] == pytest.approx((5 * 0.8 + 3 * 1) / 8) and q["label_category_share@2"] == pytest.approx((3 * 1 + 2 * 0.5 + 3 * 1) / 8)


def test_labels_without_categories_and_bad_inputs():
    products, sids = toy()
    lab = labels.compute(products.drop(columns="category"), sids, levels=2)
    assert lab["category"].isna().all() and labels.label_quality(lab) == {}
    assert lab.set_index("prefix").loc["1", "label"] in ("lawn, mower", "mower, lawn")
    with pytest.raises(ValueError, match="missing \\['sid_2'\\]"):
        labels.compute(products, sids.drop(columns="sid_2"), levels=2)
    with pytest.raises(ValueError, match="no product has a SID"):
        labels.compute(products, sids.assign(product_id="other"), levels=2)
    assert labels.label(None, np.nan, "") == "(no label)"


def test_clusters_whose_products_have_no_category_are_labelled_by_their_words():
    """Amazon Scientific has products without a category; a cluster of only those has no category (it
    used to crash the SID training's label step with "'float' object has no attribute 'split'")."""
    products, sids = toy()
    products.loc[5:, "category"] = np.nan  # the mowers' cluster: no category at all
    lab = labels.compute(products, sids, levels=2).set_index("prefix")
    assert pd.isna(lab.loc["1", "category"]) and lab.loc["1", "label"] in ("lawn, mower", "mower, lawn")
    assert lab.loc["0", "label"].startswith("Drills 80% · ")
    assert labels.label(np.nan, np.nan, "drill") == "drill"


def test_labels_are_stored_with_the_sids_and_follow_them(trained_copy):
    ws = trained_copy
    stored = pd.read_parquet(ws.path / "sid" / "labels.parquet").set_index("prefix")
    sids = load_sids(ws)
    levels = [c for c in sids.columns if c.startswith("sid_")]
    full = {"-".join(map(str, r)) for r in sids[levels].to_numpy().tolist()}
    assert full == set(stored[stored["level"] == len(levels)].index)  # one label per SID
    pd.testing.assert_frame_equal(load_labels(ws), stored)
    run = ws.logbook().query("SELECT metric, value FROM evals WHERE metric LIKE 'label_category_share@%'")
    assert len(run) == len(levels) and run["value"].between(0, 1).all()  # label quality went to the logbook
    r = CliRunner().invoke(main, ["-w", str(ws.path), "sid", "labels", "--level", "1", "--top", "3"])
    assert r.exit_code == 0 and "level 1:" in r.output and r.output.count("\n") >= 4, r.output
    r = CliRunner().invoke(main, ["-w", str(ws.path), "sid", "labels", "--level", "9"])
    assert r.exit_code == 2 and "levels, not 9" in r.output


def test_stale_labels_are_recomputed_and_a_stale_map_refused(trained_copy):
    ws = trained_copy
    from workbench.embed import get_embedder

    m = write_map(ws, get_embedder("hashing-64"), points=50, progress=False)
    assert len(m) == 50 and m["product_id"].is_unique and np.isfinite(m[["x", "y"]].to_numpy()).all()
    pd.testing.assert_frame_equal(load_map(ws), m)
    pts = app_data.codebook_points(ws, 20)
    assert len(pts) == 20 and pts["label"].notna().all() and pts["label_1"].notna().all()
    # other SIDs (codes swapped) written by the store: the map is of the old ones; labels kept from before are recomputed
    old_labels = (ws.path / "sid" / "labels.parquet").read_bytes()
    _, cfg, _ = load_model(ws)
    sids = load_sids(ws)
    sids["sid_1"] = (sids["sid_1"] + 1) % cfg.model.codebook_sizes[0]
    write_table(ws, cfg, sids["product_id"].to_numpy(), sids[[c for c in sids.columns if c.startswith("sid_")]].to_numpy())
    assert load_labels(ws).loc[str(sids["sid_1"].iloc[0]), "products"] == (sids["sid_1"] == sids["sid_1"].iloc[0]).sum()
    with pytest.raises(StaleError, match="map.parquet is stale"):
        load_map(ws)
    with pytest.raises(engine.AppError, match="its map is of older SIDs.*workbench sid map"):
        app_data.codebook_points(ws, 20)
    (ws.path / "sid" / "labels.parquet").write_bytes(old_labels)  # labels of the previous SIDs
    fresh = load_labels(ws)  # computed from the current table, not read from the stale file
    assert set(fresh[fresh["level"] == 1].index) == {str(c) for c in sids["sid_1"].unique()}
    assert fresh.loc[str(sids["sid_1"].iloc[0]), "products"] == (sids["sid_1"] == sids["sid_1"].iloc[0]).sum()
    pd.testing.assert_frame_equal(fresh, labels.compute(ws.table("products"), sids, cfg.model.levels).set_index("prefix"))


def test_sid_map_command_and_a_workspace_without_a_map(trained_copy):
    ws = trained_copy
    (ws.path / "sid" / "map.parquet").unlink(missing_ok=True)
    with pytest.raises(engine.AppError, match="no map yet"):
        app_data.codebook_points(ws, 10)
    r = CliRunner().invoke(main, ["-w", str(ws.path), "sid", "map", "--points", "40"])
    assert r.exit_code == 0 and "drew a map of 40 products" in r.output, r.output
    assert len(app_data.codebook_points(ws, 1000)) == 40
    r = CliRunner().invoke(main, ["-w", str(ws.path), "sid", "map", "--points", "2"])
    assert r.exit_code == 2 and "--points" in r.output


def test_gen_search_and_served_paths_show_the_labels(trained_copy):
    ws = trained_copy
    lab = load_labels(ws)["label"]
    r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "search", "cordless drill", "--width", "4", "--top", "2"])
    assert r.exit_code == 0, r.output
    sid = r.output.split("\n")[3].split()[0]
    assert f"[{lab[sid]}]" in r.output
    res = engine.Engine(ws).search("cordless drill", width=4, log=False)
    paths, tree = res.paths(), res.tree()
    assert (paths["label"] == paths["sid"].map(lab)).all()
    assert (tree["description"] == tree["id"].map(lab)).all()
    assert all(t.startswith(i.rsplit("-", 1)[-1]) for t, i in zip(tree["label"], tree["id"]))
