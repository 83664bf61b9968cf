"""Data benchmarks: synthetic marketplace generation at scale, embedding throughput, and the real data
sets imported into bench workspaces on first use."""

from __future__ import annotations

import multiprocessing as mp
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from workbench.data.synth import SynthConfig, generate
from workbench.embed import get_embedder
from workbench.workspace import Workspace


def _synth_child(cfg: SynthConfig, q) -> None:
    t0 = time.perf_counter()
    frames = generate(cfg, progress=False)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        Workspace(d).write_tables(frames)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    q.put({"generate_s": t1 - t0, "validate_write_s": t2 - t1, "peak_rss_mib": peak,
           "rows_search_log": len(frames["search_log"]), "queries": len(frames["queries"])})


def synth_scale(sizes: list[int], sessions_per_product: float = 1.0, users_per_product: float = 0.1, seed: int = 0) -> list[dict]:
    """Generate (and validate and write) marketplaces of each size, each in a fresh process for its peak memory."""
    rows = []
    ctx = mp.get_context("spawn")
    for n in sizes:
        cfg = replace(SynthConfig(), n_products=n, n_sessions=max(1, int(n * sessions_per_product)),
                      n_users=max(1, int(n * users_per_product)), seed=seed)
        q = ctx.Queue()
        p = ctx.Process(target=_synth_child, args=(cfg, q))
        p.start()
        res = q.get()
        p.join()
        rows.append({"case": f"{n:,} products", "products": n, "sessions": cfg.n_sessions, "users": cfg.n_users, **res,
                     "total_s": res["generate_s"] + res["validate_write_s"]})
    return rows


def embed_speed(texts: list[str], names: list[str], device: str = "cpu", batch_size: int = 128) -> list[dict]:
    """Texts per second of each embedder (no cache), after one warm-up batch."""
    rows = []
    for name in names:
        e = get_embedder(name, device)
        e.encode(texts[:batch_size])  # load weights and warm up
        t0 = time.perf_counter()
        v = e.encode(texts, batch_size=batch_size)
        dt = time.perf_counter() - t0
        rows.append({"case": name, "texts": len(texts), "seconds": dt, "texts_per_s": len(texts) / dt,
                     "dim": v.shape[1], "unit_norm": float(np.abs(np.linalg.norm(v, axis=1) - 1).max() < 1e-3)})
    return rows


DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"  # ../shared/datasets beside the repository


def bench_workspace(name: str, root: Path | None) -> Workspace:
    """workspaces/bench-<name>, imported from the real data set on first use."""
    root = root or DATASETS
    ws = Workspace(Path("workspaces") / f"bench-{name}")
    if ws.exists() and ws.has("products"):
        return ws
    import_real(ws, name, root)
    return ws


REAL = ("homedepot", "scientific")  # the real data sets in ../shared/datasets that import_real reads


def import_real(ws: Workspace, name: str, root: Path | None = None) -> None:
    """Import real data set `name` (homedepot: products and graded judgments from CSV; scientific: the
    LC-Rec Amazon Scientific items and sequences) from `root` (default ../shared/datasets) into `ws`."""
    root = root or DATASETS
    if name not in REAL:
        raise ValueError(f"unknown data set {name!r}; one of {', '.join(REAL)}")
    if not root.exists():
        raise FileNotFoundError(f"real data sets not found at {root}; pass --datasets")
    if name == "scientific":
        d = root / "amazon_scientific"
        ws.import_lcrec(d / "Scientific.item.json", d / "Scientific.inter.json")
    else:
        d = root / "homedepot"
        ws.import_csv({"products": d / "products.csv", "judgments": d / "judgments_dev.csv"},
                      {"product_id": "product_uid", "title": "product_title"}, relevance_threshold=2.5, on_duplicate="mean")
