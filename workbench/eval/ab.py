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
(`added_*`). Intervals are 95% percentile bootstraps that draw whole queries (a channel's output is per
query, and a query has many sessions), paired: every arm is evaluated on the same resamples, so an
arm's difference from the baseline (`d_*`, in %) has its own interval. Beside the table, the A/A
false-positive rate of that procedure (`aa_false_positives`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from workbench import metrics
from workbench.baselines import BM25, Dense
from workbench.data import splits
from workbench.data.market import Market
from workbench.embed import embed_workspace, get_embedder, product_texts
from workbench.eval.config import ABConfig
from workbench.gen.config import ChannelConfig
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
    """Orders recall sets and cuts pages: (S, C) product rows -> (S, K). The workspace's ranker scores
    pCTR (x pCVR); the oracle scores the simulator's true P(click) (x P(buy | click)) at position 1."""

    def __init__(self, ws, market: Market, sessions: np.ndarray, cfg: ABConfig, device: str = "cpu"):
        self.market, self.sessions, self.order, self.k, self.device = market, sessions, cfg.order, market.cfg.page_size, device
        self.oracle = cfg.ranker == "oracle"
        if not self.oracle:
            self.model, self.feats, qvecs = from_workspace(ws, device, progress=False)
            qrows = pd.Index(ws.table("queries")["query_id"]).get_indexer(market.sess["qid"][sessions] + 1)
            self.qvecs = torch.as_tensor(qvecs[qrows], dtype=torch.float32)  # (S, D)
            self.users = self.feats.users(market.user_ids(sessions))
            self.to_feats = self.feats.product_index.get_indexer(pd.Index(market.product_ids))  # market row -> ranker row

    @torch.no_grad()
    def scores(self, cands: np.ndarray, chunk: int = 65536) -> np.ndarray:
        if self.oracle:
            ctr, cvr = self.market.value(self.sessions, cands)
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

    def __call__(self, cands: np.ndarray) -> np.ndarray:
        score = self.scores(cands)
        top = np.argsort(-score, axis=1, kind="stable")[:, : self.k]  # (S, K)
        return np.where(np.take_along_axis(score, top, 1) > -np.inf, np.take_along_axis(cands, top, 1), -1)


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
        channel = Generative(r, Channel.from_workspace(ws, ChannelConfig(), device), cfg.width)
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
    sessions = np.flatnonzero(splits.mask(ws, market.sess["qid"] + 1, cfg.split))
    if len(sessions) == 0:
        raise ValueError(f"workspace {ws.path} has no sessions on {cfg.split} queries to replay")
    qid = market.sess["qid"][sessions]
    legacy = market.legacy(max(cfg.recall, market.cfg.page_size))[qid]  # (S, R)
    pager = Pager(ws, market, sessions, cfg, device)
    recall = legacy[:, : cfg.recall]
    pages = {"logged": legacy[:, : market.cfg.page_size], "control": pager(recall)}
    added = {"logged": np.zeros_like(pages["logged"], bool), "control": np.zeros_like(pages["control"], bool)}
    rows: dict[str, np.ndarray] = {}  # each channel retrieved once, whatever the arms it is in
    for arm in cfg.arms:
        echo(f"arm +{arm}: retrieving and ranking {len(sessions):,} sessions")
        for name in arm.split("+"):
            if name not in rows:
                rows[name] = channel_rows(ws, market, name, sessions, cfg, device)
        extra = np.concatenate([rows[name] for name in arm.split("+")], 1)
        pages[f"+{arm}"] = pager(dedupe(np.concatenate([recall, extra], 1)))
        added[f"+{arm}"] = member(pages[f"+{arm}"], extra) & ~member(pages[f"+{arm}"], recall)
    return summarise(market, sessions, pages, added, cfg, run, cfg.baseline)


def summarise(market: Market, sessions: np.ndarray, pages: dict, added: dict, cfg: ABConfig, run=None,
              baseline: str = "control") -> pd.DataFrame:
    """Expected outcomes per arm -> the table (values, intervals, differences from `baseline`, shares)."""
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
    qid = market.sess["qid"][sessions]
    W = metrics.clustered_bootstrap(qid, cfg.bootstrap, cfg.seed)  # (B, S): whole queries drawn, the same for every arm

    def stat(v: dict, num: str, den: str | None = None) -> tuple[float, np.ndarray]:
        if den is None:
            return float(v[num].mean()), W @ v[num] / len(sessions)
        return float(v[num].sum() / v[den].sum()), (W @ v[num]) / (W @ v[den])

    rows = []
    for arm, v in out.items():
        row = {"arm": arm, "sessions": len(sessions)}
        for name, (num, den) in {**{k: (k, None) for k in PER_SESSION}, **RATIOS}.items():
            value, boot = stat(v, num, den)
            base, base_boot = stat(out[baseline], num, den)
            row |= {name: value, f"{name}_lo": np.percentile(boot, 2.5), f"{name}_hi": np.percentile(boot, 97.5)}
            if arm != baseline:
                d = 100 * (boot / base_boot - 1)
                row |= {f"d_{name}": 100 * (value / base - 1), f"d_{name}_lo": np.percentile(d, 2.5), f"d_{name}_hi": np.percentile(d, 97.5)}
        row |= {f"added_{k}_share": stat(v, f"added_{k}", {"exposures": "impressions", "clicks": "clicks", "purchases": "purchases"}[k])[0]
                for k in ("exposures", "clicks", "purchases")}
        row["clickbait_exposure_share"] = stat(v, "bait_exposures", "impressions")[0]
        rows.append(row)
    fp = aa_false_positives(out["control"]["purchases"], qid, cfg.aa_splits, cfg.bootstrap, cfg.seed) if cfg.aa_splits else float("nan")
    for row in rows:
        row["aa_false_positive_rate"] = fp
    df = pd.DataFrame(rows)
    if run is not None:
        for r in rows:
            for k, val in r.items():
                if k != "arm" and not pd.isna(val):
                    run.log_bench("ab", k, float(val), case_name=r["arm"])
    return df


def aa_false_positives(values: np.ndarray, groups: np.ndarray, splits: int = 200, n: int = 1000, seed: int = 0) -> float:
    """The A/A check of the whole procedure: `splits` times, the queries are split at random into two
    halves, each half's sessions are one arm (both control), and the difference of their means gets the
    same query-clustered bootstrap interval as the table. The share of splits whose 95% interval leaves
    out 0 is the false-positive rate: about 5% when the intervals are right."""
    uniq, codes = np.unique(groups, return_inverse=True)
    sums, counts = np.bincount(codes, values, len(uniq)), np.bincount(codes, minlength=len(uniq)).astype(float)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(splits):
        side = rng.random(len(uniq)) < 0.5
        boot = []
        for half in (side, ~side):
            w = rng.multinomial(int(half.sum()), np.full(int(half.sum()), 1 / max(int(half.sum()), 1)), size=n)  # (n, Q_half)
            boot.append((w @ sums[half]) / (w @ counts[half]))
        d = boot[0] - boot[1]
        lo, hi = np.percentile(d, [2.5, 97.5])
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
    return out.to_string(index=False)
