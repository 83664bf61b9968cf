"""Batch jobs at catalog scale: embed, assign SIDs and decode N synthetic products, chunk by chunk.

The catalog is the workspace's products repeated to N rows (each copy with its own id and a variant
suffix in the title), written in chunks. Each job runs as its own `workbench batch` process, so its
peak memory is its own; the figures come back from the run it logged. Bounded memory shows as a peak
that does not grow with N: compare two sizes in one call (`--n 100000,1000000`). With several process
counts (`procs`), each job runs once per count, under torchrun when more than one (chunks dealt out
round-robin, `workbench.batch`), the machine's cores split evenly between the processes: a row each,
its speed-up over the first count, and the peak memory of its largest process.
"""

from __future__ import annotations

import os
import subprocess

from workbench import dist
from workbench.batch import tile_catalog

JOBS = ("embed", "sids", "decode")


def job_args(job: str, src, out, embedder: str, width: int, top: int) -> list[str]:
    if job == "embed":
        return ["embed", str(src), str(out / "vectors.parquet"), "--embedder", embedder]
    if job == "sids":
        return ["sids", str(out / "vectors.parquet"), str(out / "sids.parquet"), "--vectors"]
    return ["decode", str(src), str(out / "decoded.parquet"), "--width", str(width), "--top", str(top)]


def scale(ws, n: int, width: int, jobs=JOBS, chunk: int = 65_536, embedder: str = "minilm", top: int = 5,
          device: str = "cpu", timeout: float = 7200, procs: tuple[int, ...] = (1,), cores: int | None = None) -> list[dict]:
    """One row per job and process count (decode at beam `width`): rows, seconds, rows/s, the peak memory
    of the job's (largest) process, its output's size and the speed-up over the first process count."""
    bad = set(jobs) - set(JOBS)
    if bad or ("sids" in jobs and "embed" not in jobs):
        raise ValueError(f"jobs are among {JOBS}, and sids reads what embed writes; got {list(jobs)}")
    if not procs or min(procs) < 1:
        raise ValueError(f"process counts must be >= 1, got {list(procs)}")
    cores = cores or os.cpu_count() or 1
    out = ws.cache_dir / "bench-batch" / f"n{n}"
    out.mkdir(parents=True, exist_ok=True)
    src = out / "products.parquet"
    if not src.exists():
        tile_catalog(ws.table("products"), n, src)
    rows = []
    for job in jobs:
        args = job_args(job, src, out, embedder, width, top)
        first = None
        for p in procs:
            threads = max(1, cores // p)
            cmd = dist.command(p, ["-w", str(ws.path), "batch", *args, "--chunk", str(chunk), "--device", device])
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **({"OMP_NUM_THREADS": str(threads)} if len(procs) > 1 else {})})
            if done.returncode != 0:
                raise RuntimeError(f"batch {job} on {p} process(es) failed:\n{(done.stdout + done.stderr)[-3000:]}")
            m = ws.logbook().query(
                "SELECT m.name, m.value FROM metrics m JOIN runs r USING (run_id) WHERE r.run_id = "
                "(SELECT run_id FROM runs WHERE name = ? ORDER BY started_at DESC LIMIT 1)", [f"batch {job}"])
            stats = dict(zip(m["name"], m["value"]))
            first = first or stats["rows_per_s"]
            split = {"threads_per_process": threads} if len(procs) > 1 else {}
            rows.append({"case": f"{job} {n:,}" + (f", {p} x {threads} threads" if split else ""), "job": job,
                         "products": int(stats["rows"]), "processes": p, **split, "seconds": stats["seconds"], "rows_per_s": stats["rows_per_s"], "speedup": stats["rows_per_s"] / first,
                         "peak_rss_mib": stats["peak_rss_mib"], "output_mib": os.path.getsize(args[2]) / 2**20, "chunk": chunk})
    return rows
