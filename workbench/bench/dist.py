"""Data-parallel throughput: the same trainer on 1 process and on N (torchrun).

Three trainers, each run as its own command: `train` (generator stages, examples = training pairs),
`sid` (CQ-SID, examples = products) and `rl` (stage 4, examples = prompts). Every run happens in a
scratch workspace that links the real one's tables, caches and models and writes its own
checkpoints and logbook, so the workspace is left as it was; examples/s come back from the logbook
rows rank 0 wrote there (the median over epochs or steps). The cores are split evenly: each of N
processes gets cores / N threads, so 1 process is not starved nor N oversubscribed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from workbench import dist
from workbench.workspace import Workspace

RUN_KIND = {"train": "gen-train", "sid": "sid-train", "rl": "rl"}  # job -> the kind of run it logs
JOBS = tuple(RUN_KIND)
WRITTEN = ("gen", "sid", "rl")  # folders trainers write into


def scratch(ws: Workspace) -> Path:
    """A workspace that reads everything `ws` has, through symlinks, and has a logbook of its own.
    The folders trainers write into are real folders of symlinked files: files are written to a
    temporary name and renamed, which replaces the link and leaves the original alone. The caller
    removes it."""
    root = Path(tempfile.mkdtemp(prefix="workbench-bench-dist-"))
    for entry in ws.path.iterdir():
        if entry.name.startswith("logbook.duckdb"):
            continue
        if entry.name in WRITTEN and entry.is_dir():
            (root / entry.name).mkdir()
            for f in entry.iterdir():
                (root / entry.name / f.name).symlink_to(f.resolve())
        else:
            (root / entry.name).symlink_to(entry.resolve())
    return root


def command(job: str, ws_path: Path, procs: int, epochs: int, extra: list[str]) -> list[str]:
    cli = ["-w", str(ws_path)]
    if job == "train":
        cli += ["train", "--epochs", str(epochs), "--fresh", "--name", "bench-dist"]
    elif job == "sid":
        cli += ["sid", "train", "--epochs", str(epochs)]
    else:
        cli += ["rl", "--steps", str(epochs), "--eval-every", str(epochs)]
    return dist.command(procs, [*cli, *extra])


def throughput(ws: Workspace, procs: list[int], job: str = "train", epochs: int = 3, extra: list[str] | None = None,
               cores: int | None = None, timeout: float = 7200) -> list[dict]:
    """One row per process count: median examples/s over the epochs or steps (all processes together)
    and the speed-up over the first count. `epochs` are RL steps for `rl`."""
    if job not in JOBS:
        raise ValueError(f"job must be one of {JOBS}, got {job!r}")
    cores = cores or os.cpu_count() or 1
    rows = []
    for n in procs:
        threads = max(1, cores // n)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        root = scratch(ws)
        try:
            t0 = time.perf_counter()
            out = subprocess.run(command(job, root, n, epochs, extra or []), env=env, capture_output=True, text=True,
                                 timeout=timeout)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                raise RuntimeError(f"{n}-process {job} failed:\n{(out.stdout + out.stderr)[-3000:]}")
            eps = Workspace(root).logbook().query(
                "SELECT m.value FROM metrics m JOIN runs r USING (run_id) WHERE m.name = 'examples_per_s' AND r.kind = ?",
                [RUN_KIND[job]])["value"].to_numpy()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if not len(eps):
            raise RuntimeError(f"{n}-process {job} logged no examples_per_s")
        rows.append({"case": f"{job}: {n} process{'es' if n > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}",
                     "job": job, "processes": n, "threads_per_process": threads, "examples_per_s": float(np.median(eps)),
                     "epochs": len(eps), "wall_s": wall})
    for r in rows:
        r["speedup"] = r["examples_per_s"] / rows[0]["examples_per_s"]
    return rows
