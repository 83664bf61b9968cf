"""The workbench app: `streamlit run app.py` (or `workbench demo`). UI only: searches go through
`workbench.engine`, and what each page shows comes from `workbench.app_data`.

Each page runs inside one error boundary: whatever ends it (a corrupt generator or table, a garbage
or busy logbook) is a message on the page, `app_data.page_error(e)`, not a traceback."""

from __future__ import annotations

import os
import threading

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from workbench import app_data
from workbench.engine import MAX_WIDTH, AppError, Engine, compare, generators, open_workspace
from workbench.eval.width import rule, served
from workbench.gen import names
from workbench.gen.config import ChannelConfig
from workbench.workspace import default_path

st.set_page_config(page_title="workbench: generative search", layout="wide")


@st.cache_resource(show_spinner="loading the generator ...")
def engine(path: str, name: str = names.DEPLOYED) -> Engine:
    return Engine(open_workspace(path), name=name)


@st.cache_resource(show_spinner=False)
def prewarm(path: str) -> threading.Thread:
    """Once per workspace and server: load the Search page's engine and indexes in a background thread
    while the user reads the first page, so that their first query does not wait for them. A failure
    is kept on the thread (`error`) and left for the Search page to report. Off with WORKBENCH_PREWARM=0."""
    def work() -> None:
        try:
            engine(path).warm()
        except Exception as e:  # noqa: BLE001 - the Search page shows it
            t.error = app_data.page_error(e)
    t = threading.Thread(target=work, name=f"prewarm {path}", daemon=True)
    t.error = None
    app_data.WARMUPS[path] = t
    t.start()
    return t


@st.cache_data(show_spinner="reading the map ...")
def codebook_points(path: str, n: int, stamp: float):
    """`stamp`: the stored map's modification time, so a map drawn again is read again."""
    return app_data.codebook_points(open_workspace(path), n)


def overview_page(path: str) -> None:
    ov = app_data.overview(open_workspace(path))
    st.header("What this workspace holds")
    left, right = st.columns([2, 3])
    left.dataframe(ov.facts, hide_index=True, key="ov_facts")
    with right:
        st.markdown("**Try a test query** (the generator never trained on these): click one to search it.")
        cols = st.columns(4)
        for i, q in enumerate(ov.examples):
            cols[i % 4].button(q, key=f"example_{i}", on_click=_search_for, args=(q,), width="stretch")
        if not ov.examples:
            st.caption("No test queries with relevant products in this workspace.")
    st.subheader("Evaluation")
    st.caption(f"From {ov.evaluation_source}.")
    st.dataframe(ov.evaluation, hide_index=True, key="ov_eval")
    c1, c2 = st.columns(2)
    c1.markdown("**Generators** (`gen/`)")
    c1.dataframe(ov.models, hide_index=True, key="ov_models")
    c2.markdown("**Last runs** (the logbook; SQL page for more)")
    c2.dataframe(ov.runs, hide_index=True, key="ov_runs")


def _search_for(query: str) -> None:
    """An example query's button: open the Search page on it (a callback, so it may set widget state)."""
    st.session_state["query"] = query
    st.session_state["page"] = "Search"


def search_page(path: str) -> None:
    eng = engine(path)
    c1, c2, c3 = st.columns([3, 2, 1])
    query = c1.text_input("Query", key="query", placeholder="e.g. cordless drill")
    users = ["(anonymous)"] + eng.user_ids
    user = c2.selectbox("User", users, key="user", disabled=not eng.personal,
                        help=None if eng.personal else "this generator was trained without users (stage 3)")
    width = c3.number_input("Beam width", 1, MAX_WIDTH, eng.width, key="width", help=f"Served width: {eng.width}, {served(eng.ws)[1]}")
    if not query.strip():
        st.info("Type a query to decode it into semantic IDs.")
        return
    try:
        res = eng.search(query, int(width), None if user == "(anonymous)" else user)
    except AppError as e:
        st.warning(str(e))
        return
    st.caption(f'{len(res.hits)} SIDs, {len(res.products)} products in {res.latency_ms:.1f} ms for "{res.query}"'
               + (f"; personalised for {res.user}" if res.personalised else ""))
    if res.log_error:
        st.warning(f"This search was not recorded in the logbook: {res.log_error}")
    left, right = st.columns([1, 1])
    with left:
        st.subheader("Decoded SID paths")
        paths = res.paths()
        st.markdown("\n".join(f"- `{r.sid}` **{r.label}**  p = {r.probability:.3f} ({r.products} product{'s' * (r.products != 1)})"
                              for r in paths.head(10).itertuples()),
                    help="Each path is a level-1, level-2, level-3 code; probabilities are the model's path probabilities.")
        tree = res.tree()
        if not tree.empty:
            fig = px.sunburst(tree, ids="id", parents="parent", names="label", values="probability", branchvalues="total",
                              hover_data={"description": True})
            fig.update_layout(margin=dict(t=0, l=0, r=0, b=0), height=320)
            st.plotly_chart(fig, key="sunburst")
    with right:
        st.subheader("Products by cluster")
        for sid, h in zip(res.sids()[:5], res.hits):
            with st.expander(f"{sid} {res.label(sid)}: {len(h.products)} product{'s' * (len(h.products) != 1)}"):
                st.dataframe(eng.titles(h.products[:20]), hide_index=True, key=f"cluster-{h.sid}")
    st.subheader("Against the baselines (top 10)")
    try:
        lists = eng.baselines(query, res.products[:10], k=10)
    except Exception as e:  # a workspace without embeddings: the comparison is optional
        st.info(f"baselines unavailable: {e}")
        return
    cols = st.columns(4)
    for col, (name, ids) in zip(cols, [("generative", res.products[:10]), ("bm25", lists["bm25"]), ("dense", lists["dense"]),
                                       ("hybrid + generative", lists["hybrid+gen"])]):
        col.markdown(f"**{name}**")
        col.dataframe(eng.titles(ids)[["title"]], hide_index=True, key=f"list-{name}")
    added = [p for p in lists["hybrid+gen"] if p not in lists["hybrid"]]
    st.caption(f"The generative supplement adds {len(added)} products the hybrid did not retrieve.")


def compare_page(path: str) -> None:
    models = generators(open_workspace(path))
    c1, c2 = st.columns(2)
    a = c1.selectbox("Generator A", models, key="cmp_a",
                     index=models.index(names.stage(names.DEPLOYED, 3)) if names.stage(names.DEPLOYED, 3) in models else 0)
    path_b = c2.text_input("Workspace of B (another workspace compares across catalogs or SIDs)", path, key="cmp_ws_b")
    names_b = generators(open_workspace(path_b))
    later = [names.refined(names.DEPLOYED, h) for h in ("stage4", "eg-grpo", "grpo")] + [names.DEPLOYED]
    pick = next((n for n in later if n in names_b and n != a), names_b[0])
    b = c2.selectbox("Generator B", names_b, key="cmp_b", index=names_b.index(pick))
    q1, q2 = st.columns([4, 1])
    query = q1.text_input("Query", key="cmp_query", placeholder="e.g. cordless drill")
    width = int(q2.number_input("Beam width", 1, MAX_WIDTH, engine(path, a).width, key="cmp_width"))
    if not query.strip():
        st.info("Type a query to decode it with both generators; what one returns and the other does not is ticked.")
        return
    try:
        ra = engine(path, a).search(query, width, source="app-compare")
        rb = engine(path_b, b).search(query, width, source="app-compare")
    except AppError as e:
        st.warning(str(e))
        return
    diff = compare(ra, rb)
    st.caption(f"{int(diff['sids_a']['only_here'].sum())} of A's {len(ra.hits)} SIDs are not in B's beam and "
               f"{int(diff['sids_b']['only_here'].sum())} of B's {len(rb.hits)} not in A's; of the top 10 products, "
               f"{int((~diff['products_a']['only_here']).sum())} of A's are in B's channel list")
    for col, side, name, p, res in ((c1, "a", a, path, ra), (c2, "b", b, path_b, rb)):
        with col:
            st.markdown(f"**{name}** ({res.latency_ms:.1f} ms)")
            st.dataframe(diff[f"sids_{side}"].rename(columns={"only_here": "only here"}), hide_index=True, key=f"cmp_sids_{side}")
            top = engine(p, name).titles(diff[f"products_{side}"]["product_id"].tolist())
            top["only here"] = diff[f"products_{side}"]["only_here"].to_numpy()
            st.dataframe(top, hide_index=True, key=f"cmp_products_{side}")


def codebooks_page(path: str) -> None:
    ws = open_workspace(path)
    n = st.slider("Products on the map", 200, 3000, 1000, step=100, key="umap_n")
    stamp = (ws.path / "sid" / "map.parquet").stat().st_mtime if (ws.path / "sid" / "map.parquet").exists() else 0.0
    try:
        df = codebook_points(path, n, stamp)
    except AppError as e:
        st.warning(str(e))
        if st.button("Draw the map now", key="draw_map"):
            with st.spinner("fitting UMAP on a sample of the catalog ..."):
                app_data.draw_map(ws)
            st.rerun()
        return
    color = st.radio("Colour by", ["sid_1", "sid_2", "top_category"], horizontal=True, key="umap_color")
    st.plotly_chart(px.scatter(df, x="x", y="y", color=df[color].astype(str), hover_name="title", height=520,
                               hover_data={"cluster": True, "label": True, "label_1": True, "x": False, "y": False},
                               labels={"label": "cluster label", "label_1": "level-1 label"}),
                    key="umap")
    levels = [c for c in df.columns if c.startswith("sid_")]
    c1, c2 = st.columns(2)
    sizes = df.groupby(levels).size().rename("products").reset_index()
    c1.plotly_chart(px.histogram(sizes, x="products", title="Products per SID (sampled)"), key="sizes")
    usage = [{"level": c, "codes used": df[c].nunique()} for c in levels]
    c2.dataframe(usage, hide_index=True, key="usage")


def training_page(path: str) -> None:
    ws = open_workspace(path)
    curves = app_data.stage_curves(ws)
    if curves.empty:
        st.info("No generator training in this workspace's logbook yet.")
    else:
        metric = st.selectbox("Metric", sorted(curves["metric"].unique()), key="train_metric",
                              index=sorted(curves["metric"].unique()).index("recall@50") if "recall@50" in set(curves["metric"]) else 0)
        d = curves[curves["metric"] == metric]
        st.plotly_chart(px.line(d, x="step", y="value", color="stage", line_group="run_id", markers=True, height=380), key="stages")
    rl = app_data.rl_curves(ws)
    st.subheader("Stage 4: GRPO vs EG-GRPO")
    if rl.empty:
        st.info("No RL runs yet: `workbench bench rl`.")
        return
    metric = st.selectbox("Diagnostic", sorted(rl["metric"].unique()), key="rl_metric")
    d = rl[rl["metric"] == metric]
    st.plotly_chart(px.line(d, x="step", y="value", color="run", line_group="run_id", height=380), key="rl")


def beam_page(path: str) -> None:
    curves, choice = app_data.beam_sweep(open_workspace(path))
    if curves.empty:
        st.info("No width sweep yet: `workbench bench beam`.")
        return
    recall = next(c for c in curves.columns if c.startswith("recall@"))
    chosen = choice.set_index("ids")["width"].to_dict() if not choice.empty else {}
    width, why = served(open_workspace(path))
    st.markdown(f"**Served width: {width}** ({why}). `gen search`, the Search page, `workbench serve` and `batch decode` "
                "decode at it unless given a width.")
    for _, c in choice.iterrows():
        st.markdown(f"**{c['ids']} IDs.** {rule(c)}")
    batches = sorted(curves["batch"].unique())
    for col, bs in zip(st.columns(len(batches)), batches):
        d = curves[curves["batch"] == bs].sort_values("width")
        fig = px.line(d, x="p50_ms", y=recall, color="ids", text="width", markers=True, log_x=True, height=420,
                      hover_data={"p95_ms": ":.1f", "queries_per_s": ":.0f", "products": ":.0f"},
                      labels={"p50_ms": "p50 latency per batch (ms)"}, title=f"Batch {bs}: recall against latency, one point per width")
        fig.update_traces(textposition="top left")
        pick = d[d.apply(lambda r: chosen.get(r["ids"]) == r["width"], axis=1)]
        if len(pick):
            fig.add_scatter(x=pick["p50_ms"], y=pick[recall], mode="markers", name="chosen width",
                            marker=dict(size=18, symbol="star", color="gold", line=dict(width=1, color="black")))
        col.plotly_chart(fig, key=f"beam_pareto_{bs}")
    with st.expander("The sweep's numbers"):
        st.dataframe(curves, hide_index=True, key="beam_table")
    load, params = app_data.serve_load(open_workspace(path))
    st.subheader("Under load: the HTTP service (`workbench bench serve`)")
    if load.empty:
        st.info("No load benchmark yet: `workbench bench serve` (locust against `workbench serve` on 127.0.0.1).")
        return
    load["series"] = load["channel"] + np.where(load["width"].notna(), " w" + load["width"].fillna(0).astype(int).astype(str), "")
    fig = px.line(load, x="queries_per_s", y="p99_ms", color="series", line_dash="batching", text="users", markers=True, log_y=True,
                  height=460, labels={"queries_per_s": "throughput (queries/s)", "p99_ms": "p99 latency (ms)"},
                  title=f"Throughput against p99 as concurrency grows (labels: concurrent users; {params.get('seconds', '?')} s per point; "
                        f"queries encoded in {params.get('query_dtype', ChannelConfig.query_dtype)})")
    fig.update_traces(textposition="top center")
    st.plotly_chart(fig, key="serve_load")
    with st.expander("The load benchmark's numbers"):
        st.dataframe(load.drop(columns=["series"]), hide_index=True, key="serve_table")


def sql_page(path: str) -> None:
    ws = open_workspace(path)
    left, right = st.columns([3, 1])
    with right:
        st.markdown("**Tables**")
        schema = app_data.logbook_schema(ws)
        for table, cols in schema.groupby("table", sort=False):
            with st.expander(table):
                st.dataframe(cols[["column", "type"]], hide_index=True, key=f"schema_{table}")
    with left:
        example = st.selectbox("Start from an example", list(app_data.SQL_EXAMPLES), key="sql_example")
        if st.session_state.get("sql_example_shown") != example:  # a new pick replaces the text; edits stay otherwise
            st.session_state["sql"] = app_data.SQL_EXAMPLES[example]
            st.session_state["sql_example_shown"] = example
        sql = st.text_area("SQL (read-only) over the logbook", key="sql", height=120)
        if st.button("Run", key="run_sql"):
            st.session_state["sql_ran"] = sql
        if not st.session_state.get("sql_ran"):
            return
        try:
            df, more = app_data.run_sql(ws, st.session_state["sql_ran"])
        except AppError as e:
            st.error(str(e))
            return
        st.dataframe(df, hide_index=True, key="sql_result")
        if more:
            st.caption(f"The first {len(df):,} rows: the query returns more (add a LIMIT or an aggregate).")
        st.download_button("Download CSV", df.to_csv(index=False), "logbook-query.csv", "text/csv", key="sql_csv")
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
        if len(df) and numeric and st.checkbox("Chart", key="sql_chart"):
            c1, c2, c3, c4 = st.columns(4)
            kind = c1.selectbox("Kind", ["line", "bar", "scatter"], key="sql_kind")
            x = c2.selectbox("x", list(df.columns), key="sql_x")
            y = c3.selectbox("y", numeric, index=len(numeric) - 1, key="sql_y")
            color = c4.selectbox("Colour", ["(none)"] + [c for c in df.columns if c not in (x, y)], key="sql_color")
            plot = {"line": px.line, "bar": px.bar, "scatter": px.scatter}[kind]
            st.plotly_chart(plot(df, x=x, y=y, color=None if color == "(none)" else color, height=380), key="sql_plot")


def ab_page(path: str) -> None:
    df, run = app_data.ab_results(open_workspace(path))
    if df.empty:
        st.info("No simulated A/B yet (synthetic workspaces): `workbench ab --arms generator,bm25,dense` "
                "(add `--ranker oracle` to order the pages by the simulator's truth).")
        return
    aa = df["aa_false_positive_rate"].iloc[0] if "aa_false_positive_rate" in df else float("nan")
    st.caption(f"{run['name']} ({run['run_id']}): {int(df['sessions'].iloc[0]):,} test sessions; 95% paired intervals"
               + (f" over whole queries (jackknife t); A/A false-positive rate of these intervals {aa:.1%} (nominal 5%)" if aa == aa else ""))
    metric = st.radio("Per session", ["purchases", "gmv", "clicks", "ctr", "cvr"], horizontal=True, key="ab_metric")
    if f"d_{metric}" not in df:  # a run with no differences recorded: its values alone
        df[f"d_{metric}"] = np.nan
    base = df.loc[df[f"d_{metric}"].isna(), "arm"].iloc[-1]
    diff = df[df[f"d_{metric}"].notna()]
    fig = px.scatter(diff, x=f"d_{metric}", y="arm", height=120 + 45 * len(diff),
                     error_x=diff[f"d_{metric}_hi"] - diff[f"d_{metric}"], error_x_minus=diff[f"d_{metric}"] - diff[f"d_{metric}_lo"],
                     labels={f"d_{metric}": f"{metric}: difference from {base} (%)", "arm": ""},
                     title=f"Each arm against {base}: the difference and its 95% interval")
    fig.add_vline(x=0, line_dash="dash", line_color="grey")
    st.plotly_chart(fig, key="ab_forest")
    with st.expander("Each arm's own value"):
        st.plotly_chart(px.bar(df, x="arm", y=metric, error_y=df[f"{metric}_hi"] - df[metric],
                               error_y_minus=df[metric] - df[f"{metric}_lo"], height=340), key="ab_bars")
    shares = df[df["arm"].str.startswith("+")].melt(id_vars="arm", value_vars=[f"added_{k}_share" for k in app_data.PAPER_SHARES],
                                                   var_name="of", value_name="share")
    paper = pd.DataFrame({"arm": "paper (online)", "of": [f"added_{k}_share" for k in app_data.PAPER_SHARES],
                          "share": list(app_data.PAPER_SHARES.values())})
    st.plotly_chart(px.bar(pd.concat([shares, paper]), x="arm", y="share", color="of", barmode="group", height=340,
                           title="Exposures, clicks, purchases going to products only the channel found (the paper: all its channel retrieved)"),
                    key="ab_shares")
    st.dataframe(df, hide_index=True, key="ab_table")


PAGES = {"Overview": overview_page, "Search": search_page, "Compare": compare_page, "Codebooks": codebooks_page, "Training": training_page, "Beam width": beam_page,
         "A/B": ab_page, "SQL": sql_page}

with st.sidebar:
    st.title("workbench")
    path = st.text_input("Workspace", str(default_path()), key="workspace")
    page = st.radio("Page", list(PAGES), key="page")
try:
    open_workspace(path)
    if os.environ.get("WORKBENCH_PREWARM", "1") != "0":
        prewarm(path)
    PAGES[page](path)
except Exception as e:  # the page's one boundary (Streamlit's rerun and stop are not Exceptions)
    st.error(app_data.page_error(e))
