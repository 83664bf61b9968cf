"""A simulated online A/B of recall channels on the synthetic marketplace (`workbench.data.market`).

The test queries' sessions (their queries never trained anything) are replayed through the funnel
that made the log. The arms differ only by their recall set; one ranker orders every page:

    logged   the page the legacy engine showed (its BM25 + popularity order): checks the simulator
             against the log's own clicks and purchases
    control  the legacy engine's top `recall` products, ordered by the ranker, cut at the page size
    +X       control's recall set plus channel X's top `supplement` products (X: a generator
             checkpoint by name, `bm25` or `dense`; `X+Y`: each one's top `supplement`), ordered by the same
             ranker, cut at the same length;
             `<generator>@anonymous` decodes without the session's user (personalisation's own A/B)

which is how the paper deploys generative retrieval: one more recall channel, merged before ranking.

An arm may hold several channels (`dense+generator`: both merged into control's recall set), and the
differences are taken from a baseline arm (`--baseline +dense` asks what the generator adds to a
recall set that already has dense retrieval).

Per arm, from the funnel's expectations (not one noisy draw): clicks, purchases and GMV per session,
CTR (clicks per impression), CVR (purchases per click), the click-bait share of exposures, and the
share of exposures, clicks and purchases that went to products only the arm's channels retrieved
(`added_*`). Intervals are 95% jackknife t intervals over whole queries (`metrics.jackknife_interval`:
a channel's output is per query, and a query has many sessions), paired: an arm's difference from the
baseline (`d_*`, in %) is recomputed with the same query left out of both arms. A few queries hold
most sessions (on the 30,000-product marketplace one query has 191 of 7,603), so the t quantile takes
the effective number of queries from their session counts, not their count; a percentile bootstrap
ran narrow there (A/A 8.5-9.5% at 200 splits).
Beside the table, the A/A false-positive rate of that procedure (`aa_false_positives`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from workbench import metrics
from workbench.baselines import BM25, Dense
from workbench.data import splits
from workbench.data.funnel import engagements_before
from workbench.data.market import Market
from workbench.embed import embed_workspace, get_embedder, product_texts
from workbench.eval.config import ABConfig
from workbench.gen.retrieve import Channel, Generative, Retriever
from workbench.rl.ranker import from_workspace
from workbench.sid.store import workspace_embedder

BASELINES = ("bm25", "dense")
PER_SESSION = ("clicks", "purchases", "gmv")
RATIOS = {"ctr": ("clicks", "impressions"), "cvr": ("purchases", "clicks")}


def dedupe(rows: np.ndarray) -> np.ndarray:
    """(S, C) product rows -> the same with repeats within a row replaced by -1 (first kept)."""
    order = np.argsort(rows, axis=1, kind="stable")
    sorted_ = np.take_along_axis(rows, order, 1)
    dup = np.zeros_like(rows, bool)
    np.put_along_axis(dup, order, np.concatenate([np.zeros((len(rows), 1), bool), sorted_[:, 1:] == sorted_[:, :-1]], 1), 1)
    return np.where(dup, -1, rows)


def member(pages: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """(S, K) rows, (S, C) rows -> (S, K): is pages[s, k] among sets[s] (ignoring -1)?"""
    return ((pages[:, :, None] == sets[:, None, :]) & (pages[:, :, None] >= 0)).any(-1)


class Pager:
    """Orders recall sets and cuts pages: `scores` of (S, C) product rows, then `page` -> (S, K). The
    workspace's ranker scores pCTR (x pCVR); the oracle scores the simulator's true P(click)
    (x P(buy | click)) at position 1, which `truth` gives for any candidates; oracle-query the same
    averaged over users (`Market.value` without the user)."""

    def __init__(self, ws, market: Market, sessions: np.ndarray, cfg: ABConfig, device: str = "cpu"):
        self.market, self.sessions, self.order, self.k, self.device = market, sessions, cfg.order, market.cfg.page_size, device
        self.oracle, self.knows_user, self.draws = cfg.ranker.startswith("oracle"), cfg.ranker == "oracle", cfg.draws
        if not self.oracle:
            self.model, self.feats, qvecs = from_workspace(ws, device, progress=False)
            qrows = pd.Index(ws.table("queries")["query_id"]).get_indexer(market.sess["qid"][sessions] + 1)
            self.qvecs = torch.as_tensor(qvecs[qrows], dtype=torch.float32)  # (S, D)
            self.users = self.feats.users(market.user_ids(sessions))
            self.to_feats = self.feats.product_index.get_indexer(pd.Index(market.product_ids))  # market row -> ranker row

    @torch.no_grad()
    def scores(self, cands: np.ndarray, chunk: int = 65536) -> np.ndarray:
        if self.oracle:
            ctr, cvr = self.market.value(self.sessions, cands, self.knows_user, self.draws)
            return np.where(cands >= 0, ctr * cvr if self.order == "ctcvr" else ctr, -np.inf)
        rs, cs = np.nonzero(cands >= 0)
        score = np.full(cands.shape, -np.inf)
        for i in range(0, len(rs), chunk):
            r, c = rs[i:i + chunk], cs[i:i + chunk]
            f = self.feats.rows(self.users[r], self.qvecs[r], torch.as_tensor(self.to_feats[cands[r, c]]))
            ctr, cvr = self.model({k: v.to(self.device) for k, v in f.items()})
            s = torch.sigmoid(ctr) * (torch.sigmoid(cvr) if self.order == "ctcvr" else 1)
            score[r, c] = s.cpu().numpy()
        return score

    def page(self, cands: np.ndarray, score: np.ndarray) -> np.ndarray:
        top = np.argsort(-score, axis=1, kind="stable")[:, : self.k]  # (S, K)
        return np.where(np.take_along_axis(score, top, 1) > -np.inf, np.take_along_axis(cands, top, 1), -1)

    def truth(self, cands: np.ndarray) -> np.ndarray:
        """What the oracle would score each candidate: the simulator's P(click) (x P(buy | click))."""
        ctr, cvr = self.market.value(self.sessions, cands)
        return ctr * cvr if self.order == "ctcvr" else ctr


def ranker_agreement(score: np.ndarray, truth: np.ndarray, added: np.ndarray) -> dict[str, float]:
    """How the learned ranker's scores of one arm's candidates (S, C; -inf for empty slots) agree with
    the truth (S, C): `ranker_spearman`, the mean over sessions of the rank correlation within the
    session's candidates; `ranker_added_bias`, the ranker's score over the truth on the products the
    arm's channels added, divided by the same on the legacy recall set (1: rated alike; 2: what the
    channels added is rated twice as high as it is worth, against the legacy products)."""
    from scipy.stats import rankdata

    ok = np.isfinite(score)
    rho = []
    for s, t, m in zip(score, truth, ok):
        if m.sum() > 2 and np.ptp(s[m]) > 0 and np.ptp(t[m]) > 0:
            rho.append(np.corrcoef(rankdata(s[m]), rankdata(t[m]))[0, 1])
    legacy, extra = ok & ~added, ok & added
    bias = ((score[extra].sum() / truth[extra].sum()) / (score[legacy].sum() / truth[legacy].sum())
            if extra.any() and legacy.any() and truth[extra].sum() > 0 and truth[legacy].sum() > 0 else float("nan"))
    return {"ranker_spearman": float(np.mean(rho)) if rho else float("nan"), "ranker_added_bias": float(bias)}


def channel_rows(ws, market: Market, name: str, sessions: np.ndarray, cfg: ABConfig, device: str) -> np.ndarray:
    """Channel `name`'s top `cfg.supplement` product rows for each session's query (-1 pads). (S, supplement)"""
    texts = [market.sess["qtexts"][q] for q in market.sess["qid"][sessions]]
    products = ws.table("products")
    if name == "bm25":
        lists = BM25(products["product_id"].tolist(), product_texts(products)).search(texts, cfg.supplement)
    elif name == "dense":
        e = get_embedder(workspace_embedder(ws), device)
        vecs = embed_workspace(ws, e, ("products",), progress=False)["products"]
        lists = Dense(products["product_id"].tolist(), vecs, e, device).search(texts, cfg.supplement)
    else:
        name, _, mode = name.partition("@")
        if mode not in ("", "anonymous"):
            raise ValueError(f"arm {name}@{mode}: the only variant is @anonymous (decode without the user)")
        r = Retriever.from_workspace(ws, name, device)
        context = None
        if cfg.personal and mode != "anonymous" and r.model.cfg.context_vocab:
            times = market.sess["time"][sessions]
            context = torch.as_tensor(r.users(ws).ids(market.user_ids(sessions), pd.Series(times)))  # each user's history before the session
        channel = Generative(r, Channel.from_workspace(ws, cfg.channel, device), cfg.width)
        lists = [ids for ids, _ in channel.scored(texts, cfg.supplement, context)]
    out = np.full((len(sessions), cfg.supplement), -1, np.int64)
    for i, ids in enumerate(lists):
        rows = market.rows(ids[: cfg.supplement])
        out[i, : len(rows)] = rows
    return out


def run_ab(ws, cfg: ABConfig | None = None, device: str = "cpu", run=None, echo=print) -> pd.DataFrame:
    """The A/B table: one row per arm (logged, control, +each arm's channels) with values and intervals,
    differences from `cfg.baseline`, and the procedure's A/A false-positive rate."""
    cfg = cfg or ABConfig()
    market = Market.from_workspace(ws)
    sessions = replayed(ws, market, cfg.split)
    legacy = market.legacy(max(cfg.recall, market.cfg.page_size))[market.sess["qid"][sessions]]  # (S, R)
    pager = Pager(ws, market, sessions, cfg, device)
    pages = {"logged": legacy[:, : market.cfg.page_size]}
    added = {"logged": np.zeros_like(pages["logged"], bool)}
    agree = {}
    for arm, recall, cands in recall_sets(ws, market, sessions, cfg, device, echo):
        score = pager.scores(cands)
        pages[arm] = pager.page(cands, score)
        added[arm] = ~member(pages[arm], recall) & (pages[arm] >= 0)
        if not pager.oracle:  # why the learned ranker's pages sell what they sell
            agree[arm] = ranker_agreement(score, pager.truth(cands), ~member(cands, recall))
    df = summarise(market, sessions, pages, added, cfg, run, cfg.baseline, agree)
    if not cfg.by_activity:
        return df
    seg, parts = activity(ws, market, sessions, cfg.heavy), [df.assign(users="all")]
    for name in SEGMENTS[1:]:
        m = seg == name
        if len(np.unique(market.sess["qid"][sessions[m]])) >= 2:  # an interval needs two queries
            parts.append(summarise(market, sessions[m], {a: p[m] for a, p in pages.items()}, {a: x[m] for a, x in added.items()},
                                   replace(cfg, aa_splits=0), run, cfg.baseline, case=f" ({name} users)").assign(users=name))
    return pd.concat(parts, ignore_index=True)


SEGMENTS = ("all", "cold", "warm", "heavy")  # sessions by their user's activity before them (`activity`)


def activity(ws, market: Market, sessions: np.ndarray, heavy: int) -> np.ndarray:
    """(S,) each session's segment by its user's clicks and purchases in the log strictly before it:
    cold (none), warm (fewer than `heavy`) or heavy."""
    n = engagements_before(ws.table("search_log"), market.user_ids(sessions), market.sess["time"][sessions])
    return np.where(n == 0, "cold", np.where(n < heavy, "warm", "heavy"))


def replayed(ws, market: Market, split: str) -> np.ndarray:
    """The session rows of `split`'s queries (what an A/B replays); a clear error when there are none."""
    sessions = np.flatnonzero(splits.mask(ws, market.sess["qid"] + 1, split))
    if len(sessions) == 0:
        raise ValueError(f"workspace {ws.path} has no sessions on {split} queries to replay")
    return sessions


def recall_sets(ws, market: Market, sessions: np.ndarray, cfg: ABConfig, device: str = "cpu", echo=print):
    """Yields (arm, the legacy recall set, the arm's candidates) for control and each of `cfg.arms`: the
    legacy engine's top `cfg.recall` (S, R) and, for an arm, its channels' top `cfg.supplement` merged in
    (S, R + n x supplement, repeats -1). Each channel is retrieved once, whatever the arms it is in."""
    recall = market.legacy(max(cfg.recall, market.cfg.page_size))[market.sess["qid"][sessions], : cfg.recall]  # (S, R)
    yield "control", recall, recall
    rows: dict[str, np.ndarray] = {}
    for arm in cfg.arms:
        echo(f"arm +{arm}: retrieving and ranking {len(sessions):,} sessions")
        for name in arm.split("+"):
            if name not in rows:
                rows[name] = channel_rows(ws, market, name, sessions, cfg, device)
        yield f"+{arm}", recall, dedupe(np.concatenate([recall, *(rows[name] for name in arm.split("+"))], 1))


def summarise(market: Market, sessions: np.ndarray, pages: dict, added: dict, cfg: ABConfig, run=None,
              baseline: str = "control", agree: dict | None = None, case: str = "") -> pd.DataFrame:
    """Expected outcomes per arm -> the table (values, intervals, differences from `baseline`, shares,
    and per arm `agree`'s figures: the learned ranker against the truth); logged per arm + `case`."""
    if baseline not in pages:
        raise ValueError(f"baseline {baseline!r} is not an arm: {', '.join(pages)}")
    bait = market.clickbait
    out = {}
    for arm, page in pages.items():
        e = market.expected(sessions, page)
        a = added[arm]
        out[arm] = {**{k: e[k] for k in ("impressions", *PER_SESSION)},
                    "added_exposures": (e["seen"] * a).sum(1), "added_clicks": (e["click"] * a).sum(1),
                    "added_purchases": (e["buy"] * a).sum(1),
                    "bait_exposures": (e["seen"] * np.where(page >= 0, bait[np.maximum(page, 0)], False)).sum(1)}
    keys = list(next(iter(out.values())))
    sums = {arm: dict(zip([*keys, "sessions"], metrics.cluster_sums(market.sess["qid"][sessions], *(v[k] for k in keys))))
            for arm, v in out.items()}  # per test query: each quantity's sum over its sessions, and the session count

    def stat(arm: str, num: str, den: str | None = None) -> tuple[float, np.ndarray]:
        """A ratio of sums over queries (den None: per session) and its leave-one-query-out replicates."""
        n, d = sums[arm][num], sums[arm][den or "sessions"]
        return float(n.sum() / d.sum()), metrics.leave_one_out_ratio(n, d)

    sizes = sums[baseline]["sessions"]  # each test query's session count (the same in every arm)
    rows = []
    for arm in out:
        row = {"arm": arm, "sessions": len(sessions)}
        for name, (num, den) in {**{k: (k, None) for k in PER_SESSION}, **RATIOS}.items():
            value, reps = stat(arm, num, den)
            base, base_reps = stat(baseline, num, den)
            lo, hi = metrics.jackknife_interval(value, reps, sizes)
            row |= {name: value, f"{name}_lo": lo, f"{name}_hi": hi}
            if arm != baseline:
                with np.errstate(divide="ignore", invalid="ignore"):
                    d, d_reps = 100 * (value / base - 1), 100 * (reps / base_reps - 1)
                lo, hi = metrics.jackknife_interval(d, d_reps, sizes)  # paired: both arms leave out the same query
                row |= {f"d_{name}": d, f"d_{name}_lo": lo, f"d_{name}_hi": hi}
        row |= {f"added_{k}_share": stat(arm, f"added_{k}", {"exposures": "impressions", "clicks": "clicks", "purchases": "purchases"}[k])[0]
                for k in ("exposures", "clicks", "purchases")}
        row["clickbait_exposure_share"] = stat(arm, "bait_exposures", "impressions")[0]
        row |= (agree or {}).get(arm, {})
        rows.append(row)
    fp = (aa_false_positives(out["control"]["purchases"], market.sess["qid"][sessions], cfg.aa_splits, cfg.seed)
          if cfg.aa_splits else float("nan"))
    for row in rows:
        row["aa_false_positive_rate"] = fp
    df = pd.DataFrame(rows)
    if run is not None:
        for r in rows:
            for k, val in r.items():
                if k != "arm" and not pd.isna(val):
                    run.log_bench("ab", k, float(val), case_name=r["arm"] + case)
    return df


def aa_false_positives(values: np.ndarray, groups: np.ndarray, splits: int = 2000, seed: int = 0) -> float:
    """The A/A check of the whole procedure: `splits` times, the queries are split at random into two
    halves, each half's sessions are one arm (both control), and the difference of their per-session
    means gets the same query-clustered jackknife t interval as the table (two independent samples). The
    share of splits whose 95% interval leaves out 0 is the false-positive rate: about 5% when the
    intervals are right (2,000 splits measure it to about +-0.5, one standard error)."""
    sums, counts = metrics.cluster_sums(groups, values)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(splits):
        side = rng.random(len(sums)) < 0.5
        if side.sum() < 2 or (~side).sum() < 2:
            continue  # a half with fewer than 2 queries has no interval: counted as covering
        (a, a_reps), (b, b_reps) = ((sums[h].sum() / counts[h].sum(), metrics.leave_one_out_ratio(sums[h], counts[h]))
                                    for h in (side, ~side))
        lo, hi = metrics.jackknife_interval(a - b, [a_reps - b, a - b_reps], [counts[side], counts[~side]])
        hits += not lo <= 0 <= hi
    return hits / splits


def table(df: pd.DataFrame) -> str:
    """The A/B table as text: each metric with its interval, differences from the baseline arm in %."""
    cols = {"clicks": ".3f", "purchases": ".4f", "gmv": ".2f", "ctr": ".4f", "cvr": ".4f"}  # differences: from the baseline arm
    out = pd.DataFrame({"arm": df["arm"]})
    for c, f in cols.items():
        out[c] = [f"{r[c]:{f}} [{r[c + '_lo']:{f}}, {r[c + '_hi']:{f}}]" for _, r in df.iterrows()]
    for c in ("purchases", "gmv", "clicks"):
        out[f"d_{c} %"] = ["" if pd.isna(r.get(f"d_{c}")) else f"{r[f'd_{c}']:+.2f} [{r[f'd_{c}_lo']:+.2f}, {r[f'd_{c}_hi']:+.2f}]"
                           for _, r in df.iterrows()]
    for c in ("added_exposures_share", "added_clicks_share", "added_purchases_share", "clickbait_exposure_share"):
        out[c.replace("_share", " %")] = [f"{100 * v:.1f}" for v in df[c]]
    for c, name in (("ranker_spearman", "ranker rho"), ("ranker_added_bias", "ranker added bias")):  # the learned ranker only
        if c in df:
            out[name] = ["" if pd.isna(v) else f"{v:.2f}" for v in df[c]]
    return out.to_string(index=False)
