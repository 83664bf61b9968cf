"""Batch jobs at catalog scale: embed, assign SIDs and decode N synthetic products, chunk by chunk.

The catalog is the workspace's products repeated to N rows (each copy with its own id and a variant
suffix in the title), written in chunks. Each job runs as its own `workbench batch` process, so its
peak memory is its own; the figures come back from the run it logged. Bounded memory shows as a peak
that does not grow with N: compare two sizes in one call (`--n 100000,1000000`).
"""

from __future__ import annotations

import os
import subprocess
import sys

from workbench.batch import tile_catalog

JOBS = ("embed", "sids", "decode")


def job_args(job: str, src, out, embedder: str, width: int, top: int) -> list[str]:
    if job == "embed":
        return ["embed", str(src), str(out / "vectors.parquet"), "--embedder", embedder]
    if job == "sids":
        return ["sids", str(out / "vectors.parquet"), str(out / "sids.parquet"), "--vectors"]
    return ["decode", str(src), str(out / "decoded.parquet"), "--width", str(width), "--top", str(top)]


def scale(ws, n: int, width: int, jobs=JOBS, chunk: int = 65_536, embedder: str = "minilm", top: int = 5,
          device: str = "cpu", timeout: float = 7200) -> list[dict]:
    """One row per job (decode at beam `width`): rows, seconds, rows/s, the job process's peak memory and its
    output's size."""
    bad = set(jobs) - set(JOBS)
    if bad or ("sids" in jobs and "embed" not in jobs):
        raise ValueError(f"jobs are among {JOBS}, and sids reads what embed writes; got {list(jobs)}")
    out = ws.cache_dir / "bench-batch" / f"n{n}"
    out.mkdir(parents=True, exist_ok=True)
    src = out / "products.parquet"
    if not src.exists():
        tile_catalog(ws.table("products"), n, src)
    rows = []
    for job in jobs:
        args = job_args(job, src, out, embedder, width, top)
        cmd = [sys.executable, "-m", "workbench", "-w", str(ws.path), "batch", *args, "--chunk", str(chunk), "--device", device]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        if done.returncode != 0:
            raise RuntimeError(f"batch {job} failed:\n{(done.stdout + done.stderr)[-3000:]}")
        m = ws.logbook().query(
            "SELECT m.name, m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.run_id = "
            "(SELECT run_id FROM runs WHERE name = ? ORDER BY started_at DESC LIMIT 1)", [f"batch {job}"])
        stats = dict(zip(m["name"], m["value"]))
        rows.append({"case": f"{job} {n:,}", "job": job, "products": int(stats["rows"]), "seconds": stats["seconds"],
                     "rows_per_s": stats["rows_per_s"], "peak_rss_mib": stats["peak_rss_mib"],
                     "output_mib": os.path.getsize(args[2]) / 2**20, "chunk": chunk})
    return rows
