"""The app: its logic (workbench.engine, workbench.app_data) directly, and every page driven through Streamlit's AppTest."""

import shutil
import time

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, garbage, held
from workbench import Workspace, app_data, engine
from workbench.eval.width import rule
from workbench.logbook import LogbookBusy
from workbench.sid.store import load_labels, workspace_embedder


@pytest.fixture(scope="module")
def app_ws(trained, tmp_path_factory):
    ws, _ = trained
    d = tmp_path_factory.mktemp("app") / "ws"
    shutil.copytree(ws.path, d)
    return Workspace(d)


@pytest.fixture(autouse=True)
def _no_prewarm(monkeypatch):
    """The app warms the Search engine in a thread; here each page runs in this process, so only the
    test of the warm-up lets it."""
    monkeypatch.setenv("WORKBENCH_PREWARM", "0")


@pytest.fixture(scope="module")
def eng(app_ws):
    return engine.Engine(app_ws)


@pytest.fixture
def spoilt(app_ws, tmp_path):
    """A copy of the app's workspace to break a file of."""
    shutil.copytree(app_ws.path, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def test_open_workspace_errors(tmp_path, app_ws):
    with pytest.raises(engine.AppError, match="no workspace at"):
        engine.open_workspace(tmp_path / "missing")
    bare = Workspace(tmp_path / "bare")
    shutil.copytree(app_ws.path / "tables", bare.path / "tables")
    shutil.copy(app_ws.path / "workspace.json", bare.path / "workspace.json")
    with pytest.raises(engine.AppError, match="no trained generator"):
        engine.open_workspace(bare.path)
    assert workspace_embedder(app_ws) == "hashing-64"


def test_search_paths_tree_and_served_log(eng, app_ws):
    res = eng.search("cordless drill", width=8)
    flat = [p for h in res.hits for p in h.products][:300]
    assert 1 <= len(res.hits) <= 8 and sorted(res.products) == sorted(flat)  # the channel: the decoded products, ranked
    assert res.products == eng.channel(["cordless drill"], [res.hits])[0]
    paths, tree = res.paths(), res.tree()
    assert paths["probability"].is_monotonic_decreasing and abs(paths["share"].sum() - 1) < 1e-6
    roots = tree[tree["level"] == 1]
    assert abs(roots["probability"].sum() - paths["probability"].sum()) < 1e-6  # each level holds the beam's mass
    assert set(tree[tree["level"] == 3]["id"]) == set(paths["sid"])
    got = app_ws.logbook().query("SELECT query, beam_width, n_results, source FROM served")
    assert got.values.tolist()[-1] == ["cordless drill", 8, len(res.hits), "app"]


def test_search_bad_inputs_and_users(eng):
    for q in ("", "   "):
        with pytest.raises(engine.AppError, match="type a query"):
            eng.search(q)
    with pytest.raises(engine.AppError, match="under 500"):
        eng.search("drill " * 200)
    for w in (0, 2000, 2.5, True):
        with pytest.raises(engine.AppError, match="beam width"):
            eng.search("drill", width=w)
    assert eng.search("drill", 4, user="nobody-here", log=False).personalised is False
    assert eng.search("drill", 4, user=eng.user_ids[0], log=False).personalised is True
    assert eng.search("zzqx ###", 4, log=False).hits  # nonsense still decodes existing SIDs only


def test_baselines_side_by_side(eng):
    res = eng.search("garden hose", 16, log=False)
    lists = eng.baselines("garden hose", res.products[:10], k=10)
    assert set(lists) == {"bm25", "dense", "hybrid", "hybrid+gen"}
    assert all(len(v) == 10 for v in lists.values())
    added = [p for p in lists["hybrid+gen"] if p not in lists["hybrid"]]
    assert added and all(p in res.products[:10] for p in added)  # what the supplement adds comes from generation


def test_warm_builds_the_indexes_once(app_ws):
    fresh = engine.Engine(app_ws)
    assert fresh._bm25 is None
    fresh.warm()
    bm25, dense = fresh._bm25, fresh._dense
    assert bm25 is not None and dense is not None
    fresh.baselines("drill", [], k=5)
    assert fresh._bm25 is bm25 and fresh._dense is dense  # built once, by whichever came first


def test_app_warms_the_search_engine_in_the_background(spoilt, monkeypatch):
    monkeypatch.setenv("WORKBENCH_PREWARM", "1")
    at = _app(spoilt.path)
    _ok(at)
    warm = app_data.WARMUPS[str(spoilt.path)]  # started from the overview, for this workspace (it may have finished already)
    warm.join(timeout=120)
    assert not warm.is_alive() and warm.error is None
    at.radio(key="page").set_value("Search").run()
    at.text_input(key="query").set_value("cordless drill").run()
    _ok(at)
    assert any('ms for "cordless drill"' in c.value for c in at.caption)


def test_sql_console_is_read_only(app_ws):
    assert len(app_data.run_sql(app_ws, "SELECT * FROM runs")[0]) > 0
    for empty in (" ", "/* nothing */"):
        with pytest.raises(engine.AppError, match="type a SQL|no SQL statement"):
            app_data.run_sql(app_ws, empty)
    for bad in ("DELETE FROM runs", "CREATE TABLE x (a INT)", "SELECT * FROM read_csv('/etc/passwd')", "SELEC 1"):
        with pytest.raises(engine.AppError):
            app_data.run_sql(app_ws, bad)
    assert len(app_data.run_sql(app_ws, "SELECT * FROM runs")[0]) > 0  # nothing was deleted


def test_sql_console_lists_the_tables_and_every_example_runs(app_ws):
    schema = app_data.logbook_schema(app_ws)
    assert {"runs", "metrics", "evals", "bench", "served"} <= set(schema["table"])
    assert schema[schema["table"] == "served"]["column"].tolist()[:3] == ["time", "run_id", "query"]
    for name, sql in app_data.SQL_EXAMPLES.items():
        df, _ = app_data.run_sql(app_ws, sql)  # each example is valid SQL against this logbook's schema
        assert len(df.columns) >= 2, name


def test_sql_console_fetches_a_bounded_number_of_rows(app_ws):
    t = time.monotonic()
    df, more = app_data.run_sql(app_ws, "SELECT * FROM range(20000000)")
    assert time.monotonic() - t < 2 and len(df) == 1000 and more  # 20 million rows are not materialised
    df, more = app_data.run_sql(app_ws, "SELECT kind FROM runs", max_rows=5)
    assert 0 < len(df) <= 5 and more == (app_ws.logbook().query("SELECT count(*) n FROM runs")["n"][0] > 5)


def test_search_is_answered_when_the_logbook_cannot_take_it(eng, spoilt):
    with held(eng.ws.logbook_path):
        t = time.monotonic()
        res = eng.search("cordless drill", 8)
        assert res.hits and time.monotonic() - t < 10
        assert res.log_error.startswith(f"LogbookBusy: the logbook {eng.ws.logbook_path} is busy")
        for read in (lambda: app_data.stage_curves(eng.ws), lambda: app_data.run_sql(eng.ws, "SELECT 1")):
            t = time.monotonic()
            with pytest.raises(LogbookBusy):
                read()
            assert time.monotonic() - t < 5
    assert eng.search("cordless drill", 8).log_error is None
    garbage(spoilt.logbook_path)
    res = engine.Engine(spoilt).search("cordless drill", 8)
    assert res.hits and res.log_error.startswith(f"LogbookCorrupt: {spoilt.logbook_path} is not a DuckDB logbook")
    with pytest.raises(engine.AppError, match="is not a DuckDB logbook"):
        app_data.run_sql(spoilt, "SELECT 1")


# -- the app, page by page ------------------------------------------------------------------------
def _app(path, page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.text_input(key="workspace").set_value(str(path)).run()
    if page:
        at.radio(key="page").set_value(page).run()
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def test_app_overview_page_and_an_example_query(app_ws):
    ov = app_data.overview(app_ws)
    facts = dict(zip(ov.facts["what"], ov.facts["value"]))
    assert facts["products"] == f"{len(app_ws.table('products')):,}" and "SIDs" in facts and "cluster labels' category share" in facts
    assert {"generator", "generator-stage1", "generator-stage2", "generator-stage3"} <= set(ov.models["model"])
    assert set(ov.evaluation["method"]) == {"1-items", "2-queries", "3-personal"} and "recall@10" in ov.evaluation
    from workbench.gen.data import eval_set

    held = set(eval_set(app_ws, "test")["query"])
    assert len(ov.examples) == 8 and set(ov.examples) <= held  # test queries only
    at = _app(app_ws.path)
    assert at.radio(key="page").value == "Overview"
    _ok(at)
    assert not at.error and any("never trained on" in m.value for m in at.markdown)
    at.button(key="example_0").click().run()
    _ok(at)
    assert at.radio(key="page").value == "Search" and at.text_input(key="query").value == ov.examples[0]
    assert any(f'ms for "{ov.examples[0]}"' in c.value for c in at.caption)


def test_compare_marks_what_only_one_generator_returns(app_ws):
    assert engine.generators(app_ws)[0] == "generator" and "generator-stage2" in engine.generators(app_ws)
    a = engine.Engine(app_ws, name="generator-stage2").search("cordless drill", 8, log=False)
    b = engine.Engine(app_ws, name="generator-stage3").search("cordless drill", 8, log=False)
    d = engine.compare(a, b, k=10)
    sa, sb = set(d["sids_a"]["sid"]), set(d["sids_b"]["sid"])
    assert set(d["sids_a"][d["sids_a"]["only_here"]]["sid"]) == sa - sb
    assert set(d["sids_b"][d["sids_b"]["only_here"]]["sid"]) == sb - sa
    assert d["products_a"]["product_id"].tolist() == a.products[:10]
    assert d["products_a"]["only_here"].tolist() == [p not in set(b.products) for p in a.products[:10]]
    same = engine.compare(a, a)
    assert not same["sids_a"]["only_here"].any() and not same["products_b"]["only_here"].any()


@pytest.mark.slow
def test_app_compare_page(app_ws):
    at = _app(app_ws.path, "Compare")
    _ok(at)
    assert at.selectbox(key="cmp_a").value == "generator-stage3" and at.selectbox(key="cmp_b").value == "generator"
    at.selectbox(key="cmp_b").set_value("generator-stage2").run()
    at.text_input(key="cmp_query").set_value("cordless drill").run()
    _ok(at)
    assert not at.error and any("not in B's beam" in c.value for c in at.caption)
    assert sum("only here" in d.value.columns for d in at.dataframe) == 4  # SIDs and products, each side
    at.text_input(key="cmp_ws_b").set_value(str(app_ws.path / "nowhere")).run()
    _ok(at)
    assert any("no workspace at" in e.value for e in at.error)


def test_app_search_page(app_ws):
    at = _app(app_ws.path, "Search")
    _ok(at)
    assert any("Type a query" in i.value for i in at.info)
    at.text_input(key="query").set_value("cordless drill").run()
    _ok(at)
    assert any('ms for "cordless drill"' in c.value for c in at.caption)
    assert any("`" in m.value and "p = " in m.value for m in at.markdown)  # the SID paths
    lab = load_labels(app_ws)["label"]
    paths = next(m.value for m in at.markdown if m.value.startswith("- `"))
    assert f"**{lab[paths.split('`')[1]]}**" in paths  # each path with its cluster's label
    at.number_input(key="width").set_value(4).run()
    _ok(at)
    assert any(c.value.startswith("4 SIDs") or c.value.startswith("3 SIDs") for c in at.caption)
    at.selectbox(key="user").set_value(at.selectbox(key="user").options[1]).run()
    _ok(at)
    assert any("personalised for" in c.value for c in at.caption)
    at.text_input(key="query").set_value("   ").run()
    _ok(at)
    assert any("Type a query" in i.value for i in at.info)


@pytest.mark.slow
def test_app_other_pages_and_bad_workspace(app_ws, tmp_path):
    at = _app(app_ws.path)
    for page in ("Overview", "Compare", "Training", "Beam width", "Codebooks", "A/B", "SQL"):
        at.radio(key="page").set_value(page).run()
        _ok(at)
        assert not at.error, (page, [e.value for e in at.error])
    at.text_area(key="sql").set_value("SELECT kind, count(*) AS n FROM runs GROUP BY kind").run()
    at.button(key="run_sql").click().run()
    _ok(at)
    result = next(d.value for d in at.dataframe if "kind" in d.value.columns)
    assert result.columns.tolist() == ["kind", "n"]
    at.checkbox(key="sql_chart").check().run()  # a chart of the result: bar of n by kind
    at.selectbox(key="sql_kind").set_value("bar").run()
    _ok(at)
    assert at.selectbox(key="sql_y").value == "n" and not at.error
    at.text_area(key="sql").set_value("DROP TABLE runs").run()
    at.button(key="run_sql").click().run()
    assert at.error and not at.exception
    at.text_input(key="workspace").set_value(str(tmp_path / "nowhere")).run()
    _ok(at)
    assert any("no workspace at" in e.value for e in at.error)


@pytest.mark.parametrize("page", ["Overview", "Search", "Codebooks", "Compare"])
def test_app_pages_of_a_workspace_without_sids_say_so(spoilt, page):
    shutil.rmtree(spoilt.path / "sid")
    at = _app(spoilt.path, page)
    if page == "Compare":  # the generators load with the first query
        at.text_input(key="cmp_query").set_value("drill").run()
    _ok(at)
    assert any("no SID" in e.value for e in at.error), [e.value for e in at.error]


def test_app_on_a_workspace_without_a_generator_says_how_to_train_one(spoilt):
    (spoilt.path / "gen" / "generator.safetensors").unlink()
    at = _app(spoilt.path)
    _ok(at)
    assert any("no trained generator yet: run `workbench train`" in e.value for e in at.error)


@pytest.mark.slow
def test_app_codebooks_page_without_a_map_offers_to_draw_it(spoilt):
    (spoilt.path / "sid" / "map.parquet").unlink(missing_ok=True)
    at = _app(spoilt.path)
    at.radio(key="page").set_value("Codebooks").run()
    _ok(at)
    assert any("no map yet" in w.value and "workbench sid map" in w.value for w in at.warning) and not at.error
    at.button(key="draw_map").click().run()
    _ok(at)
    assert (spoilt.path / "sid" / "map.parquet").exists() and not at.warning and not at.error
    assert at.radio(key="umap_color").value == "sid_1"  # the map's page, drawn from the stored map


def test_beam_page_is_a_pareto_chart_with_the_chosen_width_and_its_rule(spoilt):
    from workbench.eval.width import pick_width
    from workbench.report import report

    rows = [{"case": f"workspace w{w} b{b}", "ids": "workspace", "width": w, "batch": b, "p50_ms": w * b / 4.0,
             "p95_ms": w * b / 3.0, "queries_per_s": 1000.0 / w, "recall@50": 0.5 - 0.2 / w, "products": 10.0 * w}
            for b in (1, 32) for w in (1, 4, 16, 64)]
    pick = pick_width(rows, 50, 0.02)
    assert pick["width"] == 16 and pick["k"] == 50 and pick["tolerance"] == 0.02  # 0.4875 >= 0.98 * 0.496875
    with spoilt.logbook().run("bench", {}) as run:
        report("beam-sweep (workspace IDs)", rows, run)
        report("beam-width-choice", [{"case": "workspace", **pick}], run)
    curves, choice = app_data.beam_sweep(spoilt)
    assert curves["width"].dtype.kind == "i" and curves["batch"].dtype.kind == "i" and choice["batch"].dtype.kind == "i"
    assert sorted(curves["batch"].unique()) == [1, 32] and not curves.isna().all().any() and not choice.isna().all().any()
    said = rule(choice.iloc[0])
    assert said.startswith("Width 16 is the smallest whose Recall@50 (0.487) is within 2% of the widest width's (64: 0.497)")
    at = _app(spoilt.path)
    at.radio(key="page").set_value("Beam width").run()
    _ok(at)
    assert not at.error and any(said in m.value for m in at.markdown)
    assert at.dataframe[0].value["batch"].tolist() == [1, 1, 1, 1, 32, 32, 32, 32]
    assert any("No load benchmark yet" in i.value for i in at.info)

    load = [{"case": f"{c}{' w16' if c == 'generative' else ''} batch {b} c{u}", "channel": c, "width": 16 if c == "generative" else None,
             "max_batch": b, "users": u, "requests": 100 * u, "failures": 0, "queries_per_s": 10.0 * u * (1 + (b > 1)),
             "p50_ms": 5.0 * u, "p95_ms": 8.0 * u, "p99_ms": 9.0 * u} for c in ("generative", "bm25") for b in (32, 1) for u in (1, 8)]
    with spoilt.logbook().run("bench", {}) as run:
        report("serve-load", load, run, params={"seconds": 10.0})
    got, params = app_data.serve_load(spoilt)
    assert len(got) == 8 and params == {"seconds": 10.0} and set(got["batching"]) == {"dynamic batching", "one at a time"}
    assert got.loc[got["case"] == "generative w16 batch 32 c8", "queries_per_s"].item() == 160.0 and got["width"].isna().sum() == 4
    at.run()
    _ok(at)
    assert not any("No load benchmark yet" in i.value for i in at.info)
    assert any(s.value.startswith("Under load") for s in at.subheader) and len(at.get("plotly_chart")) == 3
    assert "queries encoded in float32" in at.get("plotly_chart")[-1].proto.spec  # a run from before --query-dtype


def test_app_ab_page_shows_the_latest_ab_beside_the_paper(spoilt):
    ws = spoilt
    metrics = ("purchases", "gmv", "clicks", "ctr", "cvr")
    for name, scale in (("ab model generator", 1.0), ("ab oracle generator", 2.0)):  # the later run is the one shown
        with ws.logbook().run("ab", {}, name=name) as run:
            for arm, v in (("logged", 0.4), ("control", 0.5), ("+generator", 0.6), ("+generator (heavy users)", 0.7)):  # `--by-activity`
                row = {"sessions": 100, "aa_false_positive_rate": 0.04,
                       **{f"added_{k}_share": 0.1 * (arm == "+generator") for k in app_data.PAPER_SHARES}}
                row |= {f"{m}{x}": scale * v + d for m in metrics for x, d in (("", 0), ("_lo", -0.01), ("_hi", 0.01))}
                if arm != "control":  # differences from control, in %
                    row |= {f"d_{m}{x}": 100 * (v / 0.5 - 1) + d for m in metrics for x, d in (("", 0), ("_lo", -3), ("_hi", 3))}
                for k, val in row.items():
                    run.log_bench("ab", k, val, case_name=arm)
    df, meta = app_data.ab_results(ws)
    assert df["arm"].tolist() == ["logged", "control", "+generator"] and meta["name"] == "ab oracle generator"  # no segment rows
    assert df.set_index("arm").loc["+generator", "purchases"] == pytest.approx(1.2)
    at = _app(ws.path)
    at.radio(key="page").set_value("A/B").run()
    _ok(at)
    assert not at.error and "ab oracle generator" in at.caption[0].value and "A/A false-positive rate of these intervals 4.0%" in at.caption[0].value
    assert "+generator" in at.dataframe[0].value["arm"].tolist()
    forest = at.get("plotly_chart")[0].proto.spec
    assert "difference from control" in forest and "+generator" in forest and "logged" in forest


@pytest.mark.parametrize("spoil,page,words", [
    (lambda ws: garbage(ws.path / "gen" / "generator.safetensors"), "Search", "generator"),
    (lambda ws: garbage(ws.path / "tables" / "products.parquet"), "Search", "products"),
    (lambda ws: garbage(ws.path / "sid" / "sids.parquet"), "Search", "sids.parquet"),
    (lambda ws: garbage(ws.path / "sid" / "sids.parquet"), "Codebooks", "sids.parquet"),
    (lambda ws: garbage(ws.logbook_path), "Training", "is not a DuckDB logbook"),
    (lambda ws: garbage(ws.logbook_path), "Beam width", "is not a DuckDB logbook"),
])
def test_app_pages_show_a_broken_file_as_a_message(spoilt, spoil, page, words):
    spoil(spoilt)
    at = _app(spoilt.path)
    at.radio(key="page").set_value(page).run()
    _ok(at)
    assert any(words in e.value for e in at.error), [e.value for e in at.error]


def test_app_search_with_a_garbage_logbook_answers_and_warns(spoilt):
    garbage(spoilt.logbook_path)
    at = _app(spoilt.path, "Search")
    at.text_input(key="query").set_value("cordless drill").run()
    _ok(at)
    assert any('ms for "cordless drill"' in c.value for c in at.caption)
    assert any("not recorded in the logbook: LogbookCorrupt" in w.value for w in at.warning)


def test_app_sql_page_with_a_busy_logbook(spoilt):
    at = _app(spoilt.path)
    at.radio(key="page").set_value("SQL").run()
    at.text_area(key="sql").set_value("SELECT * FROM range(5000)").run()
    at.button(key="run_sql").click().run()
    _ok(at)
    assert any(len(d.value) == 1000 for d in at.dataframe) and any("the query returns more" in c.value for c in at.caption)
    with held(spoilt.logbook_path):
        at.button(key="run_sql").click().run()
    _ok(at)
    assert any(e.value.startswith(f"LogbookBusy: the logbook {spoilt.logbook_path} is busy") for e in at.error)
