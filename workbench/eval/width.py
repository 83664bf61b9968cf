"""Beam width as a decision: recall against latency over widths and batch sizes, and the width to serve.

`sweep` decodes the validation queries with a trained generator at every (batch size, width): latency
p50/p95 per batch (a query's latency when it arrives in such a batch), throughput, Recall@K and the
products retrieved. `pick_width` chooses the smallest width whose Recall@K is within `tolerance`
(relative) of the widest width's, at the largest batch size measured; `width_for_recall` the smallest
width reaching a target. `run_sweep` does both on a workspace and reports them to the logbook.

The choice is also the width the workspace serves: `run_sweep` stores it with its rule in
`<workspace>/gen/width.json`, beside the fingerprint of the generator it measured, and `served_width`
is what `gen search`, the app, `workbench serve` and the batch jobs decode at unless told otherwise
(`DEFAULT_WIDTH` where no sweep ran). A choice measured on an older generator is still served, and
`outdated` says so (`workbench data validate`; `workbench demo` sweeps again).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench import lineage
from workbench.eval.config import SweepConfig
from workbench.gen import names
from workbench.gen.data import eval_set
from workbench.gen.retrieve import Retriever, ranked_products
from workbench.gen.store import checkpoint_path, gen_dir
from workbench.metrics import recall_at_k
from workbench.report import device_name, report
from workbench.workspace import Workspace, atomic_write

DEFAULT_WIDTH = 16  # the beam width a workspace serves before its sweep has chosen one


def sweep(retriever: Retriever, evalset: pd.DataFrame, widths: list[int], batch_sizes: list[int], k: int = 50,
          rounds: int = 3, label: str = "") -> list[dict]:
    """One row per (batch size, width): latency p50/p95 per batch, throughput, Recall@k."""
    texts, rel = evalset["query"].tolist(), evalset["relevant"].tolist()
    recall = {}
    for w in widths:
        got = [ranked_products(h) for h in retriever.search(texts, w)]
        recall[w] = (recall_at_k(got, rel, k), float(np.mean([len(g) for g in got])))
    rows = []
    for bs in batch_sizes:
        chunks = [texts[i:i + bs] for i in range(0, len(texts), bs)]
        chunks = [c for c in chunks if len(c) == bs] or chunks[:1]  # equal batches only, unless all are short
        for w in widths:
            retriever.search(chunks[0], w, batch_size=bs)  # warm-up
            lat = []
            for _ in range(rounds):
                for c in chunks:
                    t = time.perf_counter()
                    retriever.search(c, w, batch_size=bs)  # to host lists: synchronises on CUDA too
                    lat.append(time.perf_counter() - t)
            lat = np.array(lat)
            rows.append({"case": f"{label}w{w} b{bs}".strip(), "ids": label, "width": w, "batch": bs,
                         "p50_ms": 1e3 * np.percentile(lat, 50), "p95_ms": 1e3 * np.percentile(lat, 95),
                         "queries_per_s": len(lat) * len(chunks[0]) / lat.sum(),
                         f"recall@{k}": recall[w][0], "products": recall[w][1]})
    return rows


def run_sweep(w: Workspace, mode: str, cfg: SweepConfig, run, device: str = "cpu") -> tuple[list[dict], dict]:
    """The sweep of workspace `w`'s deployed generator, reported as `beam-sweep (<mode> IDs)`; its choice
    (pick_width) stored as the width `w` serves. Returns the rows and the choice."""
    widths, sizes = list(cfg.widths), list(cfg.batch_sizes)
    rows = sweep(Retriever.from_workspace(w, device=device), eval_set(w, "validation"), widths, sizes, cfg.k, cfg.rounds, f"{mode} ")
    report(f"beam-sweep ({mode} IDs)", rows, run, units={"p50_ms": "ms", "p95_ms": "ms", "queries_per_s": "1/s"},
           params={"widths": widths, "batch_sizes": sizes, "k": cfg.k, "rounds": cfg.rounds, "workspace": str(w.path)},
           device=device_name(device))
    pick = pick_width(rows, cfg.k, cfg.tolerance)
    save_choice(w, pick, run.run_id)
    return rows, pick


def pick_width(rows: list[dict], k: int, tolerance: float = 0.02) -> dict:
    """Smallest width whose Recall@k is within `tolerance` (relative) of the widest width's; the
    latency saved at the largest batch size measured."""
    df = pd.DataFrame(rows)
    bs = df["batch"].max()
    df = df[df["batch"] == bs].sort_values("width")
    widest = df.iloc[-1]
    ok = df[df[f"recall@{k}"] >= (1 - tolerance) * widest[f"recall@{k}"]]
    best = ok.iloc[0]
    return {"width": int(best["width"]), "recall": float(best[f"recall@{k}"]), "widest": int(widest["width"]),
            "widest_recall": float(widest[f"recall@{k}"]), "batch": int(bs),
            "latency_saving": 1 - best["p50_ms"] / widest["p50_ms"],
            "throughput_gain": best["queries_per_s"] / widest["queries_per_s"], "k": k, "tolerance": tolerance}


def width_for_recall(rows: list[dict], k: int, target: float) -> int | None:
    """Smallest width reaching `target` Recall@k (None if none does)."""
    df = pd.DataFrame(rows).drop_duplicates("width").sort_values("width")
    hit = df[df[f"recall@{k}"] >= target]
    return int(hit.iloc[0]["width"]) if len(hit) else None


def rule(pick: dict) -> str:
    """The rule that chose a width, in words, with its figures (a `pick_width` result)."""
    return (f"Width {pick['width']} is the smallest whose Recall@{pick['k']} ({pick['recall']:.3f}) is within "
            f"{pick['tolerance']:.0%} of the widest width's ({pick['widest']}: {pick['widest_recall']:.3f}), measured at "
            f"batch {pick['batch']}; it saves {pick['latency_saving']:.0%} of the widest width's p50 latency and serves "
            f"{pick['throughput_gain']:.1f}x its queries per second.")


def choice_path(ws: Workspace) -> Path:
    return gen_dir(ws) / "width.json"


def save_choice(ws: Workspace, pick: dict, run_id: str | None = None, generator: str = names.DEPLOYED) -> Path:
    """Store `pick` (a `pick_width` result) as the width `ws` serves, with its rule and the fingerprint of
    the generator it was measured on."""
    doc = {"width": int(pick["width"]), "rule": rule(pick), "pick": {k: (v.item() if hasattr(v, "item") else v) for k, v in pick.items()},
           "generator": {"name": generator, "fingerprint": lineage.fingerprint(checkpoint_path(ws, generator))}, "run_id": run_id}
    path = choice_path(ws)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))
    return path


def load_choice(ws: Workspace) -> dict:
    """The stored choice (width, rule, pick, generator, run_id); FileNotFoundError before any sweep,
    ValueError when the file is not a choice."""
    path = choice_path(ws)
    try:
        doc = json.loads(path.read_text())
        width = doc["width"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a width choice ({type(e).__name__}: {e}); run the sweep again with "
                         "`workbench bench beam --ids workspace` (or delete the file to serve width "
                         f"{DEFAULT_WIDTH})") from None
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"{path}: width must be a whole number >= 1, got {width!r}")
    return doc


def served(ws: Workspace) -> tuple[int, str]:
    """The beam width `ws` serves, and where it comes from in words: its sweep's choice, or DEFAULT_WIDTH
    where no sweep ran."""
    try:
        doc = load_choice(ws)
    except FileNotFoundError:
        return DEFAULT_WIDTH, ("the default: no sweep has chosen a width for this workspace "
                               "(`workbench bench beam --ids workspace` runs one)")
    why = outdated(ws)
    return doc["width"], "the sweep's choice" + (f", measured before {why}" if why else "")


def served_width(ws: Workspace) -> int:
    """The beam width `ws` serves: its sweep's choice, or DEFAULT_WIDTH where no sweep ran."""
    try:
        return load_choice(ws)["width"]
    except FileNotFoundError:
        return DEFAULT_WIDTH


def outdated(ws: Workspace) -> str:
    """Why the stored choice is older than the generator it serves ("" when it is current); raises like
    `load_choice`."""
    g = load_choice(ws)["generator"]
    path = checkpoint_path(ws, g["name"])
    if not path.exists():
        return f"its generator {g['name']} is gone"
    return "" if lineage.fingerprint(path) == g["fingerprint"] else f"{g['name']} changed since the sweep chose the width"
