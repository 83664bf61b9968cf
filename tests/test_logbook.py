import json
import subprocess
import sys
import textwrap
import time

import duckdb
import pandas as pd
import pytest

from workbench.logbook import INTERACTIVE, Logbook, LogbookBusy, LogbookCorrupt, code_version

from .conftest import garbage, held


def test_run_lifecycle_and_buffered_metrics(tmp_path):
    lb = Logbook(tmp_path / "lb.duckdb")
    with lb.run("train", {"lr": 0.1}, seed=7, flush_rows=10_000, flush_seconds=3600) as run:
        for step in range(50):
            run.log(step, stage=2, loss=1 / (step + 1), acc=step / 50)
        assert not (tmp_path / "lb.duckdb").exists() or lb.query("SELECT count(*) n FROM metrics")["n"][0] == 0  # buffered
        run.log_eval("recall", 0.5, k=10, dataset="dev", method="gen", stage=2)
        run.log_bench("beam", "latency_ms", 3.2, unit="ms", case_name="w64", params={"width": 64})
    r = lb.query("SELECT * FROM runs").iloc[0]
    assert r["status"] == "finished" and r["seed"] == 7 and json.loads(r["config"]) == {"lr": 0.1}
    assert r["ended_at"] >= r["started_at"] and r["code_version"] == code_version()
    m = lb.query("SELECT stage, count(*) n, min(value) lo FROM metrics WHERE name = 'loss' GROUP BY stage")
    assert m["stage"].tolist() == ["2"] and m["n"][0] == 50 and m["lo"][0] == pytest.approx(1 / 50)
    assert lb.query("SELECT value FROM evals")["value"][0] == 0.5
    assert json.loads(lb.query("SELECT params FROM bench")["params"][0]) == {"width": 64}


def test_failed_and_interrupted_runs_are_marked(tmp_path):
    lb = Logbook(tmp_path / "lb.duckdb")
    with pytest.raises(RuntimeError), lb.run("train") as run:
        run.log(0, loss=1.0)
        raise RuntimeError("diverged")
    with pytest.raises(KeyboardInterrupt), lb.run("train"):
        raise KeyboardInterrupt
    runs = lb.query("SELECT status, error FROM runs ORDER BY started_at")
    assert runs["status"].tolist() == ["failed", "interrupted"] and "diverged" in runs["error"][0]
    assert lb.query("SELECT count(*) n FROM metrics")["n"][0] == 1  # what was logged before the error is kept


CHILD = textwrap.dedent("""
    import os, sys, time
    from workbench.logbook import Logbook
    lb = Logbook(sys.argv[1])
    with lb.run("train", flush_rows=100, flush_seconds=0.05) as run:
        for step in range(int(sys.argv[2])):
            run.log(step, stage=1, loss=1.0 / (step + 1))
            time.sleep(0.001)
        if sys.argv[3] == "crash":
            run.flush()
            os._exit(1)  # killed: no cleanup, the run stays 'running'
""")


def test_crash_leaves_readable_file_with_unfinished_run(tmp_path):
    path = tmp_path / "lb.duckdb"
    p = subprocess.run([sys.executable, "-c", CHILD, str(path), "300", "crash"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    lb = Logbook(path)
    r = lb.query("SELECT status, ended_at, heartbeat_at FROM runs").iloc[0]
    assert r["status"] == "running" and pd.isna(r["ended_at"])
    assert lb.query("SELECT count(*) n FROM metrics")["n"][0] == 300
    assert lb.mark_crashed() == 1  # its process is gone
    assert lb.query("SELECT status FROM runs")["status"][0] == "crashed"


@pytest.mark.slow
def test_reader_reads_while_another_process_writes(tmp_path):
    path = tmp_path / "lb.duckdb"
    writer = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "3000", "ok"], stderr=subprocess.PIPE, text=True)
    lb = Logbook(path, lock_timeout=60)
    seen, reads, deadline = [], 0, time.monotonic() + 120
    while writer.poll() is None and time.monotonic() < deadline:
        if path.exists():
            try:
                seen.append(int(lb.query("SELECT count(*) n FROM metrics")["n"][0]))
                reads += 1
            except duckdb.CatalogException:
                pass  # the writer has not created the tables yet
        time.sleep(0.02)
    assert writer.wait(timeout=60) == 0, writer.stderr.read()
    assert reads >= 5 and seen == sorted(seen)  # many reads during the write, counts only grow
    assert any(0 < n < 3000 for n in seen)  # it saw rows before the run ended
    assert lb.query("SELECT count(*) n FROM metrics")["n"][0] == 3000
    assert lb.query("SELECT status FROM runs")["status"][0] == "finished"


def test_user_sql_is_read_only_and_sandboxed(tmp_path):
    lb = Logbook(tmp_path / "lb.duckdb")
    with lb.run("x"):
        pass
    with pytest.raises(duckdb.Error, match="read-only"):
        lb.query("DELETE FROM runs", safe=True)
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        lb.query(f"SELECT * FROM read_csv('{__file__}')", safe=True)
    assert len(lb.query("SELECT * FROM runs", safe=True)) == 1


def test_missing_logbook_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing has been logged"):
        Logbook(tmp_path / "none.duckdb").query("SELECT 1")


def test_a_busy_logbook_is_reported_within_seconds(tmp_path):
    lb = Logbook(tmp_path / "lb.duckdb")
    with lb.run("x"):
        pass
    with held(lb.path) as pid:
        for read in (lambda: lb.query("SELECT * FROM runs", timeout=INTERACTIVE),
                     lambda: lb.head("SELECT * FROM runs", 10, safe=True, timeout=INTERACTIVE),
                     lambda: lb.serve("mug", [], 1.0, timeout=0.5)):
            t = time.monotonic()
            with pytest.raises(LogbookBusy, match=rf"the logbook {lb.path} is busy: another process \(pid {pid}\), e.g. a training run"):
                read()
            assert time.monotonic() - t < 5
    assert len(lb.query("SELECT * FROM runs", timeout=INTERACTIVE)) == 1  # free again once the holder is gone


def test_a_garbage_logbook_is_named_not_a_duckdb_traceback(tmp_path):
    lb = Logbook(tmp_path / "lb.duckdb")
    garbage(lb.path)
    for use in (lambda: lb.query("SELECT 1"), lambda: lb.head("SELECT 1", 5), lambda: lb.run("x").__enter__(),
                lambda: lb.serve("mug", [], 1.0)):
        with pytest.raises(LogbookCorrupt, match=rf"{lb.path} is not a DuckDB logbook: .*not a valid DuckDB database file"):
            use()


def test_head_fetches_only_the_rows_it_returns(tmp_path):
    lb = Logbook(tmp_path / "lb.duckdb")
    with lb.run("x"):
        pass
    t = time.monotonic()
    df, more = lb.head("SELECT * FROM range(200000000)", 1000, safe=True)  # materialised: 1.6 GB, seconds
    assert time.monotonic() - t < 1.5 and len(df) == 1000 and more and df["range"].tolist() == list(range(1000))
    df, more = lb.head("SELECT kind, started_at FROM runs", 1000, safe=True)
    assert not more and df.values.tolist()[0][0] == "x" and list(df.columns) == ["kind", "started_at"]
    assert lb.head("SELECT 1 AS a WHERE false", 5)[0].columns.tolist() == ["a"]
    with pytest.raises(duckdb.Error, match="read-only"):
        lb.head("DELETE FROM runs", 5, safe=True)
    with pytest.raises(duckdb.Error, match="disabled by configuration"):
        lb.head(f"SELECT * FROM read_csv('{__file__}')", 5, safe=True)
    for empty in ("", "  ", "/* nothing */"):
        with pytest.raises(ValueError, match="no SQL statement"):
            lb.head(empty, 5, safe=True)
        with pytest.raises(ValueError, match="no SQL statement"):
            lb.query(empty)


def test_served_queries(tmp_path):
    lb = Logbook(tmp_path / "lb.duckdb")
    lb.serve("red mug", [{"sid": [1, 2, 3], "products": ["a"]}], latency_ms=4.5, user_id="u1", beam_width=8)
    row = lb.query("SELECT * FROM served").iloc[0]
    assert row["query"] == "red mug" and row["n_results"] == 1 and json.loads(row["results"])[0]["sid"] == [1, 2, 3]


def test_merge_copies_other_runs_once(tmp_path):
    here, there = Logbook(tmp_path / "here.duckdb"), Logbook(tmp_path / "gpu.duckdb")
    with here.run("train", {"a": 1}) as run:
        run.log(1, loss=2.0)
    with there.run("bench", {"b": 2}) as run:
        run.log(1, stage="1-items", loss=1.0)
        run.log_eval("recall", 0.4, k=10, method="gen")
        run.log_bench("beam-speed", "s_per_batch", 0.015, case_name="ours", device="NVIDIA H100")
    assert here.merge(there.path) == {"runs": 1, "metrics": 1, "evals": 1, "bench": 1, "served": 0}
    assert here.merge(there.path) == {"runs": 0, "metrics": 0, "evals": 0, "bench": 0, "served": 0}  # idempotent
    got = here.query("SELECT r.kind, b.device, b.value FROM bench b JOIN runs r USING (run_id)")
    assert got.values.tolist() == [["bench", "NVIDIA H100", 0.015]]
    assert here.query("SELECT count(*) n FROM runs")["n"][0] == 2


def test_merge_bad_inputs(tmp_path):
    lb = Logbook(tmp_path / "lb.duckdb")
    with pytest.raises(FileNotFoundError, match="no logbook"):
        lb.merge(tmp_path / "missing.duckdb")
    (tmp_path / "junk.duckdb").write_text("not a database")
    with pytest.raises(ValueError, match="not a DuckDB logbook"):
        lb.merge(tmp_path / "junk.duckdb")
    duckdb.connect(str(tmp_path / "other.duckdb")).execute("CREATE TABLE t (x INT)").close()
    with pytest.raises(ValueError, match="no runs table"):
        lb.merge(tmp_path / "other.duckdb")
    with pytest.raises(ValueError, match="itself"):
        lb.merge(lb.path)
    assert lb.query("SELECT count(*) n FROM runs")["n"][0] == 0


def test_user_sql_is_bounded_in_memory_cells_and_bytes(tmp_path, monkeypatch):
    """A person's SQL runs under DuckDB's memory limit with the configuration locked, and what comes back is
    cut per cell (text, blobs, nested values) and per result (`SELECT repeat('x', 1e9)` printed 2 GB)."""
    from workbench import logbook

    lb = Logbook(tmp_path / "lb.duckdb")
    with lb.run("x"):
        pass
    for sql in ("SET memory_limit = '100GB'", "RESET memory_limit", "SET lock_configuration = false"):
        with pytest.raises(duckdb.Error, match="locked"):
            lb.head(sql, 5, safe=True)
    assert lb.head("SELECT current_setting('memory_limit') AS m", 1, safe=True)[0]["m"][0].replace(" ", "") in ("1.8GiB", "1.9GiB", "2.0GB", "2GB", "1.8GB")
    cap = logbook.USER_CELL
    df, more = lb.head(f"SELECT repeat('x', {10 * cap}) AS s, 7 AS s, [repeat('y', {2 * cap})] AS l, "
                       f"repeat('z', {3 * cap})::BLOB AS b, 1.5 AS f", 5, safe=True)
    assert not more and list(df.columns) == ["s", "s", "l", "b", "f"]
    row = df.iloc[0].tolist()
    assert row[0] == "x" * cap and row[1] == 7 and row[2].startswith("[yyy") and len(row[2]) == cap
    assert row[3] == b"z" * cap and float(row[4]) == 1.5
    monkeypatch.setattr(logbook, "USER_BYTES", 5 * cap)  # two rows of 2 x cap fit, the third does not
    df, more = lb.head(f"SELECT repeat('a', {cap}) AS a, repeat('b', {cap}) AS b FROM range(10)", 100, safe=True)
    assert len(df) == 2 and more
    assert lb.head("SELECT 1 AS one", 5, safe=True)[0]["one"].tolist() == [1]


def test_a_hold_across_run_boundaries_is_waited_out_not_fatal(tmp_path, monkeypatch):
    """`train` used to abort when the logbook was held for the lock timeout at a stage boundary (the end of
    one stage's run, the start of the next): now the work goes on, the rows wait, and the next write (or
    the process's exit) writes them, whole and in one transaction."""
    from workbench import logbook

    monkeypatch.setattr(logbook, "_LATE", {})  # this process's late runs of other tests' logbooks are not this test's
    lb = Logbook(tmp_path / "lb.duckdb", lock_timeout=0.5)
    with lb.run("setup"):
        pass
    with held(lb.path):
        with lb.run("stage-1", {"s": 1}) as one:  # starts while held: its row waits
            one.log(0, loss=1.0)
        with lb.run("stage-2") as two:  # one ended while held: its rows wait for two's first write, or exit
            two.log(0, loss=0.5)
            assert two.run_id and one.run_id
        assert len(logbook._LATE[str(lb.path.resolve())]) == 2
    with lb.run("stage-3") as three:  # free again: the late runs are written with this one's first write
        three.log(0, loss=0.25)
    assert not logbook._LATE.get(str(lb.path.resolve()))
    runs = lb.query("SELECT kind, status, ended_at IS NOT NULL AS ended FROM runs ORDER BY started_at")
    assert runs.values.tolist() == [["setup", "finished", True], ["stage-1", "finished", True],
                                    ["stage-2", "finished", True], ["stage-3", "finished", True]]
    loss = lb.query("SELECT r.kind, m.value FROM metrics m JOIN runs r USING (run_id) ORDER BY r.started_at")
    assert loss.values.tolist() == [["stage-1", 1.0], ["stage-2", 0.5], ["stage-3", 0.25]]
    with held(lb.path):  # and at exit: write_late waits for the logbook, or says what it could not write
        with lb.run("last") as last:
            last.log(0, loss=0.1)
        assert logbook.write_late(timeout=0.5) == 1
    assert logbook.write_late(timeout=5) == 0 and lb.query("SELECT status FROM runs WHERE kind = 'last'")["status"].tolist() == ["finished"]
    with held(lb.path):  # a logbook that can never take them (damaged meanwhile): said once, then dropped, no traceback
        with lb.run("lost"):
            pass
    garbage(lb.path)
    assert logbook.write_late(timeout=0.5) == 1 and logbook.write_late(timeout=0.5) == 0
