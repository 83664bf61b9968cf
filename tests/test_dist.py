"""Data parallelism: the shard and loss-scaling contract in one process, and a real
`torchrun --nproc_per_node=2` (gloo, CPU) training of stages 1-2 that matches one process."""

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file

from tests.conftest import assert_same_training
from workbench import Workspace, dist
from workbench.gen.config import TrainConfig
from workbench.gen.model import loss


def test_same_training_holds_key_bias_noise_and_catches_a_real_divergence():
    """The 1-vs-2-process check: key-bias noise within Adam's reach passes; a moved query bias, a moved
    weight, or a key bias beyond lr x steps fails."""
    rng = np.random.default_rng(0)
    a = {"blocks.0.qkv.bias": rng.normal(size=12).astype(np.float32), "blocks.0.kv.bias": np.zeros(8, np.float32),
         "head.weight": rng.normal(size=(3, 4)).astype(np.float32)}
    b = {k: v.copy() for k, v in a.items()}
    b["blocks.0.qkv.bias"][4:8] += 5e-3  # the key slice: noise-sized Adam steps
    b["blocks.0.kv.bias"][:4] -= 5e-3
    assert_same_training(a, b, lr=1e-3, steps=3)
    for k, i, d in (("blocks.0.qkv.bias", 0, 1e-3), ("blocks.0.kv.bias", 5, 1e-3), ("head.weight", (1, 1), 1e-3),
                    ("blocks.0.qkv.bias", 5, 0.1)):
        c = {k2: v.copy() for k2, v in b.items()}
        c[k][i] += d
        with pytest.raises(AssertionError):
            assert_same_training(a, c, lr=1e-3, steps=3)


def test_one_process_is_the_identity():
    b = torch.arange(10)
    assert not dist.launched() and dist.world() == 1 and dist.is_main()
    assert dist.shard(b).tolist() == list(range(10)) and float(dist.local_total(torch.ones(4))) == 4
    model = torch.nn.Linear(2, 2)
    assert dist.wrap(model) is model and dist.all_sum(2.5) == 2.5


def test_helpers_are_the_plain_computation_on_one_process_and_gather_cat_joins_ranks(monkeypatch):
    """my_rows, mean_over_ranks, all_sum_many_ and gather_cat on one process; gather_cat's join with two
    ranks faked: tensors concatenated in rank order through tuples, dicts and dataclasses, other leaves rank 0's."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Part:
        rows: torch.Tensor
        tau: float

    assert dist.my_rows() == slice(0, None, 1) and torch.equal(torch.arange(5)[dist.my_rows()], torch.arange(5))
    assert dist.mean_over_ranks({"a": 1.5, "b": torch.tensor(2.0)}) == {"a": 1.5, "b": 2.0}
    ts = [torch.ones(2), torch.zeros(1, 3)]
    assert dist.all_sum_many_(ts) is ts and ts[0].tolist() == [1.0, 1.0]
    mine = (torch.arange(3), {"k": Part(torch.ones(3, 2), 0.5)})
    assert dist.gather_cat(mine) is mine
    other = (torch.arange(3, 5), {"k": Part(torch.zeros(2, 2), 9.0)})
    monkeypatch.setattr(dist, "world", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    monkeypatch.setattr(dist, "gather_objects", lambda obj: [obj, other])
    assert dist.my_rows() == slice(1, None, 2)
    rows, d = dist.gather_cat(mine)
    assert rows.tolist() == [0, 1, 2, 3, 4] and d["k"].rows.sum(1).tolist() == [2, 2, 2, 0, 0] and d["k"].tau == 0.5
    monkeypatch.setattr(dist, "all_sum_", lambda t: t.mul_(2))  # two ranks holding the same values
    assert dist.mean_over_ranks({"a": 1.5, "b": 3}) == {"a": 1.5, "b": 3.0}
    ts = dist.all_sum_many_([torch.ones(2), torch.full((1, 3), 2.0)])  # one flat reduce, split back in place
    assert ts[0].tolist() == [2.0, 2.0] and ts[1].tolist() == [[4.0, 4.0, 4.0]]


def test_ranks_losses_average_to_the_global_batch_loss():
    """What DDP's gradient averaging sees: each rank's slice over the global weight / N, averaged over
    ranks, is the one-process loss of the whole batch, for any split (uneven ones included)."""
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(7, 5, generator=g, requires_grad=True), torch.randn(7, 3, generator=g, requires_grad=True)]
    sids = torch.stack([torch.randint(0, 5, (7,), generator=g), torch.randint(0, 3, (7,), generator=g)], 1)
    w = torch.rand(7, generator=g) + 0.5
    full = loss(logits, sids, w, 0.1)
    want = torch.autograd.grad(full, logits)
    for n in (2, 3):
        parts = [loss([lg[r::n] for lg in logits], sids[r::n], w[r::n], 0.1, total=w.sum() / n) for r in range(n)]
        assert torch.allclose(sum(parts) / n, full)
        got = torch.autograd.grad(sum(parts) / n, logits)
        assert all(torch.allclose(a, b) for a, b in zip(got, want))


@pytest.fixture(scope="module")
def sid_workspace(tmp_path_factory):
    """The sample marketplace with small hashing-64 SIDs, no generator."""
    from workbench.embed import get_embedder
    from workbench.pipeline import SAMPLE_DATA
    from workbench.sid.config import CQSIDConfig, RQVAEConfig
    from workbench.sid.store import train_workspace

    path = tmp_path_factory.mktemp("dist") / "ws"
    shutil.copytree(SAMPLE_DATA, path)
    cfg = CQSIDConfig(model=RQVAEConfig(input_dim=64, hidden=(128,), codebook_sizes=(16, 8, 4)), epochs=6)
    train_workspace(Workspace(path), cfg, get_embedder("hashing-64"), progress=False)
    return path


ARGS = ["train", "--stages", "1,2", "--epochs", "2,1", "--d-model", "32", "--layers", "1", "--heads", "2", "--d-ff", "64",
        "--batch-size", "96", "--dropout", "0", "--eval-width", "4", "--fresh"]


@pytest.mark.slow
def test_torchrun_two_processes_match_one(sid_workspace):
    ws = Workspace(sid_workspace)
    one = subprocess.run(dist.command(1, ["-w", str(ws.path), *ARGS, "--name", "one"]), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(dist.command(2, ["-w", str(ws.path), *ARGS, "--name", "two"]), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    assert two.stdout.count("validation queries, beam width") == 1  # rank 0 reports, rank 1 stays quiet

    # the same global batches, the same weights (up to float summation order)
    a, b = load_file(ws.path / "gen" / "one.safetensors"), load_file(ws.path / "gen" / "two.safetensors")
    lb = ws.logbook()
    steps = lb.query("SELECT sum(s) AS n FROM (SELECT max(m.step) AS s FROM metrics m JOIN runs r USING (run_id) "
                     "WHERE r.name LIKE 'gen-train one stage %' GROUP BY r.run_id)")["n"].iloc[0]
    assert_same_training(a, b, lr=TrainConfig().lr, steps=int(steps))

    # rank 0 alone wrote the logbook: one run per stage, one row per epoch, the same losses
    runs = lb.query("SELECT name, config->>'$.processes' AS processes FROM runs WHERE name LIKE 'gen-train two %' ORDER BY name")
    assert runs["name"].tolist() == ["gen-train two stage 1-items", "gen-train two stage 2-queries"]
    assert runs["processes"].tolist() == ["2", "2"]
    losses = lb.query("SELECT r.name, m.step, m.value FROM metrics m JOIN runs r USING (run_id) "
                      "WHERE m.name = 'loss' AND r.name LIKE 'gen-train % stage 1-items' ORDER BY r.name, m.step")
    one_l, two_l = (losses[losses["name"] == f"gen-train {n} stage 1-items"]["value"].to_numpy() for n in ("one", "two"))
    assert len(one_l) == len(two_l) == 2 and np.allclose(one_l, two_l, rtol=1e-4)
    assert not list((ws.path / "gen").glob("*.partial.safetensors"))


@pytest.mark.slow
def test_bench_dist_logs_throughput_per_process_count(sid_workspace):
    from click.testing import CliRunner

    from workbench.cli import main

    ws = Workspace(sid_workspace)

    def files():
        return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in ws.path.rglob("*")
                      if p.is_file() and "logbook" not in p.name and p.name != ".writer.lock" and "cache" not in p.parts)

    def trainings():
        return len(ws.logbook().query("SELECT run_id FROM runs WHERE kind IN ('gen-train', 'sid-train', 'rl')"))

    before, trained = files(), trainings()
    r = CliRunner().invoke(main, ["-w", str(sid_workspace), "bench", "dist", "--job", "sid", "--epochs", "2", "--args",
                                  "--embedder hashing-64 --codebook-sizes 16,8,4 --latent-dim 16"])
    assert r.exit_code == 0, r.output
    rows = ws.logbook().query(
        "SELECT case_name, metric, value FROM bench WHERE bench = 'dist-throughput' AND metric IN ('processes', 'examples_per_s')")
    got = rows.pivot(index="case_name", columns="metric", values="value")
    assert len(got) == 2 and sorted(got["processes"]) == [1, 2] and (got["examples_per_s"] > 0).all()
    assert files() == before  # the workspace's models and tables are untouched
    assert trainings() == trained  # the bench's trainings logged to their scratch logbooks, not this one
    r = CliRunner().invoke(main, ["-w", str(sid_workspace), "bench", "dist", "--epochs", "1", "--args", "--heads 3"])
    assert r.exit_code != 0 and "1-process train failed" in r.output, r.output


SID_ARGS = ["sid", "train", "--embedder", "hashing-64", "--codebook-sizes", "512,64,8", "--latent-dim", "16", "--epochs", "3",
            "--batch-size", "101"]  # 101: uneven slices; 512 codes for 3,000 products: dead codes to restart


@pytest.mark.slow
def test_torchrun_rqvae_two_processes_match_one(tmp_path):
    """CQ-SID with both constraints (whole-batch losses over gathered rows, anchors split over ranks,
    summed code usage for the restarts) on 2 gloo processes ends with one process's weights and SIDs."""
    from workbench.embed import embed_workspace, get_embedder
    from workbench.pipeline import SAMPLE_DATA

    shutil.copytree(SAMPLE_DATA, tmp_path / "one")
    embed_workspace(Workspace(tmp_path / "one"), get_embedder("hashing-64"), progress=False)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    one = subprocess.run(dist.command(1, ["-w", str(tmp_path / "one"), *SID_ARGS]), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(dist.command(2, ["-w", str(tmp_path / "two"), *SID_ARGS]), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, (two.stdout + two.stderr)[-3000:]
    assert two.stdout.count("trained cq-sid") == 1  # rank 0 reports, rank 1 stays quiet

    a, b = (load_file(tmp_path / w / "sid" / "rqvae.safetensors") for w in ("one", "two"))
    assert a.keys() == b.keys()
    for k in a:
        assert np.allclose(a[k], b[k], rtol=1e-3, atol=1e-4), (k, np.abs(a[k] - b[k]).max())
    sa, sb = (pd.read_parquet(tmp_path / w / "sid" / "sids.parquet") for w in ("one", "two"))
    assert (sa == sb).all(axis=1).mean() >= 0.998  # the same SIDs, but for nearest-code ties that float order decides

    q = ("SELECT r.config->>'$.processes' AS processes, m.name, m.step, m.value FROM metrics m JOIN runs r USING (run_id) "
         "WHERE r.kind = 'sid-train' AND m.name IN ('recon', 'category', 'query', 'restarted') ORDER BY m.name, m.step")
    ra, rb = (Workspace(tmp_path / w).logbook().query(q) for w in ("one", "two"))
    assert ra["processes"].eq("1").all() and rb["processes"].eq("2").all() and len(ra) == len(rb) == 12
    assert ra.loc[ra["name"] == "restarted", "value"].sum() > 0  # the summed usage was exercised
    assert np.allclose(ra["value"], rb["value"], rtol=1e-4)


@pytest.mark.slow
def test_torchrun_the_whole_curriculum_through_stage_4(sid_workspace, tmp_path):
    """`workbench train --stages 1,2,3,4` under torchrun: every rank goes on to RL (which trains the
    ranker on rank 0 first), rank 0 alone reports and writes the final generator."""
    from workbench.gen import store

    shutil.copytree(sid_workspace, tmp_path / "ws")
    r = subprocess.run(dist.command(2, ["-w", str(tmp_path / "ws"), "train", "--stages", "1,2,3,4", "--epochs", "1", "--rl-steps", "2",
                                        "--d-model", "32", "--layers", "1", "--heads", "2", "--d-ff", "64", "--eval-width", "4",
                                        "--embedder", "hashing-64", "--fresh"]), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count("wrote generator-stage4 and deployed it as generator") == 1 and r.stdout.count("training the ranker on the search log first") == 1
    _, _, meta = store.load(Workspace(tmp_path / "ws"), "generator")
    assert meta["stage"] == "4-eg-grpo"
    runs = Workspace(tmp_path / "ws").logbook().query("SELECT config->>'$.processes' AS p FROM runs WHERE kind = 'rl'")
    assert runs["p"].tolist() == ["2"]
