"""Retrieval metrics over ranked product lists: pure functions, one number per query, then the mean.

`retrieved` is one ranked list of product ids per query; `relevant` one collection per query, either
ids or a {product id: gain} mapping (graded judgments; plain ids have gain 1). Queries without any
relevant product are left out of the means.

    recall@k   share of the query's relevant products found in the first k
    ndcg@k     DCG of the first k (gain / log2(rank + 1)) over the best possible DCG at k
    mrr        1 / rank of the first relevant product (0 if none is retrieved), over the whole list
    hit@k      1 if any relevant product is in the first k (the paper's hitrate when the relevant
               product is the one clicked or bought)

A recall channel hands a *set* to the ranker, so it is judged at a budget of products B:

    channel recall@B   share of the relevant products in the channel's first B candidates
    unique recall@B    share of the relevant products in the channel's first B that the base
                       channel's first B misses: what only this channel brings

(Union recall, the two channels sharing one budget, is recall@B of `workbench.baselines.supplement`.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _gains(rel) -> dict:
    return dict(rel) if isinstance(rel, Mapping) else {p: 1.0 for p in rel}


def _check(retrieved, relevant, k: int | None) -> None:
    if len(retrieved) != len(relevant):
        raise ValueError(f"{len(retrieved)} retrieved lists for {len(relevant)} queries")
    if k is not None and k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def per_query(retrieved: list[list], relevant: list, k: int) -> dict[str, np.ndarray]:
    """recall@k, ndcg@k, hit@k and mrr per query (NaN where a query has no relevant product)."""
    _check(retrieved, relevant, k)
    n = len(relevant)
    out = {m: np.full(n, np.nan) for m in ("recall", "ndcg", "hit", "mrr")}
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for i, (got, rel) in enumerate(zip(retrieved, relevant)):
        g = _gains(rel)
        if not g:
            continue
        top = list(got[:k])
        found = [p for p in top if p in g]
        out["recall"][i] = len(set(found)) / len(g)
        out["hit"][i] = float(bool(found))
        dcg = sum(g[p] * disc[r] for r, p in enumerate(top) if p in g)
        ideal = float(np.sum(np.sort(np.fromiter(g.values(), float))[::-1][:k] * disc[: min(k, len(g))]))
        out["ndcg"][i] = dcg / ideal if ideal > 0 else 0.0
        first = next((r for r, p in enumerate(got) if p in g), None)
        out["mrr"][i] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def recall_at_k(retrieved: list[list], relevant: list, k: int) -> float:
    return _mean(per_query(retrieved, relevant, k)["recall"])


def ndcg_at_k(retrieved: list[list], relevant: list, k: int) -> float:
    return _mean(per_query(retrieved, relevant, k)["ndcg"])


def hit_at_k(retrieved: list[list], relevant: list, k: int) -> float:
    return _mean(per_query(retrieved, relevant, k)["hit"])


def mrr(retrieved: list[list], relevant: list) -> float:
    return _mean(per_query(retrieved, relevant, max(1, max((len(g) for g in retrieved), default=1)))["mrr"])


def unique_recall(channel: list[list], base: list[list], relevant: list, budget: int) -> float:
    """Share of each query's relevant products in channel[:budget] and not in base[:budget], averaged."""
    _check(channel, relevant, budget)
    _check(base, relevant, budget)
    out = []
    for got, other, rel in zip(channel, base, relevant):
        g = _gains(rel)
        if g:
            out.append(len((set(got[:budget]) - set(other[:budget])) & g.keys()) / len(g))
    return float(np.mean(out)) if out else float("nan")


def coverage(retrieved: list[list], k: int, catalog_size: int) -> float:
    """Share of the catalog that appears in some query's first k."""
    _check(retrieved, retrieved, k)
    return len({p for got in retrieved for p in got[:k]}) / max(catalog_size, 1)


def auc(labels, scores) -> float:
    """ROC AUC (Mann-Whitney: the chance a positive outscores a negative, ties count half); NaN when
    one class is absent."""
    from scipy.stats import rankdata

    y, s = np.asarray(labels) > 0, np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired_bootstrap(units: int, n: int = 1000, seed: int = 0) -> np.ndarray:
    """(n, units) resample weights: each row counts how often each unit (a query, a session) was drawn.
    Paired: every method is weighed with the same rows, so each difference has its own interval."""
    return np.random.default_rng(seed).multinomial(units, np.full(units, 1 / units), size=n).astype(np.float64)


def cluster_sums(groups, *values) -> tuple[np.ndarray, ...]:
    """Per-unit values -> per-group sums (groups in sorted order), one array per value; the last is each
    group's unit count. What a clustered statistic needs: a ratio of sums over groups."""
    uniq, codes = np.unique(np.asarray(groups), return_inverse=True)
    return (*(np.bincount(codes, np.asarray(v, float), len(uniq)) for v in values),
            np.bincount(codes, minlength=len(uniq)).astype(float))


def leave_one_out_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per-group sums (G,) -> (G,) the ratio of sums with each group left out in turn."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (num.sum() - num) / (den.sum() - den)


def jackknife_interval(estimate: float, replicates, sizes, level: float = 0.95) -> tuple[float, float]:
    """A t interval from leave-one-cluster-out replicates: `replicates` holds, per independent sample,
    the statistic with each of its clusters left out, and `sizes` each cluster's unit count (one array
    per sample; bare arrays are one sample).

    Per sample s with m clusters: v_s = (m-1)/m * sum_i (replicate_i - mean)^2, the jackknife variance,
    which sees each cluster's own pull on the statistic. Its degrees of freedom are the effective number
    of clusters, df_s = min(m-1, (sum n_i^2)^2 / sum n_i^4) for sizes n_i (Satterthwaite, when most of
    the variance lies between clusters so that cluster i's term varies as n_i^2): a test set where a few
    queries hold most sessions is estimated from few of them. Samples add: se^2 = sum v_s, df by
    Welch-Satterthwaite. The interval is estimate -+ t(df, (1+level)/2) * se; NaN where a sample has
    fewer than 2 clusters or a replicate is not finite, zero width when no cluster moves the statistic."""
    from scipy.stats import t

    def listed(x):
        return [np.asarray(r, float) for r in (x if isinstance(x, (list, tuple)) else [x])]

    reps, ns = listed(replicates), listed(sizes)
    if [len(r) for r in reps] != [len(n) for n in ns]:
        raise ValueError(f"one size per replicate, got {[len(r) for r in reps]} replicates and {[len(n) for n in ns]} sizes")
    if any(len(r) < 2 or not np.isfinite(r).all() for r in reps) or not np.isfinite(estimate):
        return float("nan"), float("nan")
    v = [(len(r) - 1) / len(r) * ((r - r.mean()) ** 2).sum() for r in reps]
    dfs = [min(len(n) - 1, (n ** 2).sum() ** 2 / (n ** 4).sum()) for n in ns]
    var = sum(v)
    if var <= 0:
        return float(estimate), float(estimate)
    df = var ** 2 / sum(vs ** 2 / d for vs, d in zip(v, dfs))
    half = t.ppf((1 + level) / 2, df) * np.sqrt(var)
    return float(estimate - half), float(estimate + half)


def paired_difference(a, b, n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over units where both are defined, and its 95% percentile-bootstrap interval (units
    resampled together, so the two sides stay paired)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one per unit on both sides, got {a.shape} and {b.shape}")
    d = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if not len(d):
        return float("nan"), float("nan"), float("nan")
    boot = paired_bootstrap(len(d), n, seed) @ d / len(d)
    return float(d.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))
