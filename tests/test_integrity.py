"""Workspace integrity (issue 17): artifacts know what they were built from, sets of files land together,
the deployed model changes only when a run says so, and damaged artifacts are errors, never answers."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import TINY
from workbench import Workspace, checkpoint, lineage, pipeline
from workbench.cli import main
from workbench.gen import store
from workbench.gen.config import GenConfig, StagesConfig, TrainConfig
from workbench.gen.stages import train_stages
from workbench.sid.store import load_sids, sid_dir
from workbench.workspace import clean_temps


def invoke(ws, *args):
    return CliRunner().invoke(main, ["-w", str(ws.path), *args], catch_exceptions=False)


def tables_bytes(ws):
    return {t: ws.table_path(t).read_bytes() for t in ws.tables()}


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# 1. replacing the data of a trained workspace ---------------------------------------------------------
def test_new_data_into_a_trained_workspace_needs_replace_then_stale_artifacts_are_refused(trained_copy):
    ws = trained_copy
    before = tables_bytes(ws)
    synth = ["data", "synth", "--products", "300", "--users", "40", "--sessions", "300", "--seed", "7"]
    r = invoke(ws, *synth)
    assert r.exit_code != 0 and "artifacts built from its current" in r.output and "--replace" in r.output, r.output
    assert tables_bytes(ws) == before  # nothing replaced
    evals = len(ws.logbook().query("SELECT * FROM evals"))

    r = invoke(ws, *synth, "--replace")
    assert r.exit_code == 0, r.output
    assert "stale: sid/sids.parquet" in r.output and "sid assign" in r.output  # what the write invalidated
    for args in (["gen", "search", "drill"], ["eval", "--width", "4"]):
        r = invoke(ws, *args)
        assert r.exit_code != 0 and "is stale: products changed since it was built" in r.output, r.output
    assert len(ws.logbook().query("SELECT * FROM evals")) == evals  # no recall of 0.000 logged as a result
    r = invoke(ws, "data", "validate")
    assert r.exit_code == 1 and "stale    sid/sids.parquet" in r.output
    assert "stale" in pipeline.check(ws, "sid") and "sid" in pipeline.missing(ws)  # the pipeline would rebuild them


def test_tables_left_in_place_must_still_fit_a_new_catalog(sample_ws, tmp_path):
    ws = sample_ws
    before = tables_bytes(ws)
    other = ws.table("products").assign(product_id=lambda d: "X" + d["product_id"])
    csv = tmp_path / "products.csv"
    other.to_csv(csv, index=False)
    r = invoke(ws, "data", "import", "csv", "--products", str(csv))
    assert r.exit_code != 0 and "search_log.parquet: already in the workspace, it no longer fits" in r.output, r.output
    assert tables_bytes(ws) == before
    r = invoke(ws, "data", "import", "csv", "--products", str(csv), "--replace")
    assert r.exit_code != 0 and tables_bytes(ws) == before  # --replace does not drop the log silently either


def test_rewriting_identical_tables_invalidates_nothing(trained_copy):
    ws = trained_copy
    ws.write_tables({"products": ws.table("products")})  # same content: no --replace needed
    assert load_sids(ws) is not None and all(r["status"] in ("ok", "outdated") for r in pipeline.report(ws))


def test_pseudo_queries_go_with_the_catalog_they_were_drawn_from(sample_ws, tmp_path):
    ws = sample_ws
    products = ws.table("products")
    ws.write_tables({"pseudo_queries": pd.DataFrame({"product_id": products["product_id"][:2], "query": ["a b", "c d"],
                                                     "kind": ["span", "span"]})})
    ws.write_tables({"products": products})  # the same catalog: they stay
    assert ws.has("pseudo_queries")
    csv = tmp_path / "p.csv"
    products.assign(title=products["title"] + " (2027)").to_csv(csv, index=False)
    r = invoke(ws, "data", "import", "csv", "--products", str(csv))
    assert r.exit_code == 0 and "dropped pseudo_queries" in r.output and not ws.has("pseudo_queries"), r.output


# 2. set-atomic writes -------------------------------------------------------------------------------
def test_a_multi_table_write_that_fails_halfway_changes_nothing(sample_ws, monkeypatch):
    ws = sample_ws
    before = tables_bytes(ws)
    import workbench.workspace as wsmod

    real, calls = wsmod.pq.write_table, {"n": 0}

    def second_fails(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(*a, **kw)

    monkeypatch.setattr(wsmod.pq, "write_table", second_fails)
    frames = {"products": ws.table("products").assign(title=lambda d: d["title"] + " v2"), "queries": ws.table("queries")}
    with pytest.raises(OSError, match="No space left"):
        ws.write_tables(frames)
    assert tables_bytes(ws) == before and not list(ws.path.rglob("*.tmp")) and not list(ws.path.glob(".commit-*"))


def test_a_commit_cut_by_a_kill_is_rolled_forward_and_dead_temps_removed(sample_ws):
    ws = sample_ws
    pid = dead_pid()
    new = ws.table("products").assign(title="renamed")
    staged = ws.path / "tables" / f".products.parquet.{pid}.abc.tmp"
    new.to_parquet(staged)
    (ws.path / f".commit-{pid}.json").write_text(json.dumps([[os.path.relpath(staged, ws.path), "tables/products.parquet"]]))
    orphan = ws.path / "tables" / f".queries.parquet.{pid}.def.tmp"
    orphan.write_bytes(b"half a table")
    mine = ws.path / "tables" / f".users.parquet.{os.getpid()}.ghi.tmp"
    mine.write_bytes(b"a live writer's")

    ws = Workspace(ws.path)  # opening the workspace finishes the dead writer's commit
    assert (ws.table("products")["title"] == "renamed").all() and not list(ws.path.glob(".commit-*"))
    assert clean_temps(ws.path) == [orphan] and mine.exists() and not orphan.exists()


# 3. the deployed model changes only when a run says so -------------------------------------------------
def test_finished_stages_leave_the_deployed_generator_alone_and_stale_stages_retrain(trained_copy):
    ws = trained_copy
    cfg = StagesConfig(model=TINY, train=TrainConfig(lr=3e-3), epochs=(1, 1, 1), eval_width=4)
    deployed = store.checkpoint_path(ws, "generator").read_bytes()
    deploys = "SELECT config FROM runs WHERE kind = 'gen-deploy' ORDER BY started_at"
    n = len(ws.logbook().query(deploys))
    said = []
    rows = train_stages(ws, replace_(cfg, stages=(1,)), progress=False, echo=said.append)
    assert rows == [{"stage": "1-items", "resumed": "done"}] and "left as it is" in said[-1]
    assert store.checkpoint_path(ws, "generator").read_bytes() == deployed
    assert len(ws.logbook().query(deploys)) == n

    # a partial file of a killed --fresh run is removed with a message, not left behind or resumed
    part = store.gen_dir(ws) / "generator-stage1.partial.safetensors"
    shutil.copy(store.checkpoint_path(ws, "generator-stage1"), part)
    said.clear()
    train_stages(ws, replace_(cfg, stages=(1,)), resume=False, progress=False, echo=said.append)
    assert not part.exists() and any("removed generator-stage1.partial.safetensors (--fresh)" in s for s in said)
    runs = ws.logbook().query(deploys)
    assert len(runs) == n + 1 and json.loads(runs["config"].iloc[-1])["source"] == "generator-stage1"  # the run that changed it
    _, _, meta = store.load(ws, "generator")
    assert lineage.decode(meta["lineage"])["parent"]["name"] == "generator-stage1"

    # stage 2 was trained from the old stage 1: it is trained again, not resumed
    said.clear()
    rows = train_stages(ws, replace_(cfg, stages=(1, 2)), progress=False, echo=said.append)
    assert rows[0] == {"stage": "1-items", "resumed": "done"} and "recall@10" in rows[1]
    assert any("training generator-stage2 again: generator-stage1 was retrained since" in s for s in said)
    report = {r["artifact"]: r for r in pipeline.report(ws)}
    assert report["gen/generator-stage3.safetensors"]["status"] == "outdated"
    assert "generator-stage2 was retrained since" in report["gen/generator-stage3.safetensors"]["detail"]


def replace_(cfg, **kw):
    from dataclasses import replace

    return replace(cfg, **kw)


# 5. damaged artifacts ---------------------------------------------------------------------------------
def test_damaged_generators_are_errors_and_the_demo_rebuilds_them(trained_copy):
    ws = trained_copy
    path = store.checkpoint_path(ws, "generator")
    data = bytearray(path.read_bytes())
    data[-100:-90] = bytes(10)  # corrupt tensor bytes; the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        store.load(ws)
    r = invoke(ws, "gen", "search", "drill")
    assert r.exit_code != 0 and "damaged" in r.output and "SIDs" not in r.output.split("damaged")[0][-20:]
    assert "gen" in pipeline.missing(ws)  # `demo` trains it again instead of accepting the file
    report = {r["artifact"]: r["status"] for r in pipeline.report(ws)}
    assert report["gen/generator.safetensors"] == "broken"

    path.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(checkpoint.CheckpointError, match="not a readable"):
        store.load(ws)
    assert "gen" in pipeline.missing(ws)


def test_nan_weights_are_refused_at_save_and_at_load(trained_copy, tmp_path):
    ws = trained_copy
    gen, _, _ = store.load(ws)
    with torch.no_grad():
        next(gen.parameters()).fill_(float("nan"))
    with pytest.raises(checkpoint.CheckpointError, match="NaN or infinite values"):
        checkpoint.save(tmp_path / "g.safetensors", gen, gen.cfg, kind="generator")
    assert not (tmp_path / "g.safetensors").exists()
    path = store.checkpoint_path(ws, "generator")
    with safe_open(str(path), framework="pt") as f:
        md = {k: v for k, v in f.metadata().items() if k != "digest"}
    save_file({k: v.contiguous() for k, v in gen.state_dict().items()}, str(path), metadata=md)  # an older writer, no digest
    with pytest.raises(checkpoint.CheckpointError, match="NaN or infinite weights"):
        checkpoint.load(path, GenConfig, kind="generator")


def test_a_sid_table_that_lost_rows_or_its_index_is_refused(trained_copy):
    ws = trained_copy
    path = sid_dir(ws) / "sids.parquet"
    sids = pd.read_parquet(path)
    sids.iloc[: len(sids) // 2].to_parquet(path)  # half the rows, no lineage metadata
    with pytest.raises(lineage.StaleError, match=r"1,500 of 3,000 products without a SID"):
        load_sids(ws)
    r = invoke(ws, "gen", "search", "drill")
    assert r.exit_code != 0 and "does not cover the catalog" in r.output
    sids.iloc[::-1].to_parquet(path)  # every row again, but not the table the index was made from
    with pytest.raises(lineage.StaleError, match="index.parquet is stale"):
        load_sids(ws)


# 6. lineage of the inputs as read (issue 32 item 3): a Python caller holds no writer lock -------------------
def test_lineage_records_the_tables_as_read_not_as_they_are_when_saved(trained_copy, monkeypatch):
    """Another writer replaces the judgments while stage 2 trains: the new checkpoint records the judgments
    it read, so it reports itself outdated against the new ones (recording at save time called it current)."""
    from workbench.gen import stages

    ws, other = trained_copy, Workspace(trained_copy.path)
    real_fit = stages.fit

    def fit_while_another_writes(*a, **kw):
        j = other.table("judgments")
        other.write_tables({"judgments": j.iloc[: len(j) // 2]}, replace=True)
        return real_fit(*a, **kw)

    monkeypatch.setattr(stages, "fit", fit_while_another_writes)
    cfg = StagesConfig(model=TINY, train=TrainConfig(lr=3e-3), stages=(2,), epochs=(1,), eval_width=4)
    train_stages(ws, cfg, resume=False, progress=False, echo=lambda s: None)
    assert "table judgments changed" in store.outdated(ws, "generator-stage2")


def test_a_generator_trained_while_the_sids_were_replaced_is_stale_not_current(trained_copy, monkeypatch):
    from workbench.embed import get_embedder
    from workbench.gen import stages
    from workbench.sid.config import CQSIDConfig, RQVAEConfig
    from workbench.sid.store import train_workspace as train_sids

    ws, other = trained_copy, Workspace(trained_copy.path)
    real_fit = stages.fit

    def fit_while_sids_change(*a, **kw):
        cfg = CQSIDConfig(model=RQVAEConfig(input_dim=64, hidden=(128,), codebook_sizes=(16, 8, 4)), epochs=2, seed=5)
        train_sids(other, cfg, get_embedder("hashing-64"), progress=False)
        return real_fit(*a, **kw)

    monkeypatch.setattr(stages, "fit", fit_while_sids_change)
    cfg = StagesConfig(model=TINY, train=TrainConfig(lr=3e-3), stages=(2,), epochs=(1,), eval_width=4)
    with pytest.raises(lineage.StaleError, match="trained on other SIDs"):  # its deploy refuses it
        train_stages(ws, cfg, resume=False, progress=False, echo=lambda s: None)
    with pytest.raises(lineage.StaleError, match="trained on other SIDs"):  # and so does every reader
        store.load(ws, "generator-stage2")


def test_an_input_read_in_two_versions_by_one_run_is_refused(sample_ws):
    ws, other = sample_ws, Workspace(sample_ws.path)
    assert lineage.as_read(ws, {"products": "now"}) == {"products": "now"}  # no scope: the current fingerprints
    with lineage.reading(ws):
        products = ws.table("products")
        first = lineage.fingerprint(ws.table_path("products"))
        assert lineage.as_read(ws, {"products": "now"}) == {"products": first}
        other.write_tables({"products": products.assign(title=products["title"] + " v2")}, replace=True)
        ws.table("products")
        with pytest.raises(lineage.StaleError, match="products changed while this run read it.*built from a mix"):
            lineage.as_read(ws, lineage.tables(ws, ["products"]))
    assert ws.reads == []  # the scope is closed
