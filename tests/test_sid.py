import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from workbench import Workspace, checkpoint
from workbench.cli import main
from workbench.embed import get_embedder
from workbench.lineage import StaleError
from workbench.sid import metrics
from workbench.sid.config import CQSIDConfig, RQVAEConfig
from workbench.sid.cqsid import SIDData, assign, category_loss, dedup, evaluate, flat_stats, query_loss, train, variant
from workbench.sid.index import SIDIndex
from workbench.sid.rqvae import RQVAE, kmeans, rotate_to
from workbench.sid.store import load_model, load_sids, workspace_data
from workbench.workspace import ReplaceError

SMALL = RQVAEConfig(input_dim=32, hidden=(64,), latent_dim=16, codebook_sizes=(16, 8, 4))


def blobs(n=1200, k=24, d=32, seed=0):
    """Gaussian clusters: structure an RQ-VAE should spread over its codes."""
    r = np.random.default_rng(seed)
    centres = r.normal(size=(k, d)) * 3
    return (centres[r.integers(0, k, n)] + r.normal(size=(n, d))).astype(np.float32)


def data_of(x, **kw):
    return SIDData(x=x, product_ids=np.array([f"p{i}" for i in range(len(x))]), **kw)


@pytest.fixture(scope="module")
def hashed():
    """The sample marketplace with 64-d hashing embeddings (fast), built once."""
    import shutil
    import tempfile

    from workbench.pipeline import SAMPLE_DATA

    d = tempfile.mkdtemp()
    shutil.copytree(SAMPLE_DATA, f"{d}/ws")
    ws = Workspace(f"{d}/ws")
    yield ws, workspace_data(ws, get_embedder("hashing-64"), progress=False)
    shutil.rmtree(d)


HASHED = CQSIDConfig(model=replace(SMALL, input_dim=64, hidden=(128,), codebook_sizes=(32, 8, 4)), epochs=12)


# RQ-VAE ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,msg", [({"codebook_sizes": ()}, "levels"), ({"codebook_sizes": (1, 4)}, "codebook sizes"),
                                     ({"codebook_sizes": (70000,)}, "codebook sizes"), ({"beta": -1}, "beta"),
                                     ({"latent_dim": 0}, "dimensions")])
def test_config_rejects_out_of_range(bad, msg):
    with pytest.raises(ValueError, match=msg):
        replace(SMALL, **bad)


def test_training_uses_the_codebooks_instead_of_collapsing():
    cfg = CQSIDConfig(model=SMALL, epochs=8, category_weight=0, query_weight=0)
    model = train(data_of(blobs()), cfg, progress=False)
    codes = assign(model, blobs())
    for u in metrics.usage(codes, SMALL.codebook_sizes):
        assert u["used_share"] > 0.7 and u["perplexity"] > 0.4 * SMALL.codebook_sizes[u["level"] - 1]  # not all 0/1
    assert metrics.cluster_sizes(codes)["sids"] > 150


def test_kmeans_init_spreads_data_and_dead_codes_restart():
    torch.manual_seed(0)
    model = RQVAE(SMALL)
    x = torch.as_tensor(blobs())
    model.set_standardisation(x)
    model.init_codebooks(x)
    assert torch.bincount(model.codes(x)[:, 0], minlength=16).min() > 0  # every level-1 code gets data
    usage = [torch.ones(k) for k in SMALL.codebook_sizes]
    usage[1][[2, 5]] = 0
    before = [c.detach().clone() for c in model.codebooks]
    res = model.quantize(model.encode(x))[1].detach()
    assert model.restart_dead(usage, res) == 2
    changed = (model.codebooks[1] != before[1]).any(1)
    assert changed.tolist() == [i in (2, 5) for i in range(8)]
    assert torch.equal(model.codebooks[0], before[0]) and torch.equal(model.codebooks[2], before[2])


def test_kmeans_needs_enough_points():
    with pytest.raises(ValueError, match="at least 8 points"):
        kmeans(torch.randn(5, 3), 8)


def test_commitment_weight_is_applied_and_gradients_pass_the_quantiser():
    x = torch.as_tensor(blobs(200))
    for rotation in (False, True):
        torch.manual_seed(0)
        m = RQVAE(replace(SMALL, beta=0.25, rotation_trick=rotation))
        m.set_standardisation(x)
        m.init_codebooks(x)
        out = m(x)
        assert torch.allclose(out["loss"], out["recon"] + out["codebook"] + 0.25 * out["commit"])
        out["recon"].backward()  # reconstruction alone must reach the encoder through the quantiser
        assert m.encoder[0].weight.grad.abs().sum() > 0
    torch.manual_seed(0)
    m0 = RQVAE(replace(SMALL, beta=0.0))
    m0.load_state_dict(m.state_dict())
    out0 = m0(x)
    assert torch.allclose(out0["loss"], out0["recon"] + out0["codebook"]) and out0["commit"] > 0


def test_rotation_trick_keeps_the_value_and_rotates_the_gradient():
    e = torch.randn(5, 8, requires_grad=True)
    q = torch.randn(5, 8)
    out = rotate_to(e, q)
    assert torch.allclose(out, q, atol=1e-5)
    out.sum().backward()
    assert e.grad.abs().sum() > 0


def test_same_seed_same_sids_other_seed_other_sids():
    x = blobs(600)
    cfg = CQSIDConfig(model=SMALL, epochs=3, category_weight=0, query_weight=0)
    a, b = (assign(train(data_of(x), cfg, progress=False), x) for _ in range(2))
    c = assign(train(data_of(x), replace(cfg, seed=1), progress=False), x)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sids_survive_save_and_load(tmp_path):
    x = blobs(600)
    cfg = CQSIDConfig(model=SMALL, epochs=2, category_weight=0, query_weight=0)
    model = train(data_of(x), cfg, progress=False)
    checkpoint.save(tmp_path / "m.safetensors", model, cfg, kind="cq-sid", embedder="e")
    state, cfg2, meta = checkpoint.load(tmp_path / "m.safetensors", CQSIDConfig, kind="cq-sid")
    assert cfg2 == cfg and meta == {"embedder": "e"}
    m2 = RQVAE(cfg2.model)
    checkpoint.load_into(m2, state, "m")
    assert np.array_equal(assign(m2, x), assign(model, x))


def test_bad_checkpoints_are_clear_errors(tmp_path):
    model = RQVAE(SMALL)
    cfg = CQSIDConfig(model=SMALL)
    p = tmp_path / "m.safetensors"
    checkpoint.save(p, model, cfg, kind="cq-sid")
    with pytest.raises(checkpoint.CheckpointError, match="a 'cq-sid' checkpoint, expected 'generator'"):
        checkpoint.load(p, CQSIDConfig, kind="generator")
    state, _, _ = checkpoint.load(p, CQSIDConfig, kind="cq-sid")
    other = RQVAE(replace(SMALL, codebook_sizes=(16, 8, 8)))  # another config's tensors
    with pytest.raises(checkpoint.CheckpointError, match=r"codebooks.2: \(4, 16\) in the file, \(8, 16\) in the model"):
        checkpoint.load_into(other, state, p)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(p.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable safetensors checkpoint"):
        checkpoint.load(bad, CQSIDConfig, kind="cq-sid")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(tmp_path / "none", CQSIDConfig, kind="cq-sid")


@pytest.mark.parametrize("mutate,msg", [
    (lambda x: x.__setitem__((3, 0), np.nan), r"1 rows hold NaN or infinite values \(rows \[3\]\)"),
    (lambda x: x.__setitem__(7, 0.0), r"1 rows are all zeros.*rows \[7\]"),
])
def test_bad_vectors(mutate, msg):
    x = blobs(300)
    mutate(x)
    with pytest.raises(ValueError, match=msg):
        train(data_of(x), CQSIDConfig(model=SMALL, epochs=1), progress=False)


def test_too_few_products_and_wrong_width():
    with pytest.raises(ValueError, match="10 products but K=16 codes"):
        train(data_of(blobs(10)), CQSIDConfig(model=SMALL, epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"expected shape \(N, 32\), got \(300, 8\)"):
        train(data_of(blobs(300, d=8)), CQSIDConfig(model=SMALL, epochs=1), progress=False)
    with pytest.raises(ValueError, match="category_levels"):
        CQSIDConfig(model=SMALL, category_levels=(4,))
    with pytest.raises(ValueError, match="mode"):
        CQSIDConfig(mode="both")


# constraints --------------------------------------------------------------------------------------------
def test_category_loss_prefers_pure_prefixes():
    codebooks = [torch.eye(4) * 5, torch.eye(4) * 5]
    cat = torch.tensor([0, 0, 1, 1])
    pure = torch.stack([codebooks[0][[0, 0, 1, 1]], torch.zeros(4, 4)], 1)  # (B, L, d): mates share code 0 / 1
    mixed = torch.stack([codebooks[0][[0, 1, 0, 1]], torch.zeros(4, 4)], 1)
    lp = category_loss(pure, codebooks, cat, (1,), tau=0.1)
    lm = category_loss(mixed, codebooks, cat, (1,), tau=0.1)
    assert lp < 0.01 and lm > 2
    assert category_loss(pure, codebooks, torch.tensor([0, 1, 2, -1]), (1,), 0.1) == 0  # no category-mates: no signal


def test_query_loss_is_low_when_queries_sit_with_their_products():
    z = torch.randn(8, 16)
    pos = torch.eye(8, dtype=torch.bool)
    assert query_loss(z, z, pos, 0.1) < 0.05 < query_loss(z, z.roll(1, 0), pos, 0.1)
    many = pos | pos.roll(1, 1)  # several positives per query count together
    assert query_loss(z, z, many, 0.1) < query_loss(z, z, pos, 0.1) + 1e-6


def test_constraints_raise_purity_and_coherence_on_the_sample_marketplace(hashed):
    _, data = hashed
    got = {(v, seed): flat_stats(evaluate(train(data, cfg := replace(variant(HASHED, v), seed=seed), progress=False), data, cfg))
           for v, seed in [("plain", 0), ("+category", 0), ("+query", 0), ("plain", 1), ("+query", 1), ("plain", 2), ("+query", 2)]}
    assert got["+category", 0]["purity_l1_dfull"] > got["plain", 0]["purity_l1_dfull"] + 0.1
    gain = [got["+query", s]["coherence_l1"] - got["plain", s]["coherence_l1"] for s in (0, 1, 2)]
    assert min(gain) > 0.02 and np.mean(gain) > 0.03, gain  # the training queries' pairs (70% of queries) pull together


# IDs, metrics, index ------------------------------------------------------------------------------------
def test_dedup_makes_ids_unique_and_continues_numbering():
    codes = np.array([[1, 2], [1, 2], [3, 4], [1, 2]])
    assert dedup(codes).tolist() == [0, 1, 0, 2]
    assert dedup(codes, start=np.array([5, 5, 0, 5])).tolist() == [5, 6, 0, 7]
    assert metrics.cluster_sizes(np.column_stack([codes, dedup(codes)]))["collision_rate"] == 0


def test_metrics_on_a_hand_made_example():
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0]])
    cat = pd.Series(["A > x", "A > x", "A > y", "B > z"])
    pur = {(r["level"], r["depth"]): r["purity"] for r in metrics.category_purity(codes, cat, (1, None))}
    assert pur[(1, 1)] == 1.0 and pur[(1, "full")] == 0.75 and pur[(2, "full")] == 1.0
    c = metrics.cluster_sizes(codes)
    assert (c["sids"], c["size_max"], c["collision_rate"]) == (3, 2, 0.5)
    pairs = pd.DataFrame({"query": [0, 0, 0, 1], "product": [0, 1, 2, 3]})  # query 1 has one product: skipped
    coh = metrics.query_coherence(codes, pairs)
    assert [r["coherence"] for r in coh] == [1.0, pytest.approx(2 / 3)] and coh[0]["queries"] == 1
    # held-out pairs' products 1, 2, 3, 3 against training answers {0}: product 1 shares product 0's SID
    assert metrics.answer_reach(codes, np.array([0]), np.array([1, 2, 3, 3])) == {"pairs": 4, "product": 0.0, "sid": 0.25}
    assert metrics.answer_reach(codes, np.array([0, 3]), np.array([0, 3, 2])) == {"pairs": 3, "product": pytest.approx(2 / 3),
                                                                                  "sid": pytest.approx(2 / 3)}
    assert metrics.answer_reach(codes, np.array([0]), np.array([], int))["pairs"] == 0
    assert metrics.usage(codes, (2, 4))[1] == {"level": 2, "used": 2, "used_share": 0.5, "perplexity": pytest.approx(np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25))))}


def test_sid_index(tmp_path):
    codes = np.array([[2, 1, 0], [0, 3, 1], [2, 1, 0], [0, 3, 2]])
    idx = SIDIndex.from_codes(codes, (4, 4, 4))
    assert idx.sids.tolist() == [[0, 3, 1], [0, 3, 2], [2, 1, 0]] and idx.counts.tolist() == [1, 1, 2]
    assert idx.contains(np.array([[2, 1, 0], [2, 1, 1], [0, 3, 2]])).tolist() == [True, False, True]
    assert idx.children(()).tolist() == [0, 2] and idx.children((0, 3)).tolist() == [1, 2] and idx.children((1,)).size == 0
    idx.save(tmp_path / "i.parquet")
    back = SIDIndex.load(tmp_path / "i.parquet")
    assert np.array_equal(back.sids, idx.sids) and back.vocab == (4, 4, 4)
    assert SIDIndex.from_codes(np.column_stack([codes, dedup(codes)]), (4, 4, 4)).vocab == (4, 4, 4, 2)
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a SID index"):
        SIDIndex.load(tmp_path / "bad.parquet")


# the workspace verbs ------------------------------------------------------------------------------------
def invoke(ws, *args):
    r = CliRunner().invoke(main, ["-w", str(ws.path), *args])
    return r


def test_sid_train_stats_and_assign_in_a_workspace(sample_ws):
    ws = sample_ws
    full = {t: ws.table(t) for t in ws.tables()}
    keep = set(full["products"]["product_id"].iloc[:2500])  # hold back 500 products (and their log rows) as the "new" ones
    ws.write_tables({t: d[d["product_id"].isin(keep)] if "product_id" in d else d for t, d in full.items()})
    r = invoke(ws, "sid", "train", "--embedder", "hashing-64", "--codebook-sizes", "32,8,4", "--latent-dim", "16",
               "--epochs", "3", "--mode", "unique")
    assert r.exit_code == 0, r.output
    assert "collision rate" in r.output and "category purity" in r.output and "query coherence" in r.output
    sids = load_sids(ws)
    assert len(sids) == 2500 and not sids.duplicated(["sid_1", "sid_2", "sid_3", "dedup"]).any()
    model, cfg, meta = load_model(ws)
    assert cfg.mode == "unique" and meta["embedder"] == "hashing-64-v1"
    lb = ws.logbook()
    assert lb.query("SELECT count(DISTINCT step) n FROM metrics WHERE stage = 'sid'")["n"][0] == 3
    assert {"perplexity_l1", "used_l2", "category", "query", "recon"} <= set(lb.query("SELECT DISTINCT name FROM metrics")["name"])
    assert "coherence_l1" in set(lb.query("SELECT metric FROM evals")["metric"])

    with pytest.raises(ReplaceError, match="artifacts built from its current products"):
        ws.write_tables(full)  # the catalog grows: the SIDs were built from the old one
    ws.write_tables(full, replace=True)
    r = invoke(ws, "data", "validate")
    assert r.exit_code == 1 and "stale" in r.output and "sid assign" in r.output, r.output
    with pytest.raises(StaleError, match="products"):
        load_sids(ws)
    r = invoke(ws, "sid", "assign", "--embedder", "hashing-64")
    assert r.exit_code == 0, r.output
    assert "500 new products" in r.output
    after = load_sids(ws)
    assert len(after) == 3000 and not after.duplicated(["sid_1", "sid_2", "sid_3", "dedup"]).any()
    assert after.iloc[:2500].equals(sids)  # old products keep their IDs
    x = workspace_data(ws, get_embedder("hashing-64"), progress=False).x
    assert np.array_equal(after[["sid_1", "sid_2", "sid_3"]].to_numpy(), assign(model, x))  # as if assigned at training
    idx = SIDIndex.load(ws.path / "sid" / "index.parquet")
    assert idx.counts.sum() == 3000 and idx.contains(after[["sid_1", "sid_2", "sid_3", "dedup"]].to_numpy()).all()
    r = invoke(ws, "sid", "stats")
    assert r.exit_code == 0 and "3,000 products" in r.output and "with the dedup token" in r.output
    r = invoke(ws, "data", "validate")
    assert r.exit_code == 0 and "ok       sid/sids.parquet" in r.output, r.output


def test_sid_verbs_bad_input(sample_ws, tmp_path):
    ws = sample_ws
    r = invoke(ws, "sid", "assign", "--embedder", "hashing-64")
    assert r.exit_code != 0 and "has no SID model" in r.output
    r = invoke(ws, "sid", "train", "--embedder", "hashing-64", "--codebook-sizes", "4096,8", "--epochs", "1")
    assert r.exit_code != 0 and "3000 products but K=4096" in r.output
    assert not (ws.path / "sid").exists() or not any((ws.path / "sid").iterdir())  # nothing written
    r = invoke(ws, "sid", "train", "--codebook-sizes", "a,b")
    assert r.exit_code != 0 and "comma-separated integers" in r.output
    r = invoke(ws, "sid", "train", "--embedder", "hashing-64", "--codebook-sizes", "16,4", "--epochs", "1")
    assert r.exit_code == 0, r.output
    r = invoke(ws, "sid", "assign", "--embedder", "hashing-32")
    assert r.exit_code != 0 and "trained on 'hashing-64-v1' embeddings" in r.output
    (ws.path / "sid" / "rqvae.safetensors").write_bytes(b"garbage")
    r = invoke(ws, "sid", "assign", "--embedder", "hashing-64")
    assert r.exit_code != 0 and "not a readable safetensors checkpoint" in r.output and "Traceback" not in r.output
    r = invoke(Workspace(tmp_path / "none"), "sid", "stats")
    assert r.exit_code != 0 and "no workspace" in r.output


def test_nested_config_json_roundtrip():
    cfg = CQSIDConfig(model=SMALL, category_levels=(1,), category_depth=2)
    from workbench.config import from_json, to_json

    assert from_json(CQSIDConfig, to_json(cfg)) == cfg
    with pytest.raises(ValueError, match="no field"):
        from_json(CQSIDConfig, json.dumps({"nonsense": 1}))


def test_category_loss_splits_over_anchor_rows():
    """What data-parallel CQ-SID relies on: the terms of disjoint anchor sets add up to the loss, in
    value and gradient, for any split (uneven ones included)."""
    from workbench.sid.cqsid import category_loss

    g = torch.Generator().manual_seed(0)
    res = torch.randn(37, 3, 8, generator=g, requires_grad=True)
    books = [torch.randn(6, 8, generator=g, requires_grad=True) for _ in range(2)]
    cat = torch.randint(-1, 4, (37,), generator=g)  # -1: products without a category
    full = category_loss(res, books, cat, (1, 2), 0.1)
    want = torch.autograd.grad(full, [res, *books])
    for n in (2, 3):
        split = sum(category_loss(res, books, cat, (1, 2), 0.1, anchors=slice(r, None, n)) for r in range(n))
        assert torch.allclose(split, full)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(torch.autograd.grad(split, [res, *books]), want))


def test_changed_titles_under_the_same_ids_are_assigned_again(trained_copy):
    """`data synth --seed 7 --replace` then `sid assign` used to keep every old row whose id survived, so the
    generator answered 'cordless drill' with dolls and still validated ok. Now a product whose text maps to
    another cluster is assigned again (the generator's clusters are the SID model's, so a query still lands on
    the products whose text belongs there), and the generator, trained on the old titles, is outdated: its
    lineage names the products table."""
    from workbench.gen import store

    ws = trained_copy
    store.load(ws)  # current before the change
    before = load_sids(ws)
    lv = ["sid_1", "sid_2", "sid_3"]
    products = ws.table("products")
    sid_of = before.set_index("product_id").loc[products["product_id"], lv].to_numpy()
    # the first 300 products take the titles of products in another first-level cluster
    donor = [int(np.flatnonzero(sid_of[:, 0] != sid_of[i, 0])[i % 50]) for i in range(300)]
    moved = products.copy()
    moved.loc[:299, "title"] = products["title"].to_numpy()[donor]
    ws.write_tables({"products": moved}, replace=True)
    r = invoke(ws, "sid", "assign", "--embedder", "hashing-64")
    assert r.exit_code == 0, r.output
    after = load_sids(ws).set_index("product_id").loc[products["product_id"], lv].to_numpy()
    changed = (after != sid_of).any(1)
    assert changed[:300].mean() > 0.9 and not changed[300:].any()  # the moved ones, and only they
    got = int(r.output.split(" new products, ")[1].split()[0].replace(",", ""))
    assert got == changed.sum() and "0 new products" in r.output
    model, _, _ = load_model(ws)
    x = workspace_data(ws, get_embedder("hashing-64"), progress=False).x
    assert np.array_equal(after, assign(model, x))  # every SID (in catalog order) is what its text gets today
    assert "table products changed" in store.outdated(ws, "generator")
