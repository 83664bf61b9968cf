"""The app in a real browser: `streamlit run app.py` on 127.0.0.1, driven by Playwright in Debian's
headless chromium (Playwright's own browser download does not work offline). Skips locally when
chromium is missing; fails in CI (CI=true), which installs it."""

import os
import shutil

import pytest

from tests.conftest import ROOT
from workbench import Workspace
from workbench.bench.app import BROWSER_ARGS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.slow  # a real app server and browser: about 30 s


def _need_browser():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright")


@pytest.fixture(scope="module")
def served_app(trained, tmp_path_factory):
    from workbench.bench import launch
    from workbench.bench.app import start_app

    _need_browser()
    ws, _ = trained
    path = tmp_path_factory.mktemp("browser") / "ws"
    shutil.copytree(ws.path, path)
    proc, url = start_app(path)
    yield url, Workspace(path)
    launch.stop(proc, timeout=20)


def _settle(page, timeout: float = 120_000) -> None:
    """Wait until the script has finished its run (Streamlit's own marker)."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


def _page(p, name: str, page) -> None:
    """Open app page `name` from the sidebar."""
    page.locator('[data-testid="stSidebar"]').get_by_text(name, exact=True).click()
    _settle(page)


def test_overview_example_query_labelled_paths_pareto_and_sql_in_a_browser(served_app):
    from playwright.sync_api import sync_playwright

    from workbench.eval.width import pick_width
    from workbench.report import report
    from workbench.sid.store import load_labels

    url, ws = served_app
    rows = [{"case": f"workspace w{w} b{b}", "ids": "workspace", "width": w, "batch": b, "p50_ms": w * b / 4.0, "p95_ms": w * b / 3.0,
             "queries_per_s": 1000.0 / w, "recall@50": 0.5 - 0.2 / w, "products": 10.0 * w} for b in (1, 32) for w in (1, 4, 16, 64)]
    with ws.logbook().run("bench", {}) as run:  # a width sweep for the Beam width page
        report("beam-sweep (workspace IDs)", rows, run)
        report("beam-width-choice", [{"case": "workspace", **pick_width(rows, 50)}], run)
    labels = load_labels(ws)["label"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(url)
        _settle(page)
        page.get_by_text("What this workspace holds").wait_for(timeout=120_000)  # the overview is the landing page
        page.wait_for_selector('[data-testid="stDataFrame"] canvas', timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "app-overview.png"))
        example = page.locator('[data-testid="stButton"] button').first
        query = example.inner_text().strip()
        example.click()  # an example query opens the Search page on it
        page.get_by_text("Decoded SID paths").wait_for(timeout=120_000)
        _settle(page)
        assert page.get_by_text(f'ms for "{query}"', exact=False).count() == 1
        items = page.locator('[data-testid="stMarkdownContainer"] li').all_inner_texts()
        sids = [t.split()[0] for t in items if t.split() and t.split()[0].count("-") == 2 and t.split()[0].replace("-", "").isdigit()]
        assert sids and all(labels[s] in t for s, t in zip(sids, items)), items  # each path with its cluster label
        assert page.locator('[data-testid="stException"]').count() == 0
        page.wait_for_selector('[data-testid="stPlotlyChart"] g.slice', timeout=60_000)  # the SID tree (sunburst) drew
        page.wait_for_selector('[data-testid="stDataFrame"] canvas', timeout=60_000)  # the baseline lists drew
        assert page.locator('[data-testid="stPlotlyChart"] g.slice').count() >= len(sids)
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "app-search.png"))

        _page(p, "Beam width", page)
        page.get_by_text("is the smallest whose Recall@50", exact=False).wait_for(timeout=60_000)
        page.wait_for_selector('[data-testid="stPlotlyChart"] .scatterlayer .trace', timeout=60_000)
        assert page.locator('[data-testid="stPlotlyChart"]').count() == 2  # one Pareto chart per batch size
        assert page.locator('[data-testid="stPlotlyChart"] path.point').count() >= 2 * 4 + 2  # every width, and the stars

        _page(p, "SQL", page)
        page.get_by_label("SQL (read-only) over the logbook").fill("SELECT kind, count(*) AS n FROM runs GROUP BY kind")
        page.get_by_role("button", name="Run").click()
        _settle(page)
        page.get_by_text("Chart", exact=True).click()  # the result as a chart
        _settle(page)
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=60_000)
        assert page.get_by_role("button", name="Download CSV").count() == 1
        assert page.locator('[data-testid="stException"]').count() == 0
        browser.close()
    served = ws.logbook().query("SELECT query, source FROM served")
    assert [query, "app"] in served.values.tolist()


def test_concurrent_sessions_search_without_errors(served_app):
    """A short version of `workbench bench app` (20 sessions, 60 s): 3 sessions for 15 s."""
    from workbench.bench.app import load

    _, ws = served_app
    row = load(ws.path, sessions=3, seconds=15)
    assert row["errors"] == 0, row["first_errors"]
    assert row["searches"] >= 3 and 0 < row["p50_s"] <= row["p95_s"] <= row["max_s"]


def test_bench_pages_times_every_page_logs_them_and_writes_screenshots(trained_copy, tmp_path):
    """`workbench bench pages`: one row per page with its times, in the logbook, and one screenshot each."""
    from click.testing import CliRunner

    from workbench.bench.pages import READY, shot_name
    from workbench.cli import main

    _need_browser()
    out = tmp_path / "shots"
    res = CliRunner().invoke(main, ["-w", str(trained_copy.path), "bench", "pages", "--passes", "1", "--screenshots", str(out),
                                    "--prefix", "t"])
    assert res.exit_code == 0, res.output
    got = trained_copy.logbook().query("SELECT case_name, metric, value FROM bench WHERE bench = 'app-pages'")
    assert sorted(set(got["case_name"])) == sorted(READY)
    assert (got["value"] > 0).all() and set(got["metric"]) == {"first_s", "again_s"}
    names = {shot_name("t", n) for n in READY}
    assert {p.name for p in out.iterdir()} == names and all(p.stat().st_size > 10_000 for p in out.iterdir())
