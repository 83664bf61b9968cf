"""One served width: the width a workspace's sweep chose is what `gen search`, the engine (app), the
batch jobs and the HTTP service decode at (the service: tests/test_service.py), an explicit width
overrides it, and a workspace without a sweep serves the stated default."""

import json
import shutil

import pytest
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from workbench import Workspace
from workbench.cli import main
from workbench.engine import Engine
from workbench.eval import width
from workbench.gen import store
from workbench.pipeline import report


@pytest.fixture
def ws(trained, tmp_path):
    shutil.copytree(trained[0].path, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def sweep(ws, widths: str = "1,2") -> int:
    """Run the workspace's width sweep (`bench beam --ids workspace`); the width it chose."""
    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "beam", "--no-speed", "--ids", "workspace", "--widths", widths,
                                  "--batch-sizes", "1", "--rounds", "1", "--k", "20"])
    assert r.exit_code == 0, r.output
    return width.load_choice(ws)["width"]


def search(ws, *args) -> str:
    r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "search", "cordless drill", "--top", "1", *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_without_a_sweep_the_default_is_served_and_said(ws):
    assert not width.choice_path(ws).exists()
    assert width.served(ws)[0] == width.served_width(ws) == width.DEFAULT_WIDTH
    assert Engine(ws).width == width.DEFAULT_WIDTH
    out = search(ws)
    assert f"beam width {width.DEFAULT_WIDTH} (the default: no sweep" in out
    assert f"'cordless drill': {width.DEFAULT_WIDTH} SIDs" in out


def test_the_sweeps_choice_is_served_everywhere_and_a_width_overrides_it(ws, tmp_path):
    chosen = sweep(ws)
    assert chosen in (1, 2) and chosen != width.DEFAULT_WIDTH
    doc = width.load_choice(ws)
    assert doc["rule"].startswith(f"Width {chosen} is the smallest whose Recall@20") and doc["generator"]["name"] == "generator"
    logged = ws.logbook().query("SELECT value FROM bench WHERE bench = 'beam-width-choice' AND metric = 'width'")
    assert logged["value"].iloc[-1] == chosen  # the logbook's choice and the served one are the same
    assert width.served(ws) == (chosen, "the sweep's choice")

    out = search(ws)  # gen search
    assert f"beam width {chosen} (the sweep's choice)" in out and f"'cordless drill': {chosen} SIDs" in out
    out = search(ws, "--width", "4")
    assert "beam width 4 (--width)" in out and "'cordless drill': 4 SIDs" in out

    eng = Engine(ws)  # the app's and the HTTP service's engine
    assert eng.width == chosen and eng.search("drill", log=False).width == chosen and len(eng.search("drill", log=False).hits) == chosen
    assert eng.search("drill", 4, log=False).width == 4 and Engine(ws, width=4).search_many(["drill"])[0].width == 4

    ws.table("products")[["product_id", "title"]].head(50).to_parquet(tmp_path / "p.parquet")  # batch decode
    r = CliRunner().invoke(main, ["-w", str(ws.path), "batch", "decode", str(tmp_path / "p.parquet"), str(tmp_path / "d.parquet")])
    assert r.exit_code == 0, r.output
    run = ws.logbook().query("SELECT config FROM runs WHERE name = 'batch decode' ORDER BY started_at DESC LIMIT 1")
    assert json.loads(run["config"].iloc[0])["width"] == chosen

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)  # the app's Search page
    at.run()
    at.text_input(key="workspace").set_value(str(ws.path)).run()
    at.radio(key="page").set_value("Search").run()
    assert not at.exception and at.number_input(key="width").value == chosen


def test_a_choice_of_an_older_generator_is_served_and_reported_outdated(ws):
    chosen = sweep(ws)
    assert width.outdated(ws) == ""
    store.deploy(ws, "generator-stage2", "generator", why="test")  # another generator deployed since the sweep
    assert "generator changed since the sweep" in width.outdated(ws)
    assert width.served(ws)[0] == chosen and "measured before generator changed" in width.served(ws)[1]
    row = next(r for r in report(ws) if r["artifact"] == "gen/width.json")
    assert row["status"] == "outdated" and "changed since the sweep" in row["detail"]


@pytest.mark.parametrize("text, says", [("{not json", "is not a width choice"), ('{"rule": "x"}', "is not a width choice"),
                                         ('{"width": 0}', "width must be a whole number"), ('{"width": "8"}', "whole number"),
                                         ('{"width": true}', "whole number"), ('[1]', "is not a width choice")])
def test_a_damaged_choice_is_an_error_naming_the_file(ws, text, says):
    width.choice_path(ws).write_text(text)
    with pytest.raises(ValueError, match=says) as e:
        width.served_width(ws)
    assert "width.json" in str(e.value)
    r = CliRunner().invoke(main, ["-w", str(ws.path), "gen", "search", "drill"])
    assert r.exit_code != 0 and "width.json" in r.output and "Traceback" not in r.output
    assert next(r for r in report(ws) if r["artifact"] == "gen/width.json")["status"] == "broken"
