"""The logbook: one DuckDB file per workspace recording every run, curve, eval, benchmark and query.

Tables (query them with `workbench sql "..."` or `Logbook.query`):
    runs     one row per run: run_id, kind, name, config (JSON), seed, code_version, started_at,
             ended_at, heartbeat_at, status (running | finished | failed | interrupted | crashed),
             error, host, pid
    metrics  run_id, stage, step, name, value, time        training curves, one value per row
    evals    run_id, stage, dataset, method, metric, k, value, time
    bench    run_id, bench, case_name, params (JSON), metric, value, unit, device, time
    served   time, run_id, query, user_id, beam_width, latency_ms, n_results, results (JSON), source

Concurrency. DuckDB lets one process hold a database file for writing and never lets another read
it meanwhile, so nothing here keeps a connection open: every write (a buffered batch) and every read
opens the file, does its work and closes it, retrying while another process holds the lock. A
training process therefore never blocks the app for longer than one batch insert, and the app's
queries see every row flushed so far. Within one process a lock serialises connections (DuckDB
refuses a read-only and a read-write connection to one file in one process at the same time).
Writers wait up to `lock_timeout` (30 s); what a person waits on (the app, `workbench sql`) passes
`timeout=INTERACTIVE` and hears within seconds that another process holds the file (`LogbookBusy`).
A file that is not a DuckDB database is a `LogbookCorrupt` naming it, not a DuckDB traceback.

Tags. `with tagged(recipe=...):` adds its keys to the config of every run started inside it (the
CLI tags each command's runs with the named recipe it ran, so a curve can be traced to its settings).

Crash safety. A run's row is written as `running` when it starts and updated with a heartbeat at
every flush; its end sets `finished`, `failed` or `interrupted`. A process killed outright leaves
`running` behind (and at most one flush interval of metrics unwritten); the next writer on the same
host marks runs whose process is gone as `crashed`.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import version
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, kind VARCHAR, name VARCHAR, config JSON, seed BIGINT,
    code_version VARCHAR, started_at TIMESTAMPTZ, ended_at TIMESTAMPTZ, heartbeat_at TIMESTAMPTZ,
    status VARCHAR, error VARCHAR, host VARCHAR, pid INTEGER);
CREATE TABLE IF NOT EXISTS metrics (
    run_id VARCHAR, stage VARCHAR, step BIGINT, name VARCHAR, value DOUBLE, time TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS evals (
    run_id VARCHAR, stage VARCHAR, dataset VARCHAR, method VARCHAR, metric VARCHAR, k INTEGER,
    value DOUBLE, time TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS bench (
    run_id VARCHAR, bench VARCHAR, case_name VARCHAR, params JSON, metric VARCHAR, value DOUBLE,
    unit VARCHAR, device VARCHAR, time TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS served (
    time TIMESTAMPTZ, run_id VARCHAR, query VARCHAR, user_id VARCHAR, beam_width INTEGER,
    latency_ms DOUBLE, n_results INTEGER, results JSON, source VARCHAR);
"""
COLUMNS = {
    "metrics": ["run_id", "stage", "step", "name", "value", "time"],
    "evals": ["run_id", "stage", "dataset", "method", "metric", "k", "value", "time"],
    "bench": ["run_id", "bench", "case_name", "params", "metric", "value", "unit", "device", "time"],
    "served": ["time", "run_id", "query", "user_id", "beam_width", "latency_ms", "n_results", "results", "source"],
}
_TAGS: ContextVar[dict | None] = ContextVar("logbook_tags", default=None)
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()


@contextmanager
def tagged(**tags):
    """Every run started inside this block records `tags` in its config (keys the run sets itself win)."""
    token = _TAGS.set({**(_TAGS.get() or {}), **tags})
    try:
        yield
    finally:
        _TAGS.reset(token)


def now() -> datetime:
    return datetime.now(UTC)


@cache
def code_version() -> str:
    """Package version plus the git commit (with +dirty) when run from a checkout."""
    release = version("workbench")
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return release
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        return f"{release}+g{sha.stdout.strip()}" + (".dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return release


def _jsonable(x):
    """Dataclass configs (also inside dicts and lists) as plain dicts, so `runs.config` is queryable JSON."""
    if is_dataclass(x) and not isinstance(x, type):
        return asdict(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _insert(con, table: str, rows: list[dict]) -> None:
    df = pd.DataFrame(rows, columns=COLUMNS[table])
    con.register("_rows", df)
    cols = ", ".join(COLUMNS[table])
    con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _rows")
    con.unregister("_rows")


def _result(cur, sql: str):
    """DuckDB returns None for SQL with no statement in it (empty, or only a comment)."""
    if cur is None:
        raise ValueError(f"no SQL statement to run in {sql!r}")
    return cur


def _columns(con, table: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]


INTERACTIVE = 2.0  # seconds a person's read (the app, `workbench sql`) waits for a busy logbook
USER_MEMORY = "2GB"  # DuckDB's memory limit for SQL a person types (the configuration is locked)
USER_CELL = 10_000  # characters (bytes of a blob) of one cell of that SQL's result; longer ones are cut
USER_BYTES = 64_000_000  # bytes of that result, about; the rows past it are not returned ("more")


def _capped(i: int, duck_type: str) -> str:
    """Column `#i` of a person's query, cut to USER_CELL: text and blobs as they are, nested values as text."""
    if duck_type == "VARCHAR":
        return f"left(#{i}, {USER_CELL})"
    if duck_type == "BLOB":
        return f"#{i}[1:{USER_CELL}]"
    if any(k in duck_type for k in ("[]", "STRUCT", "MAP", "UNION", "JSON", "[")):
        return f"left(CAST(#{i} AS VARCHAR), {USER_CELL})"
    return f"#{i}"


_LATE: dict[str, list] = {}  # logbook file -> runs of this process whose last write found it busy (Run.__exit__)
LATE_WAIT = 600.0  # seconds a process waits at exit to write its late runs


@atexit.register
def write_late(timeout: float | None = None) -> int:
    """At exit (or when called): write every late run, waiting up to LATE_WAIT for each logbook; returns
    the runs still unwritten (their rows are lost, and stderr says so)."""
    left = 0
    for key, runs in list(_LATE.items()):
        if not runs:
            continue
        try:
            runs[-1].flush(timeout=LATE_WAIT if timeout is None else timeout)
        except (LogbookBusy, LogbookCorrupt, duckdb.Error, OSError) as e:
            if not isinstance(e, LogbookBusy):  # it can never take them: said once, then dropped
                _LATE.pop(key)
            left += len(runs)
            print(f"workbench: {len(runs)} run(s) not written to {key}: {e}", file=sys.stderr)
    return left


class LogbookBusy(TimeoutError):
    """Another process (e.g. a training run) held the logbook for the whole timeout."""


class LogbookCorrupt(ValueError):
    """The logbook file is not a DuckDB database."""


def _open_error(path: Path, e: duckdb.Error) -> Exception:
    """What a failed `duckdb.connect` means, as an error naming the file."""
    msg = str(e)
    if isinstance(e, duckdb.SerializationException) or "not a valid duckdb" in msg.lower():
        return LogbookCorrupt(f"{path} is not a DuckDB logbook: {msg} (move it aside; the next run starts a new one)")
    if "permission denied" in msg.lower():
        return PermissionError(f"cannot open the logbook {path}: {msg}")
    return OSError(f"cannot open the logbook {path}: {msg}")


class Logbook:
    LOCK_TIMEOUT = 30.0  # seconds a write (or a read without a timeout) waits while another process holds the file

    def __init__(self, path: str | Path, lock_timeout: float | None = None):
        self.path = Path(path)
        self.lock_timeout = self.LOCK_TIMEOUT if lock_timeout is None else lock_timeout
        with _LOCKS_GUARD:
            self._lock = _LOCKS.setdefault(str(self.path.resolve()), threading.RLock())

    # connections ----------------------------------------------------------------------------
    @contextmanager
    def connect(self, read_only: bool = False, timeout: float | None = None, external_access: bool = True,
                limits: bool = False):
        """A short-lived connection; waits (with jittered backoff) while another process holds the file.
        `limits`: DuckDB's memory limit for a person's SQL, with the configuration locked."""
        if read_only and not self.path.exists():
            raise FileNotFoundError(f"no logbook at {self.path}: nothing has been logged in this workspace yet")
        timeout = self.lock_timeout if timeout is None else timeout
        config = {} if external_access else {"enable_external_access": False}
        if limits:
            config.update(memory_limit=USER_MEMORY, lock_configuration=True)
        with self._lock:
            deadline, wait = time.monotonic() + timeout, 0.005
            while True:
                try:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    con = duckdb.connect(str(self.path), read_only=read_only, config=config)
                    break
                except duckdb.Error as e:
                    if "lock" not in str(e).lower():
                        raise _open_error(self.path, e) from e
                    if time.monotonic() > deadline:
                        pid = re.search(r"PID (\d+)", str(e))
                        raise LogbookBusy(f"the logbook {self.path} is busy: another process{f' (pid {pid[1]})' if pid else ''}, "
                                          f"e.g. a training run, held it for {timeout:g} s; try again when it is done") from e
                    time.sleep(wait * (0.5 + random.random()))
                    wait = min(wait * 2, 0.25)
            try:
                if not read_only:
                    con.execute(SCHEMA)
                yield con
            finally:
                con.close()

    # reading --------------------------------------------------------------------------------
    def query(self, sql: str, params: list | None = None, safe: bool = False, timeout: float | None = None) -> pd.DataFrame:
        """Run SQL on a read-only connection and return a DataFrame.

        `safe=True` (for SQL typed by a user) also forbids reading files or the network from SQL;
        `timeout`: seconds to wait while another process holds the file (default `lock_timeout`).
        """
        with self.connect(read_only=True, timeout=timeout, external_access=not safe) as con:
            return _result(con.execute(sql, params or []), sql).df()

    def head(self, sql: str, n: int, params: list | None = None, safe: bool = False,
             timeout: float | None = None) -> tuple[pd.DataFrame, bool]:
        """The first `n` rows of `sql`'s result and whether there were more: rows are fetched from the
        cursor, so `SELECT * FROM range(1e9)` reads n + 1 rows, not a billion (as `query`, otherwise).

        `safe=True` (SQL typed by a person: the app's SQL page, `workbench sql`) also runs under DuckDB's
        `memory_limit` (USER_MEMORY) with the configuration locked (no `SET memory_limit`), cuts every
        text, binary or nested cell to USER_CELL characters (in the query, before it reaches Python) and
        stops at USER_BYTES of result, reporting `more`. DuckDB still builds a value a query asks for (a
        `repeat('x', 1e9)` takes its gigabytes while it runs); what comes back is bounded."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        with self.connect(read_only=True, timeout=timeout, external_access=not safe, limits=safe) as con:
            if not safe:
                cur = _result(con.execute(sql, params or []), sql)
                if cur.description is None:
                    return pd.DataFrame(), False
                rows = cur.fetchmany(n + 1)
                return pd.DataFrame.from_records(rows[:n], columns=[d[0] for d in cur.description]), len(rows) > n
            rel = _result(con.sql(sql, params=params or None), sql)
            cols, types = rel.columns, [str(t) for t in rel.types]
            rows = rel.project(", ".join(_capped(i + 1, t) for i, t in enumerate(types))).limit(n + 1).fetchall()
            size = np.cumsum([sum(len(v) if isinstance(v, str | bytes) else 8 for v in r) for r in rows[:n]])
            keep = int(np.searchsorted(size, USER_BYTES, "right"))  # the rows within USER_BYTES
            return pd.DataFrame.from_records(rows[:keep], columns=cols), len(rows) > keep

    # writing --------------------------------------------------------------------------------
    def insert(self, table: str, rows: list[dict], timeout: float | None = None) -> None:
        if rows:
            with self.connect(timeout=timeout) as con:
                _insert(con, table, rows)

    def merge(self, other: str | Path) -> dict[str, int]:
        """Copy the runs of another logbook (one written on a GPU machine or another host) and their
        metrics, evals, bench rows and served queries into this one, in one transaction. Runs already
        here are skipped, so merging twice changes nothing. Returns rows added per table."""
        other = Path(other)
        if not other.exists():
            raise FileNotFoundError(f"no logbook at {other}")
        if other.resolve() == self.path.resolve():
            raise ValueError("a logbook cannot be merged into itself")
        with self.connect() as con:
            try:
                con.execute("ATTACH ? AS other (READ_ONLY)", [str(other)])
            except duckdb.Error as e:
                raise ValueError(f"{other} is not a DuckDB logbook: {e}") from e
            have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = 'other'").fetchall()}
            if "runs" not in have:
                raise ValueError(f"{other} is not a workbench logbook (no runs table)")
            added = {}
            con.execute("BEGIN")
            con.execute("CREATE TEMP TABLE _new AS SELECT run_id FROM other.runs EXCEPT SELECT run_id FROM runs")
            for table in ["runs", *COLUMNS]:
                if table not in have:
                    continue
                cols = ", ".join(_columns(con, table))
                n = con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM other.{table} "
                                "WHERE run_id IN (SELECT run_id FROM _new)").fetchone()[0]
                added[table] = int(n)
            con.execute("COMMIT")
            con.execute("DETACH other")
        return added

    def serve(self, query: str, results: list, latency_ms: float, user_id: str | None = None,
              beam_width: int | None = None, run_id: str | None = None, source: str = "app",
              timeout: float | None = None) -> None:
        """Record one served query (the app calls this; the HTTP service writes batches with `serve_many`)."""
        self.serve_many([{"time": now(), "run_id": run_id, "query": query, "user_id": user_id, "beam_width": beam_width,
                          "latency_ms": latency_ms, "results": results, "source": source}], timeout=timeout)

    def serve_many(self, rows: list[dict], timeout: float | None = None) -> None:
        """Record served queries in one write; each row: time, query, user_id, beam_width, latency_ms,
        results (a list, stored as JSON), source, and optionally run_id."""
        self.insert("served", [{
            "time": r["time"], "run_id": r.get("run_id"), "query": r["query"], "user_id": r["user_id"], "beam_width": r["beam_width"],
            "latency_ms": float(r["latency_ms"]), "n_results": len(r["results"]), "results": json.dumps(r["results"]), "source": r["source"],
        } for r in rows], timeout=timeout)

    def mark_crashed(self) -> int:
        """Runs of this host still `running` whose process is gone become `crashed`; returns how many."""
        if not self.path.exists():
            return 0
        with self.connect() as con:
            rows = con.execute("SELECT run_id, pid FROM runs WHERE status = 'running' AND host = ?", [socket.gethostname()]).fetchall()
            dead = [r for r, pid in rows if pid is not None and pid != os.getpid() and not _pid_alive(pid)]
            for r in dead:
                con.execute("UPDATE runs SET status = 'crashed', error = 'process ended without closing the run' WHERE run_id = ?", [r])
        return len(dead)

    def run(self, kind: str, config=None, seed: int | None = None, name: str | None = None, **kw) -> Run:
        """Start a run: `with logbook.run("sid-train", cfg, seed=0) as run: run.log(step, loss=...)`."""
        return Run(self, kind, config, seed, name, **kw)

    def __repr__(self) -> str:
        return f"Logbook({str(self.path)!r})"


class Run:
    """One run's buffered writer. Use as a context manager; `log` is cheap (appends to a buffer)."""

    def __init__(self, logbook: Logbook, kind: str, config=None, seed=None, name=None,
                 flush_rows: int = 5000, flush_seconds: float = 5.0):
        self.logbook, self.kind, self.name = logbook, kind, name or kind
        self.config = _jsonable(config) if config is not None else {}
        if _TAGS.get() and isinstance(self.config, dict):
            self.config = {**_TAGS.get(), **self.config}
        self.seed = seed
        self.run_id = f"{kind}-{now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._buf: dict[str, list[dict]] = {k: [] for k in COLUMNS}
        self._last_flush = time.monotonic()
        self._open = False
        self._inserted, self._final, self._started = False, None, now()  # the run's row is written by its first flush

    def __enter__(self) -> Run:
        """Record the run as `running`. A logbook held past the lock timeout (a notebook, the app) does not
        stop the work: the run's row waits in the buffer and is written by its first write that gets in."""
        self._started = now()
        try:
            self.logbook.mark_crashed()
            self.flush()
        except LogbookBusy:
            pass
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Record how the run ended. Still busy after the lock timeout (a stage boundary under a long read):
        the rows wait for the next write to this logbook by this process (the next stage's run) or its exit."""
        if exc_type is None:
            status, error = "finished", None
        elif issubclass(exc_type, KeyboardInterrupt):
            status, error = "interrupted", "KeyboardInterrupt"
        else:
            status, error = "failed", f"{exc_type.__name__}: {exc}"
        try:
            self.flush(status=status, error=error, ended=True)
        except LogbookBusy as e:
            _LATE.setdefault(str(self.logbook.path.resolve()), []).append(self)
            print(f"workbench: {e}; run {self.run_id}'s last rows are kept and written at the next chance", file=sys.stderr)
        self._open = False

    # logging --------------------------------------------------------------------------------
    def log(self, step: int, stage: str | int | None = None, **values: float) -> None:
        """Metrics at one step: run.log(120, stage=2, loss=0.31, lr=3e-4)."""
        t = now()
        stage = None if stage is None else str(stage)
        self._buf["metrics"].extend(
            {"run_id": self.run_id, "stage": stage, "step": int(step), "name": k, "value": float(v), "time": t}
            for k, v in values.items()
        )
        self._maybe_flush()

    def log_eval(self, metric: str, value: float, k: int | None = None, dataset: str | None = None,
                 method: str | None = None, stage: str | int | None = None) -> None:
        self._buf["evals"].append({
            "run_id": self.run_id, "stage": None if stage is None else str(stage), "dataset": dataset,
            "method": method, "metric": metric, "k": k, "value": float(value), "time": now(),
        })
        self._maybe_flush()

    def log_bench(self, bench: str, metric: str, value: float, unit: str | None = None, case_name: str | None = None,
                  params: dict | None = None, device: str | None = None) -> None:
        self._buf["bench"].append({
            "run_id": self.run_id, "bench": bench, "case_name": case_name, "params": json.dumps(params or {}, default=str),
            "metric": metric, "value": float(value), "unit": unit, "device": device, "time": now(),
        })
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        n = sum(len(b) for b in self._buf.values())
        if n >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            try:
                self.flush(timeout=1.0)
            except LogbookBusy:
                pass  # a reader holds the file: keep buffering, try again at the next log call

    def flush(self, status: str | None = None, error: str | None = None, ended: bool = False,
              timeout: float | None = None) -> None:
        """Write buffered rows and the heartbeat in one transaction (and first any run of this process whose
        last write found the logbook busy)."""
        t = now()
        if status is not None:
            self._final = (status, error, t if ended else None)
        key = str(self.logbook.path.resolve())
        late = [r for r in _LATE.get(key, []) if r is not self]
        with self.logbook.connect(timeout=timeout) as con:
            con.execute("BEGIN TRANSACTION")
            for r in late:
                r._write(con, t)
            self._write(con, t)
            con.execute("COMMIT")
        for r in late:
            r._written()
        if key in _LATE:
            _LATE[key] = [r for r in _LATE[key] if r not in late and r is not self]
        self._written()

    def _write(self, con, t) -> None:
        if not self._inserted:
            con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, 'running', NULL, ?, ?)",
                        [self.run_id, self.kind, self.name, json.dumps(self.config, default=str), self.seed,
                         code_version(), self._started, t, socket.gethostname(), os.getpid()])
        for table, rows in self._buf.items():
            if rows:
                _insert(con, table, rows)
        con.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", [t, self.run_id])
        if self._final is not None:
            status, error, ended = self._final
            con.execute("UPDATE runs SET status = ?, error = ? WHERE run_id = ?", [status, error, self.run_id])
            if ended is not None:
                con.execute("UPDATE runs SET ended_at = ? WHERE run_id = ?", [ended, self.run_id])

    def _written(self) -> None:
        self._inserted = True
        self._buf = {k: [] for k in COLUMNS}
        self._last_flush = time.monotonic()
