"""The funnel simulator (data/market.py) and the simulated A/B (eval/ab.py)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from workbench import Workspace, metrics
from workbench.cli import main
from workbench.data.market import Market, MarketError
from workbench.eval.ab import aa_false_positives, dedupe, member, summarise
from workbench.eval.config import ABConfig
from workbench.pipeline import SAMPLE_DATA


@pytest.fixture(scope="module")
def market():
    return Market.from_workspace(Workspace(SAMPLE_DATA))


def test_expectations_match_the_logs_own_rates(market):
    """The log is one draw of the same model, so on its own pages the expected impressions, clicks and
    purchases per session must match the logged ones within 4 standard errors of the logged mean."""
    log = Workspace(SAMPLE_DATA).table("search_log")
    s, pages = market.logged_pages(log)
    e = market.expected(s, pages)
    for key, col in (("impressions", "impressed"), ("clicks", "clicked"), ("purchases", "purchased")):
        per = log.groupby("session_id")[col].sum().to_numpy()
        assert abs(e[key].mean() - per.mean()) < 4 * per.std() / np.sqrt(len(per)), key
    assert (e["purchases"] <= 1 + 1e-9).all() and (e["buy"] <= e["click"] + 1e-12).all() and (e["click"] <= e["seen"]).all()


def test_closed_form_equals_the_sampler(market):
    """E[purchases] = sum_i seen_i c_i b_i prod_{j<i} (1 - c_j b_j) against 4,000 draws of `sample`."""
    s = np.repeat(np.arange(0, 40, 4), 400)  # 10 sessions, 400 draws each
    legacy = market.legacy(20)[market.sess["qid"][s]]
    e = market.expected(s[::400], legacy[::400])
    draws = market.sample(s, legacy, seed=3)
    for key, col in (("clicks", "clicked"), ("purchases", "purchased"), ("impressions", "impressed")):
        got = draws[col].sum(1).reshape(10, 400).mean(1)
        se = draws[col].sum(1).reshape(10, 400).std(1) / np.sqrt(400) + 1e-3
        assert (np.abs(got - e[key]) < 5 * se).all(), (key, got, e[key])
    assert (draws["purchased"].sum(1) <= 1).all()


def test_a_workspace_without_a_simulator_is_refused_with_the_reason(market, sample_ws, tmp_path):
    ws = Workspace(tmp_path / "real")
    ws.write_tables({"products": pd.DataFrame({"product_id": ["a"], "title": ["x"]})}, meta={"source": "csv"})
    with pytest.raises(MarketError, match="not a synthetic marketplace: a simulated A/B replays pages through"):
        Market.from_workspace(ws)
    r = CliRunner().invoke(main, ["-w", str(ws.path), "ab", "--ranker", "oracle"])
    assert r.exit_code == 1 and "only a synthetic workspace" in r.output, r.output
    assert not ws.logbook_path.exists()  # refused before any run is logged
    sample_ws.table_path("truth_users").unlink()
    with pytest.raises(MarketError, match="has no truth_users"):
        Market.from_workspace(sample_ws)
    ws2 = Workspace(shutil.copytree(SAMPLE_DATA, tmp_path / "edited"))
    products = ws2.table("products")
    ws2.write_tables({"products": products.assign(title=products["title"].str.upper())})
    with pytest.raises(MarketError, match="not the marketplace its synth settings generate"):
        Market.from_workspace(ws2)
    with pytest.raises(ValueError, match="pages must be"):
        market.expected(np.array([0, 1]), np.zeros((3, 20), int))
    with pytest.raises(ValueError, match="product rows must be"):
        market.expected(np.array([0]), np.full((1, 2), 10**6))


def test_dedupe_and_member():
    rows = np.array([[3, 1, 3, -1, 1], [2, 2, 2, 5, -1]])
    assert dedupe(rows).tolist() == [[3, 1, -1, -1, -1], [2, -1, -1, 5, -1]]
    assert member(np.array([[1, 4, -1]]), np.array([[4, -1, 7]])).tolist() == [[False, True, False]]


class ToyMarket:
    """Per-session outcomes fixed by the page's first product row (a stand-in for the funnel)."""

    clickbait = np.zeros(10, bool)

    def __init__(self, outcomes, qid=None):
        self.outcomes = outcomes
        self.sess = {"qid": np.arange(len(next(iter(outcomes.values())))) if qid is None else qid}

    def expected(self, s, page):
        v = self.outcomes[int(page[0, 0])]
        z = np.zeros((len(s), page.shape[1]))
        return {"impressions": np.full(len(s), 5.0), "clicks": v, "purchases": v / 2, "gmv": 10 * v, "seen": z, "click": z, "buy": z}


def test_paired_intervals_separate_a_small_shift_from_session_noise():
    """Sessions vary a lot (clicks 0..4), the treatment adds exactly +2% to every session: each arm's own
    interval is wide, the paired interval of the difference is tight around +2%."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 4, 500)
    market = ToyMarket({0: base, 1: base * 1.02})
    pages = {"control": np.zeros((500, 3), int), "+x": np.ones((500, 3), int)}
    added = {k: np.zeros((500, 3), bool) for k in pages}
    df = summarise(market, np.arange(500), pages, added, ABConfig(aa_splits=0)).set_index("arm")
    wide = df.loc["control", "clicks_hi"] - df.loc["control", "clicks_lo"]
    assert wide > 0.15 and df.loc["control", "clicks_lo"] < df.loc["+x", "clicks"] < df.loc["control", "clicks_hi"]
    assert df.loc["+x", "d_clicks"] == pytest.approx(2.0) and df.loc["+x", "d_clicks_lo"] == pytest.approx(2.0, abs=1e-6)
    assert df.loc["+x", "d_gmv_hi"] == pytest.approx(2.0, abs=1e-6)


def test_intervals_take_whole_queries_and_the_a_a_check_holds_its_nominal_rate():
    """200 queries x 8 sessions whose outcomes share a per-query effect: leaving out whole queries widens
    the interval against leaving out sessions (which would treat 8 sessions as 8 independent draws), and
    the A/A false-positive rate of the procedure stays near the nominal 5%."""
    rng = np.random.default_rng(3)
    qid = np.repeat(np.arange(200), 8)
    v = np.repeat(rng.gamma(2.0, 0.5, 200), 8) + rng.normal(0, 0.1, len(qid))  # most variance between queries
    pages = {"control": np.zeros((len(qid), 3), int)}
    added = {"control": np.zeros((len(qid), 3), bool)}
    clustered = summarise(ToyMarket({0: v}, qid), np.arange(len(qid)), pages, added, ABConfig(aa_splits=0))
    flat = summarise(ToyMarket({0: v}), np.arange(len(qid)), pages, added, ABConfig(aa_splits=0))
    width = {n: float(d["clicks_hi"].iloc[0] - d["clicks_lo"].iloc[0]) for n, d in (("clustered", clustered), ("flat", flat))}
    assert width["clustered"] > 2 * width["flat"], width
    assert 0.02 <= aa_false_positives(v, qid, splits=1000, seed=1) <= 0.075


def test_a_few_heavy_queries_widen_the_interval_and_keep_the_a_a_rate_nominal():
    """Query sizes as skewed as the 30,000-product marketplace's test split (Zipf, one query with 191
    sessions): the t quantile takes the effective number of queries from their sizes, so the A/A rate
    holds at or below 5%; with the normal quantile (as if every query counted) it runs above."""
    rng = np.random.default_rng(0)
    sizes = np.minimum(rng.zipf(2.2, 1500), 191)
    sizes[0] = 191
    qid = np.repeat(np.arange(len(sizes)), sizes)
    v = np.repeat(rng.gamma(0.5, 1.4, len(sizes)), sizes) * rng.gamma(4, 0.25, len(qid))  # skewed per-query means
    rate = aa_false_positives(v, qid, splits=1500, seed=0)
    sums, counts = metrics.cluster_sums(qid, v)
    reps = metrics.leave_one_out_ratio(sums, counts)
    lo, hi = metrics.jackknife_interval(sums.sum() / counts.sum(), reps, counts)
    se = np.sqrt((len(reps) - 1) / len(reps) * ((reps - reps.mean()) ** 2).sum())
    assert (hi - lo) / (2 * se) > 2.05  # few effective queries: a t quantile well above 1.96
    assert 0.01 <= rate <= 0.045, rate


def test_ranker_agreement_measures_rank_agreement_and_the_rating_of_added_products():
    from workbench.eval.ab import ranker_agreement

    rng = np.random.default_rng(0)
    truth = rng.uniform(0.01, 0.2, (50, 8))
    added = np.zeros((50, 8), bool)
    added[:, 6:] = True
    same = ranker_agreement(truth.copy(), truth, added)
    assert same["ranker_spearman"] == pytest.approx(1.0) and same["ranker_added_bias"] == pytest.approx(1.0)
    doubled = ranker_agreement(np.where(added, 2 * truth, truth), truth, added)
    assert doubled["ranker_added_bias"] == pytest.approx(2.0) and doubled["ranker_spearman"] < 1
    score = np.where(added, truth, -truth)  # reversed on the legacy products, and empty slots ignored
    score[:, 0] = -np.inf
    assert ranker_agreement(score, truth, added)["ranker_spearman"] < 0
    none = ranker_agreement(truth, truth, np.zeros((50, 8), bool))
    assert np.isnan(none["ranker_added_bias"]) and none["ranker_spearman"] == pytest.approx(1.0)


def test_jackknife_interval_on_known_cases():
    # 10 clusters of one unit, values 0 and 2 alternating: the jackknife se is the classic s/sqrt(n), t with n-1 df
    x = np.array([0.0, 2.0] * 5)
    loo = (x.sum() - x) / (len(x) - 1)
    lo, hi = metrics.jackknife_interval(x.mean(), loo, np.ones(10))
    from scipy.stats import t
    half = t.ppf(0.975, 9) * x.std(ddof=1) / np.sqrt(10)
    assert (lo, hi) == pytest.approx((1 - half, 1 + half))
    # the leave-one-out ratio of sums, against leaving each group out by hand
    s, c = metrics.cluster_sums([3, 1, 3, 2, 1], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.tolist() == [7.0, 4.0, 4.0] and c.tolist() == [2.0, 1.0, 2.0]
    assert metrics.leave_one_out_ratio(s, c) == pytest.approx([8 / 3, 11 / 4, 11 / 3])
    # two independent samples add their variances; a constant statistic has zero width; one cluster has none
    one = metrics.jackknife_interval(1.0, loo, np.ones(10))
    two = metrics.jackknife_interval(1.0, [loo, loo], [np.ones(10), np.ones(10)])
    assert two[1] - two[0] > 1.3 * (one[1] - one[0])
    assert metrics.jackknife_interval(0.5, np.full(4, 0.5), np.ones(4)) == (0.5, 0.5)
    assert all(np.isnan(metrics.jackknife_interval(0.5, np.array([0.5]), np.ones(1))))
    assert all(np.isnan(metrics.jackknife_interval(0.5, np.array([0.5, np.inf]), np.ones(2))))
    with pytest.raises(ValueError, match="one size per replicate"):
        metrics.jackknife_interval(0.5, np.ones(3), np.ones(2))


def test_bad_ab_settings():
    for kw, msg in [({"arms": ()}, "distinct channel names"), ({"arms": ("control",)}, "always run"), ({"arms": ("dense+",)}, "joined by"),
                    ({"aa_splits": -1}, "aa_splits"),
                    ({"recall": 0}, ">= 1"), ({"ranker": "magic"}, "ranker one of")]:
        with pytest.raises(ValueError, match=msg):
            ABConfig(**kw)


@pytest.fixture(scope="module")
def ranked(trained, tmp_path_factory):
    """A copy of the trained tiny workspace with a ranker."""
    from workbench.rl.ranker import train_workspace

    ws = Workspace(shutil.copytree(trained[0].path, tmp_path_factory.mktemp("ab") / "ws"))
    train_workspace(ws, "hashing-64", epochs=2, progress=False)
    return ws


@pytest.mark.slow
def test_ab_end_to_end_with_the_ranker_and_the_oracle(ranked):
    ws = ranked
    got = {}
    for ranker in ("model", "oracle"):
        r = CliRunner().invoke(main, ["-w", str(ws.path), "ab", "--arms", "generator,bm25,generator@anonymous", "--ranker", ranker,
                                      "--aa-splits", "200", "--json"])
        assert r.exit_code == 0, r.output
        df = got[ranker] = pd.DataFrame(json.loads(r.output)).set_index("arm")
        assert list(df.index) == ["logged", "control", "+generator", "+bm25", "+generator@anonymous"]
        assert df.loc["+generator", "purchases"] != df.loc["+generator@anonymous", "purchases"]  # the user's context is used
        assert (df["purchases_lo"] <= df["purchases"]).all() and (df["purchases"] <= df["purchases_hi"]).all()
        assert df.loc["control", "added_exposures_share"] == 0 and 0 < df.loc["+generator", "added_exposures_share"] <= 1
        assert np.isnan(df.loc["control", "d_purchases"]) and not np.isnan(df.loc["+bm25", "d_purchases"])
        if ranker == "model":  # the learned ranker against the truth, per arm
            assert df.loc[["control", "+bm25"], "ranker_spearman"].between(-1, 1).all() and df.loc["+bm25", "ranker_added_bias"] > 0
        else:
            assert "ranker_spearman" not in df
    logged = ws.logbook().query("SELECT case_name, metric, value FROM bench WHERE bench = 'ab' AND metric = 'purchases'")
    assert set(logged["case_name"]) == {"logged", "control", "+generator", "+bm25", "+generator@anonymous"} and len(logged) == 10
    r = CliRunner().invoke(main, ["-w", str(ws.path), "ab", "--arms", "generator@nobody", "--ranker", "oracle"])
    assert r.exit_code == 1 and "the only variant is @anonymous" in r.output
    # the oracle orders by the truth: on the same recall set it sells more than the learned ranker's order
    assert got["oracle"].loc["control", "purchases"] > got["model"].loc["control", "purchases"]
    assert got["oracle"].loc["logged", "purchases"] == got["model"].loc["logged", "purchases"]  # the log's pages: no ranker
    # several channels in one arm, each compared with the arm that has one of them
    r = CliRunner().invoke(main, ["-w", str(ws.path), "ab", "--arms", "bm25,bm25+generator", "--baseline", "+bm25", "--ranker", "oracle",
                                  "--aa-splits", "40", "--json"])
    assert r.exit_code == 0, r.output
    df = pd.DataFrame(json.loads(r.output)).set_index("arm")
    assert list(df.index) == ["logged", "control", "+bm25", "+bm25+generator"] and np.isnan(df.loc["+bm25", "d_purchases"])
    assert df.loc["+bm25+generator", "purchases"] == pytest.approx(df.loc["+bm25", "purchases"] * (1 + df.loc["+bm25+generator", "d_purchases"] / 100))
    assert df.loc["+bm25+generator", "added_exposures_share"] >= df.loc["+bm25", "added_exposures_share"] - 1e-9
    assert 0 <= df["aa_false_positive_rate"].iloc[0] <= 0.15
    r = CliRunner().invoke(main, ["-w", str(ws.path), "ab", "--arms", "bm25", "--baseline", "+dense"])
    assert r.exit_code != 0 and "baseline must be control, logged or an arm" in r.output


@pytest.mark.slow
def test_the_oracle_judge_scores_clusters_with_the_truth_and_stage4_is_judged_by_the_ab(ranked):
    import torch

    from workbench.rl.config import RLConfig
    from workbench.rl.train import environment, searches

    ws = ranked
    env = environment(ws, "generator-stage3", RLConfig(judge="oracle"), progress=False)
    s = searches(ws, "train").head(3)
    sids = torch.as_tensor(env.retriever.index.sids[:2], dtype=torch.long)[None].expand(3, 2, -1)  # (3, 2, L)
    scored = env.judge.score(sids, env.judge.feats.users(s["user_id"]), env.qvecs[:3], torch.full((3, 1), -1),
                             torch.full((3, 1), -1), s["session_id"].to_numpy() - 1)
    market = env.judge.oracle
    for b in range(3):
        rows = market.rows(env.retriever.lookup(0))[None]
        c, buy = market.value(np.array([s["session_id"].iloc[b] - 1]), rows)
        want = np.sort(c[0])[::-1][: scored.pctr.shape[-1]]
        assert np.allclose(scored.pctr[b, 0, : len(want)].numpy(), want, atol=1e-6)
    with pytest.raises(ValueError, match="needs each search's session"):
        env.judge.score(sids, env.judge.feats.users(s["user_id"]), env.qvecs[:3], torch.full((3, 1), -1), torch.full((3, 1), -1))

    r = CliRunner().invoke(main, ["-w", str(ws.path), "bench", "stage4", "--seeds", "0", "--judges", "oracle", "--algos", "eg-grpo",
                                  "--steps", "2", "--prompts", "4", "--group", "2", "--eval-every", "2",
                                  "--embedder", "hashing-64", "--reward", "purchase=0", "--temperature", "2"])
    assert r.exit_code == 0, r.output
    rows = ws.logbook().query("SELECT case_name, metric, value FROM bench WHERE bench LIKE 'stage4-ab (mean%' AND metric = 'd_purchases'")
    assert set(rows["case_name"]) == {"model pages, oracle judge, eg-grpo", "oracle pages, oracle judge, eg-grpo"}
    # a non-default reward and temperature name their models, so they do not overwrite the default study's
    assert (ws.path / "gen" / "generator-eg-grpo-oracle-click1-purchase0-exposure0.2-valid1-gt1-t2-steps2-s0.safetensors").exists()


def test_the_query_oracle_averages_the_truth_over_the_users_sessions_draw(market):
    """Known answers: users who are all alike leave nothing to know (the query oracle's truth is the
    user oracle's, exactly); otherwise its P(click) is the population's, E_u[c] over users weighted
    by their sessions, here by hand over every user, against 4,000 draws."""
    from dataclasses import replace

    s = np.arange(0, 60, 6)
    cands = market.legacy(20)[market.sess["qid"][s]]
    same = replace(market, users={**market.users, "fav": np.repeat(market.users["fav"][:1], len(market.users["fav"]), 0),
                                  "sens": np.full_like(market.users["sens"], market.users["sens"][0])})
    for got, want in zip(same.value(s, cands, knows_user=False, draws=3), same.value(s, cands)):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    c_user, _ = market.value(s, cands)
    c_query, b_query = market.value(s, cands, knows_user=False, draws=4000, seed=1)
    weight = np.bincount(market.sess["user"], minlength=len(market.users["fav"])) / market.cfg.n_sessions
    by_hand = np.zeros(cands.shape)
    for u in np.flatnonzero(weight):
        user = market.sess["user"].copy()
        user[s] = u
        by_hand += weight[u] * replace(market, sess={**market.sess, "user": user}).value(s, cands)[0]
    assert np.abs(c_query - by_hand).max() < 0.01 and np.abs(c_user - by_hand).max() > 0.02  # the user moves it; the draws average it away
    assert ((0 <= b_query) & (b_query <= 1)).all()
    with pytest.raises(ValueError, match="draws must be >= 1"):
        market.value(s, cands, knows_user=False, draws=0)


def test_engagements_before_count_only_earlier_clicks_and_purchases():
    from workbench.data.funnel import engagements_before

    t = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-02", "2026-01-03", "2026-01-01"], utc=True)
    log = pd.DataFrame({"user_id": ["a", "a", "a", "a", "b"], "time": t, "clicked": [True, True, False, False, True],
                        "purchased": [False, True, False, True, False]})
    got = engagements_before(log, ["a", "a", "a", "b", "nobody-with-a-long-id"],
                             pd.to_datetime(["2026-01-02", "2026-01-03", "2026-01-04", "2026-01-01", "2026-01-05"], utc=True))
    assert got.tolist() == [1, 2, 3, 0, 0]  # the same time is not before; an impression without a click is not an engagement


@pytest.mark.slow
def test_headroom_is_zero_without_user_preferences_and_positive_with_them(ranked, monkeypatch):
    from dataclasses import replace

    from workbench.eval.headroom import headroom

    cfg = ABConfig(arms=("bm25",), draws=4, split="test")
    df = headroom(ranked, cfg, echo=lambda *_: None).set_index(["recall_set", "segment"])
    assert {"control", "+bm25"} == set(df.index.get_level_values(0)) and ("control", "all") in df.index
    assert set(df.index.get_level_values(1)) <= {"all", "cold", "warm", "heavy"}
    assert df.loc[("control", "all"), "d_purchases"] > 0  # knowing the favourite brands and the price sensitivity sells more
    parts = df.loc["control"].drop("all")
    assert parts["sessions"].sum() == df.loc[("control", "all"), "sessions"]
    real = Market.from_workspace
    monkeypatch.setattr(Market, "from_workspace", classmethod(lambda cls, ws: (lambda m: replace(
        m, users={**m.users, "fav": np.zeros_like(m.users["fav"]) - 1, "sens": np.ones_like(m.users["sens"])}))(real(ws))))
    flat = headroom(ranked, cfg, echo=lambda *_: None).set_index(["recall_set", "segment"])
    assert np.allclose(flat["d_purchases"], 0) and np.allclose(flat["purchases_query"], flat["purchases_user"])
    r = CliRunner().invoke(main, ["-w", str(ranked.path), "headroom", "--arms", "bm25", "--draws", "0"])
    assert r.exit_code != 0 and "draws must be >= 1" in r.output


@pytest.mark.slow
def test_ab_by_activity_splits_the_same_sessions_and_keeps_the_whole(ranked):
    from workbench.eval.ab import run_ab

    cfg = ABConfig(arms=("bm25",), ranker="oracle", aa_splits=0)
    whole = run_ab(ranked, cfg, echo=lambda *_: None).set_index("arm")
    parts = run_ab(ranked, ABConfig(arms=("bm25",), ranker="oracle", aa_splits=0, by_activity=True, heavy=3), echo=lambda *_: None)
    assert parts["users"].iloc[0] == "all" and set(parts["users"]) <= {"all", "cold", "warm", "heavy"} and len(set(parts["users"])) >= 3
    top = parts[parts["users"] == "all"].set_index("arm")
    pd.testing.assert_frame_equal(top.drop(columns="users"), whole)  # the whole is the run without segments
    per = parts[(parts["users"] != "all") & (parts["arm"] == "control")]
    assert per["sessions"].sum() == whole.loc["control", "sessions"]  # every session in exactly one segment
    # each segment's purchases per session, weighted by its sessions, give back the whole's
    assert (per["purchases"] * per["sessions"]).sum() / per["sessions"].sum() == pytest.approx(whole.loc["control", "purchases"])
    r = CliRunner().invoke(main, ["-w", str(ranked.path), "ab", "--arms", "bm25", "--ranker", "oracle", "--by-activity",
                                  "--heavy", "3", "--aa-splits", "0"])
    assert r.exit_code == 0 and "all users (" in r.output and "heavy users (" in r.output, r.output
    r = CliRunner().invoke(main, ["-w", str(ranked.path), "headroom", "--arms", "bm25", "--draws", "2"])
    assert r.exit_code == 0 and "user's worth %" in r.output and "+bm25" in r.output, r.output
    logged = ranked.logbook().query("SELECT case_name, value FROM bench WHERE bench = 'headroom' AND metric = 'd_purchases'")
    assert "control all" in set(logged["case_name"]) and "+bm25 all" in set(logged["case_name"])
    r = CliRunner().invoke(main, ["-w", str(ranked.path), "ab", "--arms", "bm25", "--heavy", "1"])
    assert r.exit_code != 0 and "heavy >= 2" in r.output
