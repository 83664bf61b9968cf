"""What the recall channels cost under load (`workbench bench serve`).

For each server setting (a channel, dynamic batching on or off) it starts `workbench serve` on a free
port of 127.0.0.1 serving that channel alone (so it has the machine's cores to itself), warms it, and
puts locust's closed-loop load on it (`bench/locustfile.py`, in locust's own process): at each
concurrency in turn, for `seconds`, every user sending its next test query as soon as the last
is answered; for the generative channel at each beam width. Per point: requests, failures, throughput
and locust's p50/p95/p99 latency. Locust lets every user finish its request in flight when time is
up (`--stop-timeout`), so every request it counts was answered: after the server stops (and its
logger writes what it holds), the logbook's `served` rows of that server are compared with the
requests answered, and `lost_rows` is the difference.

`capacity` turns the curves into machines: for each channel, width and batching, the highest
throughput measured with p99 within a budget, and how many such machines a stated traffic needs.
Both the load generator and the server share this machine's cores: what the server would do alone
is higher.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from workbench import Workspace
from workbench.bench import launch
from workbench.embed import get_embedder
from workbench.gen.data import eval_set
from workbench.logbook import now
from workbench.service import ServeConfig
from workbench.sid.store import assign_new, workspace_embedder

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def start_server(workspace: Path, channel: str, max_batch: int, batch_wait_ms: float, workers: int = 1,
                 timeout: float = 300, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str, Path]:
    """`workbench serve` for `channel` (comma-separated for several) on a free port of 127.0.0.1, once
    /health answers ok. Returns the process, its URL and its log file; `launch.stop` stops it."""
    return launch.start(lambda port: [sys.executable, "-m", "workbench", "-w", str(workspace), "serve", "--port", str(port),
                                      "--channels", channel, "--max-batch", str(max_batch), "--batch-wait-ms",
                                      str(batch_wait_ms), "--workers", str(workers), *extra],
                        "/health", (b"ok", b'"ok"'), timeout=timeout)


def post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    """One JSON request; (status, parsed body) also for 4xx/5xx answers."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def locust(url: str, channel: str, users: int, seconds: float, queries: Path, width: int | None = None, k: int = 100) -> dict:
    """One closed-loop load point: requests, failures, throughput over the run (first request to last
    answer) and p50/p95/p99 from locust's final response-time histogram (its --json-file; the CSV
    snapshot can miss the last second)."""
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "WB_QUERIES": str(queries), "WB_CHANNEL": channel, "WB_WIDTH": str(width or ""), "WB_K": str(k)}
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", "-u", str(users), "-r", str(users),
               "-t", f"{seconds:g}s", "--stop-timeout", "60", "--host", url, "--json-file", f"{d}/load", "--csv", f"{d}/load",
               "--loglevel", "ERROR", "--exit-code-on-error", "0"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 180)
        stats = Path(f"{d}/load.json")
        if res.returncode != 0 or not stats.exists():
            raise RuntimeError(f"locust failed ({res.returncode}): {(res.stderr or res.stdout)[-2000:]}")
        entries = json.loads(stats.read_text())
        failures = Path(f"{d}/load_failures.csv")
        first = next(csv.DictReader(failures.open()), None) if failures.exists() else None
    if len(entries) != 1 or entries[0]["num_requests"] == 0:
        raise RuntimeError(f"locust sent no requests to /{channel}: {(res.stderr or res.stdout)[-2000:]}")
    e = entries[0]
    hist = sorted((float(ms), n) for ms, n in e["response_times"].items())  # locust's rounded buckets -> count
    cum, total = np.cumsum([n for _, n in hist]), sum(n for _, n in hist)
    pct = {p: hist[int(np.searchsorted(cum, p * total))][0] for p in (0.5, 0.95, 0.99)}
    span = max(e["last_request_timestamp"] - e["start_time"], 1e-9)
    return {"requests": e["num_requests"], "failures": e["num_failures"], "queries_per_s": e["num_requests"] / span,
            "p50_ms": pct[0.5], "p95_ms": pct[0.95], "p99_ms": pct[0.99], "first_failure": (first or {}).get("Error", "")}


def grow(ws, n: int, dst: Path, progress: bool = True):
    """A copy of workspace `ws` at `dst` whose catalog is grown to `n` products: its own, then tiled
    copies of them (`batch.tile_catalog`: own ids, a variant suffix in each title), which the trained
    SID model gives SIDs without retraining (`sid.store.assign_new`). The generator is the one trained
    on the original catalog, and decodes into the grown catalog's SIDs; its quality there is not the
    point, what a query costs is. Its logbook and cache are not copied. Kept, and reused when it already
    holds `n` products."""
    import shutil

    import pandas as pd
    import pyarrow.parquet as pq

    own = ws.table("products")
    if n <= len(own):
        raise ValueError(f"the catalog already has {len(own):,} products; grow it to more than that, not {n:,}")
    out = Workspace(dst)
    if out.exists() and out.has("products") and pq.ParquetFile(out.table_path("products")).metadata.num_rows == n:
        return out
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(ws.path, dst, ignore=shutil.ignore_patterns("cache", "logbook.duckdb*", "*.partial*"))
    idx = np.arange(len(own), n)
    extra = own.iloc[idx % len(own)].reset_index(drop=True)  # every column of the product copied, then made its own:
    extra["product_id"] = [f"G{i:08d}" for i in idx]
    extra["title"] = extra["title"].astype(str) + [f", variant {i // len(own)}" for i in idx]
    grown = pd.concat([own, extra], ignore_index=True)
    out.write_tables({"products": grown}, replace=True)
    assign_new(out, get_embedder(workspace_embedder(out)), progress=progress)
    return out


def served_rows(ws, source: str, since: str) -> int:
    return int(ws.logbook().query("SELECT count(*) AS n FROM served WHERE source = ? AND time >= ?", [source, since])["n"].iloc[0])


def load(ws, channels: tuple[str, ...], widths: tuple[int, ...], users: tuple[int, ...], seconds: float,
         batches: tuple[int, ...] = (ServeConfig.max_batch, 1), batch_wait_ms: float = ServeConfig.batch_wait_ms,
         query_dtype: str = ServeConfig.query_dtype, queries: int = 500, warm: int = 20, compiled: bool = False,
         progress=print) -> tuple[list[dict], list[dict]]:
    """The load points (one row each) and, per server, its logbook check (answered, logged, lost_rows).
    `compiled`: the generative server decodes through torch.compile (`serve --compiled`); before the
    measured points, each width is also warmed under the largest load (a few seconds, not counted), so
    the compiles of its batch shapes are not timed."""
    qs = list(dict.fromkeys(eval_set(ws, "test")["query"].astype(str)))[:queries] if ws.has("queries") else []
    if not qs:
        raise ValueError(f"workspace {ws.path} has no test queries to send")
    rows, checks = [], []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(qs, f)
    qpath = Path(f.name)
    try:
        for channel in channels:
            for max_batch in batches:
                since = now()
                fused = compiled and channel == "generative"
                proc, url, log = start_server(ws.path.resolve(), channel, max_batch, batch_wait_ms,
                                              extra=("--query-dtype", query_dtype, *(("--compiled",) if fused else ())))
                answered = 0
                try:
                    for i, q in enumerate(qs[:warm]):  # first requests pay for lazy loads and torch's first runs at each width
                        status, body = post(f"{url}/{channel}", {"query": q, "width": widths[i % len(widths)]} if channel == "generative" else {"query": q})
                        if status != 200:
                            raise RuntimeError(f"warm-up request to /{channel} answered {status}: {body}")
                    answered += warm
                    for width in widths if channel == "generative" else (0,):
                        if fused:  # the compiles of this width's batch shapes, under the largest load, not timed
                            r = locust(url, channel, max(users), min(seconds, 5), qpath, width)
                            answered += r["requests"] - r["failures"]
                        for u in users:
                            r = locust(url, channel, u, seconds, qpath, width or None)
                            answered += r["requests"] - r["failures"]
                            case = f"{channel}{f' w{width}' if width else ''}{' compiled' if fused else ''} batch {max_batch} c{u}"
                            rows.append({"case": case, "channel": channel, "width": width or None, "max_batch": max_batch,
                                         "users": u, **({"decode": "compiled"} if fused else {}), **r})
                            progress(f"  {case}: {r['queries_per_s']:.1f} q/s, p99 {r['p99_ms']:.0f} ms, {r['failures']} failures")
                finally:
                    code = launch.stop(proc)
                logged = served_rows(ws, f"api/{channel}", since)
                checks.append({"case": f"{channel} batch {max_batch}", "answered": answered, "logged": logged,
                               "lost_rows": answered - logged, "exit_code": code})
                log.unlink(missing_ok=True)
    finally:
        qpath.unlink(missing_ok=True)
    return rows, checks


def capacity(rows: list[dict], target_qps: float, budgets_ms: tuple[float, ...]) -> list[dict]:
    """Per latency budget, channel, width and batching: the best throughput measured with p99 within the
    budget and no failures, and how many machines like this one `target_qps` needs. A setting with no
    point within a budget has no row for it."""
    out = []
    for budget in budgets_ms:
        best: dict[tuple, dict] = {}
        for r in rows:
            if r["failures"] or r["p99_ms"] > budget:
                continue
            key = (r["channel"], r["width"], r.get("decode") == "compiled", r["max_batch"])
            if key not in best or r["queries_per_s"] > best[key]["queries_per_s"]:
                best[key] = r
        for (channel, width, fused, max_batch), r in best.items():
            out.append({"case": f"p99 <= {budget:g} ms: {channel}{f' w{width}' if width else ''}{' compiled' if fused else ''} batch {max_batch}",
                        "budget_ms": budget, "queries_per_s": r["queries_per_s"], "at_users": r["users"], "p99_ms": r["p99_ms"],
                        "machines": math.ceil(target_qps / r["queries_per_s"])})
    return out


def batching_gain(rows: list[dict]) -> list[dict]:
    """At each channel's, width's highest concurrency: dynamic batching's throughput over one request
    at a time (max_batch 1), and both p99s."""
    out = []
    for (channel, width) in dict.fromkeys((r["channel"], r["width"]) for r in rows):
        mine = [r for r in rows if r["channel"] == channel and r["width"] == width]
        top = max(r["users"] for r in mine)
        at = {r["max_batch"]: r for r in mine if r["users"] == top}
        if 1 not in at or len(at) < 2:
            continue
        b = max(k for k in at if k != 1)
        out.append({"case": f"{channel}{f' w{width}' if width else ''} c{top}", "batched_qps": at[b]["queries_per_s"],
                    "unbatched_qps": at[1]["queries_per_s"], "gain": at[b]["queries_per_s"] / max(at[1]["queries_per_s"], 1e-9),
                    "batched_p99_ms": at[b]["p99_ms"], "unbatched_p99_ms": at[1]["p99_ms"]})
    return out
