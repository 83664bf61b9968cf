"""Data-parallel throughput: the same `workbench train` on 1 process and on N (torchrun).

Each configuration runs as its own command in the workspace (checkpoints under bench names, removed
afterwards); its examples/s come back from the logbook rows rank 0 wrote. The cores are split
evenly: each of N processes gets cores / N threads, so 1 process is not starved nor N oversubscribed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np


def train_command(ws_path: str, procs: int, name: str, stages: str, epochs: int, extra: list[str]) -> list[str]:
    cli = ["-m", "workbench", "-w", str(ws_path), "train", "--stages", stages, "--epochs", str(epochs), "--fresh",
           "--name", name, *extra]
    if procs == 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cli]


def throughput(ws, procs: list[int], stages: str = "1", epochs: int = 3, extra: list[str] | None = None,
               cores: int | None = None, timeout: float = 7200) -> list[dict]:
    """One row per process count: median examples/s over the epochs (all processes together) and the speed-up
    over the first count."""
    cores = cores or os.cpu_count() or 1
    rows = []
    for n in procs:
        name, threads = f"bench-dist-{n}p", max(1, cores // n)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        out = subprocess.run(train_command(ws.path, n, name, stages, epochs, extra or []), env=env, capture_output=True,
                             text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"{n}-process training failed:\n{(out.stdout + out.stderr)[-3000:]}")
        eps = ws.logbook().query(
            "SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE m.name = 'examples_per_s' AND r.name LIKE ? "
            "AND r.started_at = (SELECT max(started_at) FROM runs WHERE name LIKE ?)",
            [f"gen-train {name} stage %", f"gen-train {name} stage %"])["value"].to_numpy()
        for f in (ws.path / "gen").glob(f"{name}*.safetensors"):
            f.unlink()
        rows.append({"case": f"{n} process{'es' if n > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
                     "processes": n, "threads_per_process": threads, "examples_per_s": float(np.median(eps)),
                     "epochs": len(eps), "wall_s": wall})
    for r in rows:
        r["speedup"] = r["examples_per_s"] / rows[0]["examples_per_s"]
    return rows
