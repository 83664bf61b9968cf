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
