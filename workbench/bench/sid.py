"""SID benchmarks: the CQ-SID ablation on a workspace, published indexes, and assignment at scale."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.sid import metrics
from workbench.sid.config import CQSIDConfig, RQVAEConfig
from workbench.sid.cqsid import SIDData, assign, evaluate, flat_stats, train, variant

COLUMNS = ["sids", "unique_rate", "collision_rate", "size_max", "size_median", "size_p99", "purity_l1_d1", "purity_l1_d2",
           "purity_l1_dfull", "purity_l2_dfull", "coherence_l1", "coherence_l2", "coherence_l3"]


def ablation(data: SIDData, base: CQSIDConfig, variants: list[str], device: str = "cpu", progress: bool = True) -> list[dict]:
    """Train each variant on the same data, seed and budget; one row of metrics per variant."""
    rows = []
    for v in variants:
        cfg = variant(base, v)
        t0 = time.perf_counter()
        model = train(data, cfg, device, progress=progress)
        secs = time.perf_counter() - t0
        s = flat_stats(evaluate(model, data, cfg, device))
        rows.append({"case": v, "train_s": secs, **{k: s[k] for k in COLUMNS if k in s}})
    return rows


def lcrec_index(path: str | Path, product_ids: np.ndarray) -> np.ndarray:
    """A published LC-Rec index (`{"item": ["<a_12>", "<b_3>", ...]}`) as (N, L) codes in `product_ids` order."""
    raw = json.loads(Path(path).read_text())
    missing = [p for p in product_ids if str(p) not in raw]
    if missing:
        raise ValueError(f"{path}: no SID for {len(missing)} products, e.g. {missing[:3]}")
    return np.array([[int(t.split("_")[1].rstrip(">")) for t in raw[str(p)]] for p in product_ids], np.int64)


def code_stats(case: str, codes: np.ndarray, category: pd.Series | None, pairs: pd.DataFrame | None = None) -> dict:
    """The same columns as `ablation`, for a given codes array (e.g. a published index)."""
    row = {"case": case, **{k: v for k, v in metrics.cluster_sizes(codes).items() if k in COLUMNS}}
    if category is not None:
        for r in metrics.category_purity(codes, category.reset_index(drop=True), (1, 2, None)):
            row[f"purity_l{r['level']}_d{r['depth']}"] = r["purity"]
    if pairs is not None and len(pairs):
        for r in metrics.query_coherence(codes, pairs):
            row[f"coherence_l{r['level']}"] = r["coherence"]
    return {k: row[k] for k in ["case", *COLUMNS] if k in row}


def assign_scale(n: int, dim: int = 384, sizes: tuple[int, ...] = (256, 256, 256), chunk: int = 65_536,
                 device: str = "cpu", seed: int = 0) -> dict:
    """Time and peak memory of assigning SIDs to `n` random `dim`-d vectors with a (briefly) trained model."""
    r = np.random.default_rng(seed)
    train_x = r.normal(size=(20_000, dim)).astype(np.float32)
    cfg = CQSIDConfig(model=RQVAEConfig(input_dim=dim, codebook_sizes=sizes), epochs=1, category_weight=0, query_weight=0)
    model = train(SIDData(x=train_x, product_ids=np.arange(len(train_x))), cfg, device, progress=False)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # fill in blocks: no float64 temporary of the whole array
        x[s:s + 100_000] = r.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    codes = assign(model, x, device, chunk=chunk, progress=True)
    secs = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"case": f"{n:,} x {dim}", "products": n, "seconds": secs, "products_per_s": n / secs,
            "input_mib": x.nbytes / 2**20, "peak_rss_mib": rss1, "peak_rss_growth_mib": rss1 - rss0,
            "sids": metrics.cluster_sizes(codes)["sids"], "chunk": chunk}


def base_config(dim: int, sizes: tuple[int, ...], epochs: int, seed: int = 0, rotation_trick: bool = False) -> CQSIDConfig:
    model = RQVAEConfig(input_dim=dim, codebook_sizes=sizes, rotation_trick=rotation_trick)
    return replace(CQSIDConfig(model=model, epochs=epochs), seed=seed)
