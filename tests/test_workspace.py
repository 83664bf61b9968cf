import pandas as pd
import pytest

from workbench import Workspace
from workbench.data.schema import DataError
from workbench.workspace import atomic_write


def test_roundtrip_and_validate_all(sample_ws):
    counts = sample_ws.validate_all()
    assert counts["products"] == 3000 and counts["search_log"] > 30000
    p = sample_ws.table("products")
    assert p["product_id"].is_unique


def test_nothing_written_when_one_table_is_bad(tmp_path):
    ws = Workspace(tmp_path / "w")
    good = pd.DataFrame({"product_id": ["a"], "title": ["x"]})
    bad = pd.DataFrame({"query_id": [1, 1], "query": ["q", "r"]})
    with pytest.raises(DataError, match="duplicate id"):
        ws.write_tables({"products": good, "queries": bad})
    assert not ws.has("products") and not ws.has("queries")


def test_references_checked_against_tables_already_there(tmp_path):
    ws = Workspace(tmp_path / "w")
    ws.write_tables({"products": pd.DataFrame({"product_id": ["a"], "title": ["x"]}),
                     "queries": pd.DataFrame({"query_id": [1], "query": ["q"]})})
    with pytest.raises(DataError, match="unknown product_id 'b'"):
        ws.write_tables({"judgments": pd.DataFrame({"query_id": [1], "product_id": ["b"], "relevance": [1.0]})})


def test_corrupt_table_is_a_clear_error(sample_ws):
    sample_ws.table_path("users").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="users.parquet: not a readable Parquet file"):
        sample_ws.table("users")


def test_missing_workspace_and_table(tmp_path):
    with pytest.raises(FileNotFoundError, match="no workspace at"):
        Workspace(tmp_path / "nope").require()
    with pytest.raises(FileNotFoundError, match="has no table 'users'"):
        Workspace(tmp_path).table("users")
    with pytest.raises(KeyError, match="unknown table"):
        Workspace(tmp_path).table("nonsense")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["f.txt"]


WRITERS = [  # every verb that writes a workspace, with arguments that parse (the lock refuses it before it reads them)
    ["data", "synth"], ["data", "import", "csv", "--products", __file__], ["data", "import", "lcrec", "--items", __file__],
    ["data", "pseudo"], ["sid", "train"], ["sid", "assign"], ["sid", "map"], ["train"], ["gen", "rank"], ["gen", "rank", "--out", "ranked"],
    ["deploy", "--repair"], ["ranker"], ["rl"], ["dense", "train"], ["demo", "--no-app"],
]


def holder(ws, seconds: float = 120):
    """A process that holds `ws`'s writer lock as `train` until it is killed; returns it once it holds it."""
    import subprocess
    import sys
    import time

    p = subprocess.Popen([sys.executable, "-c", "import sys, time; from workbench import Workspace\n"
                          f"with Workspace(sys.argv[1]).writer('train'):\n print('held', flush=True); time.sleep({seconds})",
                          str(ws.path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    time.sleep(0.1)
    return p


def test_one_writer_at_a_time_and_readers_pass(trained_copy):
    """With one writer at work, every other writing verb is refused at once, naming it, and writes nothing;
    readers go on; once the writer is gone (killed: the OS frees the lock), writers run again."""
    import time

    from click.testing import CliRunner

    from workbench.cli import main

    ws = trained_copy

    def files():
        return {p: p.stat().st_mtime_ns for p in ws.path.rglob("*") if p.is_file() and "logbook" not in p.name
                and p.name != ".writer.lock" and "cache" not in p.parts}

    before, p = files(), holder(ws)
    try:
        for verb in WRITERS:
            t = time.monotonic()
            r = CliRunner().invoke(main, ["-w", str(ws.path), *verb])
            assert r.exit_code == 1 and f"workspace {ws.path} is busy: `train` (pid {p.pid})" in r.output, (verb, r.output)
            assert time.monotonic() - t < 3 and "Traceback" not in r.output
        for reader in (["data", "validate"], ["gen", "search", "drill", "--width", "4"], ["sql", "SELECT 1 AS one"]):
            r = CliRunner().invoke(main, ["-w", str(ws.path), *reader])
            assert r.exit_code == 0, (reader, r.output)
        assert files() == before
    finally:
        p.kill()
        p.wait()
    r = CliRunner().invoke(main, ["-w", str(ws.path), "deploy", "--repair"])
    assert r.exit_code == 0 and "is sound" in r.output, r.output


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_two_writers_at_once_leave_a_workspace_that_agrees(trained_copy, seed):
    """`sid train` during `train` used to leave a generator trained on the old SIDs that validated ok. Two
    writers started together (in a seeded order, a seeded moment apart): the second is refused, or runs after
    the first ended; either way every artifact loads and is current at the end."""
    import subprocess
    import sys
    import time

    import numpy as np

    from workbench import pipeline

    ws, rng = trained_copy, np.random.default_rng(seed)
    a = [sys.executable, "-m", "workbench", "-w", str(ws.path), "train", "--stages", "3", "--epochs", "8", "--fresh",
         "--eval-width", "4"]
    b = [sys.executable, "-m", "workbench", "-w", str(ws.path), "sid", "train", "--embedder", "hashing-64", "--epochs", "60",
         "--codebook-sizes", "16,8,4"]
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    p = subprocess.Popen(first, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(rng.uniform(2.5, 4.0))  # the first is past its imports and holds the lock
    q = subprocess.run(second, capture_output=True, text=True, timeout=600)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-2000:]
    said = q.stdout + q.stderr
    assert q.returncode == 0 or "is busy" in said or "StaleError" in said, said[-2000:]  # refused, or the SIDs it needs changed
    bad = [r for r in pipeline.report(Workspace(ws.path)) if r["status"] in ("stale", "broken")]
    sid_trained = first is b or q.returncode == 0  # then the generators are stale against the new SIDs, and say so
    assert not bad or (sid_trained and all(r["artifact"].startswith(("gen/", "rl/")) for r in bad)), bad
    assert "is busy" in said  # the two overlapped: the second found the first writing


PAIRED = [  # every writing verb but `demo` (its build is a sequence of these under one lock), quick on `trained`
    ["data", "synth", "--products", "300", "--users", "40", "--sessions", "300", "--seed", "7", "--replace"],
    ["data", "import", "csv", "--products", "{csv}"], ["data", "import", "lcrec", "--items", "{items}", "--replace"],
    ["data", "pseudo", "--per-product", "1"], ["sid", "train", "--embedder", "hashing-64", "--epochs", "5", "--codebook-sizes", "16,8,4"],
    ["sid", "assign", "--embedder", "hashing-64"], ["sid", "map", "--points", "200"],
    ["train", "--stages", "1", "--epochs", "1", "--fresh", "--eval-width", "4", "--d-model", "64", "--heads", "4", "--layers", "1",
     "--d-ff", "128"],
    ["gen", "rank", "--epochs", "1", "--out", "ranked", "--width", "4"], ["deploy", "generator-stage2"],
    ["ranker", "--epochs", "1", "--embedder", "hashing-64"], ["rl", "--steps", "1", "--prompts", "4", "--group", "4", "--embedder", "hashing-64"],
    ["dense", "train", "--epochs", "1", "--max-pairs", "200"],
]
UPSTREAM = {("data", "synth"), ("data", "import"), ("sid", "train")}  # verbs whose success makes artifacts built before them stale


@pytest.mark.slow
def test_every_pair_of_writing_verbs_at_once_leaves_a_workspace_that_agrees(trained, tmp_path):
    """Two writers of every pair of writing verbs (each with itself too) started a seeded moment apart on a
    fresh copy of one trained workspace (tests/writer_pairs.py): each ends with exit 0, is refused as busy,
    or (when it ran after the other) fails with one line naming the problem; and every artifact then
    loads, or is refused as stale only where a verb that succeeded replaced what it was built from; none
    is broken. About 7 minutes: one fork per verb, no imports paid twice."""
    import json
    import subprocess
    import sys

    ws, _ = trained
    products = ws.table("products")
    products.to_csv(tmp_path / "products.csv", index=False)  # the same catalog again: a write that changes nothing
    (tmp_path / "items.json").write_text(json.dumps({r.product_id: {"title": r.title, "brand": r.brand or ""}
                                                     for r in products.itertuples()}))
    verbs = [[a.format(csv=tmp_path / "products.csv", items=tmp_path / "items.json") for a in v] for v in PAIRED]
    (tmp_path / "verbs.json").write_text(json.dumps(verbs))
    got = subprocess.run([sys.executable, "tests/writer_pairs.py", str(ws.path), str(tmp_path / "verbs.json"), "0"],
                         capture_output=True, text=True, timeout=1500)
    assert got.returncode == 0, got.stderr[-3000:]
    rows = [json.loads(line) for line in got.stdout.splitlines()]
    assert len(rows) == len(verbs) * (len(verbs) + 1) // 2
    overlapped = 0
    for row in rows:
        runs, said = row["runs"], [r["output"] for r in row["runs"]]
        pair = [" ".join(r["verb"][:2]) for r in runs]
        busy = ["is busy: `" in s for s in said]
        overlapped += any(busy)
        assert not any("Traceback" in s or "ESCAPED" in s for s in said), (pair, said)
        for r, b in zip(runs, busy):  # done, refused, or one line naming why it cannot run after the other
            assert r["code"] == 0 or (r["code"] == 1 and (b or "Error: " in r["output"])), (pair, r["output"])
        assert any(r["code"] == 0 for r in runs), (pair, said)
        statuses = {a: s for a, (s, _) in row["report"].items()}
        assert "broken" not in statuses.values(), (pair, row["report"])
        upstream = any(r["code"] == 0 and tuple(r["verb"][:2]) in UPSTREAM for r in runs)
        stale = [a for a, s in statuses.items() if s == "stale"]
        assert not stale or upstream, (pair, row["report"])  # stale only where a verb replaced its inputs, and said so
    assert overlapped >= len(rows) // 2, overlapped  # most pairs ran at the same time: the second found the first writing
