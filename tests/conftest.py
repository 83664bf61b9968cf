import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
DATASETS = ROOT.parent / "shared" / "datasets"


@contextmanager
def held(path):
    """Another process holds DuckDB's lock on the file at `path` (as a training run's write does, or a
    notebook with it open) until the block ends; yields its pid."""
    code = "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(300)"
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held", "the lock holder did not start"
        yield p.pid
    finally:
        p.kill()
        p.wait()


def garbage(path) -> None:
    """Random bytes where a DuckDB file is expected (a truncated copy, a disk error)."""
    Path(path).write_bytes(bytes(range(256)) * 64)


def key_bias(name: str, n: int) -> slice | None:
    """The entries of parameter `name` (n values) that add the same amount to every attention logit of a
    query, which softmax ignores: the key biases. Their true gradient is zero, so what moves them is float
    noise, which Adam scales up to steps of about the learning rate."""
    if name.endswith(".qkv.bias"):  # self-attention: [q | k | v]
        return slice(n // 3, 2 * n // 3)
    if name.endswith(".kv.bias"):  # cross-attention: [k | v]
        return slice(0, n // 2)
    if name.endswith(".key.bias"):  # a pretrained BERT encoder
        return slice(0, n)
    return None


def assert_same_training(a: dict, b: dict, lr: float, steps: int, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """Two runs' weights (name -> array) agree as far as the arithmetic determines them: every weight
    with a true gradient within rtol/atol (float summation order differs between 1 and 2 processes),
    and the key biases, whose steps are Adam-scaled noise, within the distance Adam can move a weight
    in `steps` steps of `lr` in each run (|update| < 8 lr per step for the default betas)."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = np.asarray(a[k], np.float64).ravel(), np.asarray(b[k], np.float64).ravel()
        free = np.zeros(x.size, bool)
        if (s := key_bias(k, x.size)) is not None:
            free[s] = True
        assert np.allclose(x[~free], y[~free], rtol=rtol, atol=atol), (k, np.abs(x[~free] - y[~free]).max())
        assert np.abs(x[free] - y[free]).max(initial=0) <= 2 * 8 * lr * steps, (k, "key bias", np.abs(x[free] - y[free]).max())


def subcommands(cmd) -> dict:
    """A click group's subcommands by name, loading lazily registered ones (the CLI's `VERBS`)."""
    if not hasattr(cmd, "list_commands"):
        return {}
    ctx = click.Context(cmd)
    return {name: cmd.get_command(ctx, name) for name in cmd.list_commands(ctx)}


def need_dataset(name: str) -> Path:
    p = DATASETS / name
    if not p.exists():
        pytest.skip(f"real data set {p} is absent (it lives in ../shared/datasets beside the project)")
    return p


@pytest.fixture
def sample_ws(tmp_path):
    """A copy of the committed sample workspace (tables only), safe to write into."""
    from workbench import Workspace

    shutil.copytree(SAMPLE, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


TINY = dict(d_model=64, n_heads=4, enc_layers=1, dec_layers=1, d_ff=128)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The sample marketplace with hashing-64 SIDs (16, 8, 4) and a tiny generator trained through stages 1-3."""
    from workbench import Workspace
    from workbench.embed import get_embedder
    from workbench.gen.config import StagesConfig, TrainConfig
    from workbench.gen.stages import train_stages
    from workbench.pipeline import SAMPLE_DATA
    from workbench.sid.config import CQSIDConfig, RQVAEConfig
    from workbench.sid.store import train_workspace as train_sids

    d = tmp_path_factory.mktemp("gen")
    shutil.copytree(SAMPLE_DATA, d / "ws")
    ws = Workspace(d / "ws")
    cfg = CQSIDConfig(model=RQVAEConfig(input_dim=64, hidden=(128,), codebook_sizes=(16, 8, 4)), epochs=8)
    train_sids(ws, cfg, get_embedder("hashing-64"), progress=False)
    rows = train_stages(ws, StagesConfig(model=TINY, train=TrainConfig(lr=3e-3), epochs=(3, 3, 2), eval_width=16),
                        progress=False)
    return ws, rows


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A copy of the `trained` workspace, safe to change."""
    from workbench import Workspace

    ws, _ = trained
    shutil.copytree(ws.path, tmp_path / "ws")
    return Workspace(tmp_path / "ws")
