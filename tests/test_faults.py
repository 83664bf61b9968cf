"""Fault injection (issue 17): kill -9 a CLI job at random points of import, SID training, generator
training, a retrain and its deploy, and a batch job, with several seeds; afterwards every artifact of the workspace loads and agrees
with the others (`pipeline.report`: nothing stale or broken), tables are the old set or the new one,
never a mix, and rerunning the job finishes it.

Each job first runs once uninterrupted (its duration D and its finished state); each seed then kills a
fresh copy at a uniform random moment in [0.25 D, D] (imports, the work itself and the final writes)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from workbench import Workspace, pipeline
from workbench.workspace import clean_temps

pytestmark = pytest.mark.slow
SEEDS = (0, 1, 2)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def cli(ws: Workspace, *args) -> list[str]:
    return [sys.executable, "-m", "workbench", "-w", str(ws.path), *args]


def run(cmd) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return time.perf_counter() - t


def kill_at(cmd, seconds: float) -> None:
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
    p.wait()  # reaped: its pid is gone, as after a real crash


def state(ws: Workspace) -> dict:
    return {**{t: ws.table_path(t).read_bytes() for t in ws.tables()}, "meta": ws.meta_path.read_bytes()}


def agree(ws: Workspace) -> list[dict]:
    """Open the workspace as the next command would, and check every artifact."""
    ws = Workspace(ws.path)
    ws.validate_all()
    bad = [r for r in pipeline.report(ws) if r["status"] in ("stale", "broken")]
    assert not bad, bad
    return pipeline.report(ws)


def trials(base: Workspace, tmp_path, cmd_of, name: str):
    """Run `cmd_of(ws)` to the end in one copy of `base` and kill it in one fresh copy per seed; returns
    the finished copy and the killed ones."""
    done = Workspace(shutil.copytree(base.path, tmp_path / f"{name}-done"))
    d = run(cmd_of(done))
    out = []
    for seed in SEEDS:
        ws = Workspace(shutil.copytree(base.path, tmp_path / f"{name}-{seed}"))
        kill_at(cmd_of(ws), np.random.default_rng(seed).uniform(0.25, 1.0) * d)
        out.append(ws)
    return done, out


@pytest.fixture
def data_only(sample_ws):
    return sample_ws


def test_kill_during_import_leaves_the_old_tables_or_the_new_ones(data_only, tmp_path):
    old = state(data_only)
    cmd = lambda ws: cli(ws, "data", "synth", "--products", "2000", "--users", "300", "--sessions", "8000", "--seed", "3")  # noqa: E731
    done, killed = trials(data_only, tmp_path, cmd, "import")
    new = state(done)
    assert new != old
    for ws in killed:
        agree(ws)
        assert state(Workspace(ws.path)) in (old, new)
        clean_temps(ws.path)  # what the next write (or `data validate`) does
        assert not list(ws.path.rglob("*.tmp"))


def test_kill_during_sid_training_leaves_no_mixed_set(data_only, tmp_path):
    cmd = lambda ws: cli(ws, "sid", "train", "--embedder", "hashing-64", "--codebook-sizes", "16,8,4", "--latent-dim", "16",  # noqa: E731
                         "--epochs", "40")
    done, killed = trials(data_only, tmp_path, cmd, "sid")
    assert {r["status"] for r in agree(done)} == {"ok"}
    for ws in killed:
        files = sorted(p.name for p in (ws.path / "sid").glob("*")) if (ws.path / "sid").exists() else []
        assert files in ([], ["index.parquet", "rqvae.safetensors", "sids.parquet"]), files  # all three or none
        agree(ws)


def test_kill_during_generator_training_then_rerun_finishes(trained, tmp_path):
    base = Workspace(shutil.copytree(trained[0].path, tmp_path / "base"))
    shutil.rmtree(base.path / "gen")
    cmd = lambda ws: cli(ws, "train", "--stages", "1,2", "--epochs", "3,3", "--backbone", "scratch", "--d-model", "32",  # noqa: E731
                         "--heads", "2", "--layers", "1", "--d-ff", "64", "--eval-width", "4", "--batch-size", "64")
    done, killed = trials(base, tmp_path, cmd, "gen")
    assert {r["status"] for r in agree(done)} == {"ok"}
    for ws in killed:
        agree(ws)  # partial files and finished stages load and agree
        run(cmd(ws))  # resumes what the kill interrupted
        report = agree(ws)
        assert {r["status"] for r in report} == {"ok"} and "gen/generator.safetensors" in {r["artifact"] for r in report}


def test_kill_during_a_retrain_and_its_deploy_then_rerun_deploys_the_new_stage(trained, tmp_path):
    """A workspace with a deployed generator retrains stage 3 and is killed anywhere, the deploy copy included.
    A rerun that resumes must end with the new stage deployed: it used to find the stage finished and leave the
    old generator "as it is" when the kill fell between the stage's save and the deploy."""
    from workbench.gen import store

    base = Workspace(shutil.copytree(trained[0].path, tmp_path / "base"))
    cmd = lambda ws, *more: cli(ws, "train", "--stages", "3", "--epochs", "3", "--eval-width", "4", *more)  # noqa: E731
    done, killed = trials(base, tmp_path, lambda ws: cmd(ws, "--fresh"), "deploy")
    assert not store.deploy_problem(done, "generator-stage3")
    for ws in killed:
        agree(ws)  # the old generator or the new one, each loads
        run(cmd(ws))  # resumes: trains what is left, or finds stage 3 finished
        agree(ws)
        assert not store.deploy_problem(ws, "generator-stage3")


def test_kill_during_a_batch_job_leaves_no_output_or_a_whole_one(trained, tmp_path):
    ws = trained[0]
    src = ws.table_path("products")
    rows = pq.ParquetFile(src).metadata.num_rows
    cmd = lambda dst: [sys.executable, "-m", "workbench", "-w", str(ws.path), "batch", "decode", str(src), str(dst),  # noqa: E731
                       "--chunk", "250", "--width", "8"]
    d = run(cmd(tmp_path / "done.parquet"))
    for seed in SEEDS:
        dst = tmp_path / f"out-{seed}.parquet"
        kill_at(cmd(dst), np.random.default_rng(seed).uniform(0.25, 1.0) * d)
        if dst.exists():
            assert pq.ParquetFile(dst).metadata.num_rows == rows
        run(cmd(dst))  # a rerun writes the output and removes the killed job's temporary file
        assert pq.ParquetFile(dst).metadata.num_rows == rows
    assert not list(tmp_path.glob(".*.tmp"))
