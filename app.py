"""The workbench app: `streamlit run app.py` (or `workbench demo`). UI only; the logic is workbench.serve.

Each page runs inside one error boundary: whatever ends it (a corrupt generator or table, a garbage
or busy logbook) is a message on the page, `serve.page_error(e)`, not a traceback."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from workbench import serve
from workbench.workspace import default_path

st.set_page_config(page_title="workbench: generative search", layout="wide")


@st.cache_resource(show_spinner="loading the generator ...")
def engine(path: str) -> serve.Engine:
    return serve.Engine(serve.open_workspace(path))


@st.cache_data(show_spinner="fitting UMAP ...")
def codebook_points(path: str, n: int):
    return serve.codebook_points(serve.open_workspace(path), n)


def search_page(path: str) -> None:
    eng = engine(path)
    c1, c2, c3 = st.columns([3, 2, 1])
    query = c1.text_input("Query", key="query", placeholder="e.g. cordless drill")
    users = ["(anonymous)"] + eng.user_ids
    user = c2.selectbox("User", users, key="user", disabled=not eng.personal,
                        help=None if eng.personal else "this generator was trained without users (stage 3)")
    width = c3.number_input("Beam width", 1, 1024, 16, key="width")
    if not query.strip():
        st.info("Type a query to decode it into semantic IDs.")
        return
    try:
        res = eng.search(query, int(width), None if user == "(anonymous)" else user)
    except serve.AppError as e:
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
        st.markdown("\n".join(f"- `{r.sid}`  p = {r.probability:.3f} ({r.products} product{'s' * (r.products != 1)})" for r in paths.head(10).itertuples()),
                    help="Each path is a level-1, level-2, level-3 code; probabilities are the model's path probabilities.")
        tree = res.tree()
        if not tree.empty:
            fig = px.sunburst(tree, ids="id", parents="parent", names="label", values="probability", branchvalues="total")
            fig.update_layout(margin=dict(t=0, l=0, r=0, b=0), height=320)
            st.plotly_chart(fig, key="sunburst")
    with right:
        st.subheader("Products by cluster")
        for h in res.hits[:5]:
            with st.expander(f"{'-'.join(map(str, h.sid))}: {len(h.products)} product{'s' * (len(h.products) != 1)}"):
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


def codebooks_page(path: str) -> None:
    n = st.slider("Products on the map", 200, 3000, 1000, step=100, key="umap_n")
    df = codebook_points(path, n)
    color = st.radio("Colour by", ["sid_1", "sid_2", "top_category"], horizontal=True, key="umap_color")
    st.plotly_chart(px.scatter(df, x="x", y="y", color=df[color].astype(str), hover_name="title", height=520),
                    key="umap")
    levels = [c for c in df.columns if c.startswith("sid_")]
    c1, c2 = st.columns(2)
    sizes = df.groupby(levels).size().rename("products").reset_index()
    c1.plotly_chart(px.histogram(sizes, x="products", title="Products per SID (sampled)"), key="sizes")
    usage = [{"level": c, "codes used": df[c].nunique()} for c in levels]
    c2.dataframe(usage, hide_index=True, key="usage")


def training_page(path: str) -> None:
    ws = serve.open_workspace(path)
    curves = serve.stage_curves(ws)
    if curves.empty:
        st.info("No generator training in this workspace's logbook yet.")
    else:
        metric = st.selectbox("Metric", sorted(curves["metric"].unique()), key="train_metric",
                              index=sorted(curves["metric"].unique()).index("recall@50") if "recall@50" in set(curves["metric"]) else 0)
        d = curves[curves["metric"] == metric]
        st.plotly_chart(px.line(d, x="step", y="value", color="stage", line_group="run_id", markers=True, height=380), key="stages")
    rl = serve.rl_curves(ws)
    st.subheader("Stage 4: GRPO vs EG-GRPO")
    if rl.empty:
        st.info("No RL runs yet: `workbench bench rl`.")
        return
    metric = st.selectbox("Diagnostic", sorted(rl["metric"].unique()), key="rl_metric")
    d = rl[rl["metric"] == metric]
    st.plotly_chart(px.line(d, x="step", y="value", color="run", line_group="run_id", height=380), key="rl")


def beam_page(path: str) -> None:
    curves, choice = serve.beam_sweep(serve.open_workspace(path))
    if curves.empty:
        st.info("No width sweep yet: `workbench bench beam`.")
        return
    batch = st.selectbox("Batch size", sorted(curves["batch"].unique()), key="beam_batch")
    d = curves[curves["batch"] == batch].sort_values("width")
    recall = [c for c in d.columns if c.startswith("recall@")][0]
    c1, c2 = st.columns(2)
    c1.plotly_chart(px.line(d, x="width", y=recall, color="ids", markers=True, log_x=True), key="beam_recall")
    c2.plotly_chart(px.line(d, x="width", y="p50_ms", color="ids", markers=True, log_x=True), key="beam_latency")
    if not choice.empty:
        st.dataframe(choice.drop(columns=["bench"]), hide_index=True, key="beam_choice")


def sql_page(path: str) -> None:
    ws = serve.open_workspace(path)
    sql = st.text_area("SQL (read-only) over the logbook: runs, metrics, evals, bench, served",
                       "SELECT kind, name, status, started_at FROM runs ORDER BY started_at DESC LIMIT 20", key="sql")
    if st.button("Run", key="run_sql"):
        try:
            df, more = serve.run_sql(ws, sql)
        except serve.AppError as e:
            st.error(str(e))
            return
        st.dataframe(df, hide_index=True, key="sql_result")
        if more:
            st.caption(f"The first {len(df):,} rows: the query returns more (add a LIMIT or an aggregate).")


def ab_page(path: str) -> None:
    df, run = serve.ab_results(serve.open_workspace(path))
    if df.empty:
        st.info("No simulated A/B yet (synthetic workspaces): `workbench ab --arms generator,bm25,dense` "
                "(add `--ranker oracle` to order the pages by the simulator's truth).")
        return
    st.caption(f"{run['name']} ({run['run_id']}): {int(df['sessions'].iloc[0]):,} held-out sessions, 95% paired bootstrap intervals")
    metric = st.radio("Per session", ["purchases", "gmv", "clicks", "ctr", "cvr"], horizontal=True, key="ab_metric")
    fig = px.bar(df, x="arm", y=metric, error_y=df[f"{metric}_hi"] - df[metric], error_y_minus=df[metric] - df[f"{metric}_lo"],
                 height=380)
    st.plotly_chart(fig, key="ab_bars")
    shares = df[df["arm"].str.startswith("+")].melt(id_vars="arm", value_vars=[f"added_{k}_share" for k in serve.PAPER_SHARES],
                                                   var_name="of", value_name="share")
    paper = pd.DataFrame({"arm": "paper (online)", "of": [f"added_{k}_share" for k in serve.PAPER_SHARES],
                          "share": list(serve.PAPER_SHARES.values())})
    st.plotly_chart(px.bar(pd.concat([shares, paper]), x="arm", y="share", color="of", barmode="group", height=340,
                           title="Exposures, clicks, purchases going to products only the channel found (the paper: all its channel retrieved)"),
                    key="ab_shares")
    st.dataframe(df, hide_index=True, key="ab_table")


PAGES = {"Search": search_page, "Codebooks": codebooks_page, "Training": training_page, "Beam width": beam_page,
         "A/B": ab_page, "SQL": sql_page}

with st.sidebar:
    st.title("workbench")
    path = st.text_input("Workspace", str(default_path()), key="workspace")
    page = st.radio("Page", list(PAGES), key="page")
try:
    serve.open_workspace(path)
    PAGES[page](path)
except Exception as e:  # the page's one boundary (Streamlit's rerun and stop are not Exceptions)
    st.error(serve.page_error(e))
