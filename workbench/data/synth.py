"""A synthetic marketplace: catalog, users, queries, a legacy search engine's log, and judgments.

What generates the data (all of it deterministic in `SynthConfig.seed`):

1. Catalog. Leaves of a 3-level category tree (taxonomy.py) differ in size; each department has
   generated brands in three price tiers; products get a brand, attributes (colour, material,
   size, ...), feature words and a price around the leaf's median. A share of products is
   *click-bait*: hype words in the title, a low price, high attractiveness and low quality.
2. Users have latent department preferences, favourite brands and a price sensitivity.
3. Sessions. A user picks a department and a leaf, and types a query from that intent: the leaf's
   noun or a synonym, sometimes an attribute value (or its synonym), a brand, a price phrase, and
   sometimes a typo; a few queries are broad (a level-2 category name).
4. The legacy engine is lexical: it requires the query's most specific word and ranks by BM25
   over title and category plus a popularity prior (its past click-through, which click-bait
   products earn), showing a page of `page_size` products.
5. Behaviour. The user scrolls to a random depth (impressions); a position-biased click model
   clicks on relevant, attractive, favourite-brand products; a purchase model buys relevant,
   good-quality products whose price suits the user (at most one purchase per session).
6. Judgments grade (query, product) pairs 0-3 from the query's intent, over a pool of the engine's
   results and products of the wanted category, like a rater pool.

The latent truth goes into `truth_*` tables so that later diagnostics (click-bait exposure,
collapse) can be checked against what really happened.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from tqdm.auto import tqdm

from workbench.data.taxonomy import ATTRIBUTES, CHEAP_WORDS, HYPE, PREMIUM_WORDS, VALUE_SYNONYMS, leaves

TOKEN = re.compile(r"[a-z0-9]+")
TIERS = np.array([0.6, 1.0, 1.8])  # budget, mid, premium price multipliers
_SYLLABLES = ["vol", "tra", "nor", "dix", "ka", "len", "zo", "mar", "qui", "bel", "ter", "ax", "ro", "via",
              "lum", "en", "sol", "ori", "pex", "ud", "hal", "cy", "fen", "ix", "gar", "mo", "sta", "ry"]


@dataclass(frozen=True)
class SynthConfig:
    n_products: int = 3000  # number of products
    n_users: int = 500  # number of users
    n_sessions: int = 4000  # number of search sessions
    page_size: int = 20
    brands_per_department: int = 12
    clickbait_share: float = 0.08  # share of click-bait products
    typo_rate: float = 0.06
    broad_rate: float = 0.08
    n_judged_queries: int = 400
    days: int = 30
    start: str = "2026-01-01"
    seed: int = 0  # random seed (same seed, same bytes)

    def __post_init__(self):
        for k in ("n_products", "n_users", "n_sessions", "page_size", "brands_per_department"):
            if getattr(self, k) < 1:
                raise ValueError(f"SynthConfig.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("clickbait_share", "typo_rate", "broad_rate"):
            if not 0 <= getattr(self, k) <= 1:
                raise ValueError(f"SynthConfig.{k} must be in [0, 1], got {getattr(self, k)}")


PRESETS = {"sample": SynthConfig()}


def synth_meta(cfg: SynthConfig) -> dict:
    """workspace.json entries of a synthetic workspace."""
    return {"source": "synth", "synth": asdict(cfg), "relevance_threshold": 2.0, "relevance_scale": "0-3 (synthetic grades)"}
ATTR_KEYS = sorted({key for key, _ in ATTRIBUTES.values()})
ATTR_CODES = {k: {v: i for i, v in enumerate(sorted({v for key, vs in ATTRIBUTES.values() if key == k for v in vs}))}
              for k in ATTR_KEYS}


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def _title(s: str) -> str:
    return " ".join(w if w in ("ml", "l") else w[:1].upper() + w[1:] for w in s.split())


def _typo(word: str, r: np.random.Generator) -> str:
    i = int(r.integers(1, len(word) - 1))
    op = int(r.integers(4))
    if op == 0:
        return word[:i] + word[i + 1:]  # drop a letter
    if op == 1:
        return word[: i - 1] + word[i] + word[i - 1] + word[i + 1:]  # swap two
    if op == 2:
        return word[:i] + word[i] + word[i:]  # double a letter
    return word[:i] + "aeiou"[int(r.integers(5))] + word[i + 1:]  # wrong vowel or letter


def _brand_names(n: int, r: np.random.Generator) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        k = int(r.integers(2, 4))
        name = "".join(_SYLLABLES[int(i)] for i in r.integers(0, len(_SYLLABLES), k)).capitalize()
        if name not in seen and 4 <= len(name) <= 10:
            seen.add(name)
            names.append(name)
    return names


def generate(cfg: SynthConfig, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Generate every table of a synthetic workspace. Returns table name -> DataFrame."""
    bar = tqdm(total=6, desc="synth", disable=not progress)
    cat, users, sess, rs = world(cfg, bar.update)
    pages = legacy_search(cfg, cat, sess, progress)
    bar.update()
    log = _behaviour(cfg, cat, users, sess, pages, rs[3])
    bar.update()
    judg = _judgments(cfg, cat, sess, pages, rs[4])
    bar.update()
    bar.close()
    return {**cat["tables"], **users["tables"], **sess["tables"], "search_log": log, "judgments": judg}


def world(cfg: SynthConfig, step=lambda: None) -> tuple[dict, dict, dict, list[np.random.Generator]]:
    """The latent marketplace before any search: catalog, users and sessions (their intents), as the
    arrays the behaviour model reads, and the random generators left for the log and the judgments.
    Deterministic in `cfg`: `workbench.data.market` rebuilds a synthetic workspace's truth with it."""
    rs = [np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(6)]
    cat = _catalog(cfg, rs[0])
    step()
    users = _users(cfg, cat, rs[1])
    step()
    sess = _sessions(cfg, cat, users, rs[2])
    step()
    return cat, users, sess, rs


# 1. catalog ---------------------------------------------------------------------------------
def _catalog(cfg: SynthConfig, r: np.random.Generator) -> dict:
    lv = leaves()
    depts = sorted({leaf.path[0] for leaf in lv})
    cat2 = sorted({leaf.path[:2] for leaf in lv})
    leaf_dept = np.array([depts.index(leaf.path[0]) for leaf in lv])
    leaf_cat2 = np.array([cat2.index(leaf.path[:2]) for leaf in lv])
    leaf_w = r.lognormal(0, 0.6, len(lv))
    leaf_w /= leaf_w.sum()

    nb = cfg.brands_per_department
    brands = _brand_names(nb * len(depts), r)
    brand_dept = np.repeat(np.arange(len(depts)), nb)
    brand_tier = r.integers(0, 3, len(brands))
    brand_pop = np.tile(1.0 / np.arange(1, nb + 1) ** 0.8, len(depts))  # Zipf within department

    n = cfg.n_products
    leaf = r.choice(len(lv), n, p=leaf_w)
    dept = leaf_dept[leaf]
    brand = np.empty(n, np.int64)
    for d in range(len(depts)):
        idx = np.flatnonzero(dept == d)
        w = brand_pop[d * nb:(d + 1) * nb]
        brand[idx] = d * nb + r.choice(nb, len(idx), p=w / w.sum())
    clickbait = r.random(n) < cfg.clickbait_share
    median = np.array([leaf.median_price for leaf in lv])[leaf]
    price = median * TIERS[brand_tier[brand]] * r.lognormal(0, 0.3, n) * np.where(clickbait, 0.7, 1.0)
    price = np.maximum(np.round(price) - 0.01, 0.99)
    attractiveness = r.normal(0, 0.4, n) + 1.2 * clickbait
    quality = r.normal(0, 0.5, n) + 0.25 * (brand_tier[brand] - 1) - 1.8 * clickbait

    # attributes: one value per kind the leaf has, chosen uniformly
    max_kinds = max(len(leaf.kinds) for leaf in lv)
    vals = r.random((n, max_kinds))
    n_feat = r.integers(1, 3, n)
    feat_draw = r.random((n, 2))
    hype = r.integers(0, len(HYPE), n)
    hype_front = r.random(n) < 0.5
    titles, attrs = [], []
    codes = np.full((len(ATTR_KEYS), n), -1, np.int64)  # (keys, P) value code per attribute key, -1 absent
    for i in range(n):
        L = lv[leaf[i]]
        a = {}
        for j, kind in enumerate(L.kinds):
            key, values = ATTRIBUTES[kind]
            a[key] = values[int(vals[i, j] * len(values))]
            codes[ATTR_KEYS.index(key), i] = ATTR_CODES[key][a[key]]
        feats = []
        for j in range(n_feat[i]):
            f = L.features[int(feat_draw[i, j] * len(L.features))]
            if f not in feats:
                feats.append(f)
        head = " ".join([brands[brand[i]], *feats, a.get("material", ""), L.nouns[0]]).replace("  ", " ")
        tail = [a[k] for k in ("colour", "capacity", "pack") if k in a]
        if "size" in a:
            tail.append("Size " + a["size"].upper() if len(a["size"]) <= 3 else a["size"])
        t = _title(head) + "".join(", " + _title(x) if not x.startswith("Size") else ", " + x for x in tail)
        if clickbait[i]:
            h = HYPE[hype[i]].upper()
            t = f"[{h}] {t}" if hype_front[i] else f"{t} - {h}"
        titles.append(t)
        attrs.append(json.dumps(a, sort_keys=True))
    pid = [f"P{i:07d}" for i in range(n)]
    products = pd.DataFrame({
        "product_id": pid, "title": titles, "category": [lv[i].category for i in leaf],
        "brand": [brands[b] for b in brand], "price": price, "attributes": attrs,
    })
    truth = pd.DataFrame({"product_id": pid, "leaf": leaf, "attractiveness": attractiveness.round(4),
                          "quality": quality.round(4), "clickbait": clickbait})
    return {
        "tables": {"products": products, "truth_products": truth},
        "leaves": lv, "depts": depts, "cat2": cat2, "leaf_dept": leaf_dept, "leaf_cat2": leaf_cat2, "leaf_w": leaf_w,
        "brands": brands, "brand_dept": brand_dept, "brand_pop": brand_pop, "leaf": leaf, "brand": brand,
        "price": price, "attractiveness": attractiveness, "quality": quality, "attr_codes": codes, "pid": pid,
    }


# 2. users -----------------------------------------------------------------------------------
def _users(cfg: SynthConfig, cat: dict, r: np.random.Generator) -> dict:
    n, depts, nb = cfg.n_users, cat["depts"], cfg.brands_per_department
    pref = r.dirichlet(np.full(len(depts), 0.4), n)
    top2 = np.argsort(-pref, axis=1)[:, :2]
    fav = np.stack([top2[:, 0] * nb + r.integers(0, nb, n), top2[:, 0] * nb + r.integers(0, nb, n),
                    top2[:, 1] * nb + r.integers(0, nb, n)], axis=1)  # (U, 3) brand ids
    sens = r.lognormal(0, 0.5, n)
    activity = r.lognormal(0, 1.0, n)
    uid = [f"U{i:06d}" for i in range(n)]
    users = pd.DataFrame({
        "user_id": uid,
        "age_band": np.array(["18-24", "25-34", "35-44", "45-54", "55+"])[r.choice(5, n, p=[0.15, 0.3, 0.25, 0.18, 0.12])],
        "region": np.array(["north", "south", "east", "west", "central"])[r.integers(0, 5, n)],
    })
    truth = pd.DataFrame({
        "user_id": uid,
        "departments": [json.dumps({d: round(float(w), 4) for d, w in zip(depts, row) if w >= 0.01}) for row in pref],
        "brands": [json.dumps(sorted({cat["brands"][b] for b in row})) for row in fav],
        "price_sensitivity": sens.round(4),
    })
    return {"tables": {"users": users, "truth_users": truth}, "pref": pref, "fav": fav, "sens": sens,
            "activity": activity, "uid": uid}


# 3. sessions and queries ----------------------------------------------------------------------
def _sessions(cfg: SynthConfig, cat: dict, users: dict, r: np.random.Generator) -> dict:
    n, lv = cfg.n_sessions, cat["leaves"]
    user = r.choice(cfg.n_users, n, p=users["activity"] / users["activity"].sum())
    t0 = pd.Timestamp(cfg.start, tz="UTC")
    offs = np.sort(r.random(n)) * cfg.days * 86400.0
    time = t0 + pd.to_timedelta(np.round(offs), unit="s")
    # department from the user's preferences, leaf from the department's leaves by size
    cum = np.cumsum(users["pref"][user], axis=1)
    dept = np.minimum((cum < r.random(n)[:, None]).sum(1), len(cat["depts"]) - 1)
    leaf = np.empty(n, np.int64)
    for d in range(len(cat["depts"])):
        idx = np.flatnonzero(dept == d)
        cand = np.flatnonzero(cat["leaf_dept"] == d)
        w = cat["leaf_w"][cand]
        leaf[idx] = cand[r.choice(len(cand), len(idx), p=w / w.sum())]
    broad = r.random(n) < cfg.broad_rate
    u_attr, u_kind, u_val, u_syn = r.random(n), r.random(n), r.random(n), r.random(n)
    u_brand, u_price, u_noun, u_order = r.random(n), r.random(n), r.random(n), r.random(n)
    typo = r.random(n) < cfg.typo_rate
    texts, attr_col, brand_col, maxp = [], [], [], np.full(n, np.nan)
    a_key, a_code, b_id = np.full(n, -1), np.full(n, -1), np.full(n, -1)
    fav, nb = users["fav"], cfg.brands_per_department
    for i in range(n):
        L = lv[leaf[i]]
        words: list[str] = []
        a_kv = b_name = None
        if broad[i]:
            words = [L.path[1].lower()]
        else:
            noun = L.nouns[0] if u_noun[i] < 0.55 else L.nouns[1 + int((u_noun[i] - 0.55) / 0.45 * (len(L.nouns) - 1))]
            if u_brand[i] < 0.15:
                mine = [b for b in fav[user[i]] if cat["brand_dept"][b] == dept[i]]
                b = mine[0] if mine else dept[i] * nb + int(u_brand[i] / 0.15 * 3)
                b_name, b_id[i] = cat["brands"][b], b
                words.append(b_name.lower())
            if u_attr[i] < 0.35:
                key, values = ATTRIBUTES[L.kinds[int(u_kind[i] * len(L.kinds))]]
                v = values[int(u_val[i] * len(values))]
                a_kv, a_key[i], a_code[i] = f"{key}={v}", ATTR_KEYS.index(key), ATTR_CODES[key][v]
                syn = VALUE_SYNONYMS.get(v)
                typed = syn[int(u_order[i] * len(syn))] if syn and u_syn[i] < 0.3 else v
                if key == "size" and len(v) <= 3:
                    typed = f"size {typed}"
                words = words + [typed, noun] if u_order[i] < 0.8 else words + [noun, typed]
            else:
                words.append(noun)
            if u_price[i] < 0.10:
                maxp[i] = max(10.0, round(L.median_price * 0.8 / 10) * 10)
                words.append(f"under {int(maxp[i])}")
            elif u_price[i] < 0.15:
                maxp[i] = L.median_price
                words.insert(0, CHEAP_WORDS[int((u_price[i] - 0.10) / 0.05 * len(CHEAP_WORDS))])
            elif u_price[i] < 0.18:
                words.insert(0, PREMIUM_WORDS[int((u_price[i] - 0.15) / 0.03 * len(PREMIUM_WORDS))])
        text = " ".join(words)
        if typo[i]:
            ws = text.split()
            j = max(range(len(ws)), key=lambda k: (len(ws[k]), -k))
            if len(ws[j]) >= 4:
                ws[j] = _typo(ws[j], r)
                text = " ".join(ws)
            else:
                typo[i] = False
        texts.append(text)
        attr_col.append(a_kv)
        brand_col.append(b_name)
    qcodes, qtexts = pd.factorize(pd.Series(texts))  # ids in order of first use
    queries = pd.DataFrame({"query_id": np.arange(1, len(qtexts) + 1), "query": list(qtexts)})
    truth = pd.DataFrame({
        "session_id": np.arange(1, n + 1), "leaf": np.where(broad, -1, leaf),
        "category": [" > ".join(lv[k].path[:2]) if b else lv[k].category for k, b in zip(leaf, broad)],
        "attribute": attr_col, "brand": brand_col, "max_price": maxp, "typo": typo,
    })
    return {"tables": {"queries": queries, "truth_sessions": truth}, "user": user, "time": time, "leaf": leaf,
            "dept": dept, "broad": broad, "attr_key": a_key, "attr_code": a_code, "brand": b_id, "maxp": maxp, "qid": qcodes,
            "qtexts": list(qtexts)}


# 4. the legacy lexical engine --------------------------------------------------------------------
def bm25_matrix(docs: list[list[str]], vocab: dict[str, int], k1: float = 1.2, b: float = 0.75) -> sp.csr_matrix:
    """(docs, vocab) BM25 term weights; grows `vocab` with the documents' tokens."""
    rows, cols = [], []
    for i, toks in enumerate(docs):
        for tok in toks:
            rows.append(i)
            cols.append(vocab.setdefault(tok, len(vocab)))
    tf = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(docs), len(vocab)))
    tf.sum_duplicates()
    dl = np.asarray(tf.sum(1)).ravel()
    df = np.bincount(tf.indices, minlength=len(vocab))
    idf = np.log1p((len(docs) - df + 0.5) / (df + 0.5)).astype(np.float32)
    norm = k1 * (1 - b + b * dl / dl.mean())
    tf.data = (tf.data * (k1 + 1) / (tf.data + np.repeat(norm, np.diff(tf.indptr)))).astype(np.float32)
    return tf @ sp.diags(idf)


def legacy_search(cfg: SynthConfig, cat: dict, sess: dict, progress: bool = False, k: int | None = None) -> np.ndarray:
    """Top k (default `page_size`) product indices for every distinct query; -1 pads short pages. (Q, k)

    The engine requires the query's most specific word (its rarest indexed word, preferring words
    over numbers) and ranks the products holding it by BM25 over all query words plus the
    popularity prior. Queries sharing that word are scored together in one sparse-dense product.
    A typo in the product noun thus makes the engine fall back on a colour or a brand, as real
    lexical engines do.
    """
    lv = cat["leaves"]
    docs = [tokenize(t + " " + lv[k].category) for t, k in zip(cat["tables"]["products"]["title"], cat["leaf"])]
    vocab: dict[str, int] = {}
    Wp = bm25_matrix(docs, vocab).tocsr()  # (P, V)
    Wt = Wp.T.tocsr()  # (V, P) postings
    df = np.diff(Wt.indptr)
    numeric = np.zeros(len(vocab), bool)
    numeric[[j for t, j in vocab.items() if t.isdigit()]] = True
    prior = 0.5 * cat["attractiveness"]
    nq, k = len(sess["qtexts"]), k or cfg.page_size
    pages = np.full((nq, k), -1, np.int64)
    qtoks, groups = {}, {}
    for i, text in enumerate(sess["qtexts"]):
        toks = sorted({vocab[t] for t in tokenize(text) if t in vocab}, key=lambda t: (numeric[t], df[t], t))
        if toks:
            qtoks[i] = toks
            groups.setdefault(toks[0], []).append(i)
    bar = tqdm(total=len(qtoks), desc="legacy search", disable=not progress, leave=False)
    for t, qs in groups.items():
        cand = Wt.indices[Wt.indptr[t]:Wt.indptr[t + 1]]
        rows = Wp[cand]
        for b in range(0, len(qs), 64):
            block = qs[b:b + 64]
            Q = np.zeros((len(vocab), len(block)), np.float32)  # (V, G) query word indicators
            for c, i in enumerate(block):
                Q[qtoks[i], c] = 1.0
            S = rows @ Q + prior[cand][:, None]  # (C, G) scores of the candidates for each query
            for c, i in enumerate(block):
                score = S[:, c]
                theta = np.partition(score, len(score) - k)[len(score) - k] if len(score) >= k else -np.inf
                top = np.flatnonzero(score >= theta)  # the page, plus anything tied with its last score
                top = top[np.lexsort((cand[top], -score[top]))][:k]  # by score, ties by product order
                pages[i, : len(top)] = cand[top]
            bar.update(len(block))
    bar.close()
    return pages


# 5. behaviour -------------------------------------------------------------------------------------
def _relevance(cat: dict, sess: dict, s: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intent match of product p for session s: graded 0-3 and the soft score in [0, 1] that drives behaviour."""
    leaf_s, leaf_p = sess["leaf"][s], cat["leaf"][p]
    same_leaf = leaf_s == leaf_p
    same_cat2 = cat["leaf_cat2"][leaf_s] == cat["leaf_cat2"][leaf_p]
    broad = sess["broad"][s]
    base = np.where(broad, np.where(same_cat2, 3, 0), np.where(same_leaf, 3, np.where(same_cat2, 1, 0)))
    key, want_brand, maxp = sess["attr_key"][s], sess["brand"][s], sess["maxp"][s]
    has_val = cat["attr_codes"][np.maximum(key, 0), p]
    miss = ((key >= 0) & (has_val != sess["attr_code"][s])).astype(np.int64)
    miss += (want_brand >= 0) & (cat["brand"][p] != want_brand)
    miss += ~np.isnan(maxp) & (cat["price"][p] > np.nan_to_num(maxp, nan=np.inf))
    grade = np.where(base == 3, np.maximum(base - miss, 1), np.where(base > 0, np.maximum(base - miss, 0), 0))
    soft = base / 3.0 * 0.6 ** miss
    return grade.astype(float), soft


MIN_DEPTH, SCROLL = 4, 0.2  # a session scrolls to MIN_DEPTH + Geometric(SCROLL) positions (support 1, 2, ...)


def seen(pos: np.ndarray) -> np.ndarray:
    """P(position `pos` (1-based) is impressed) under the scroll model: P(MIN_DEPTH + G >= pos)."""
    return np.where(pos <= MIN_DEPTH + 1, 1.0, (1 - SCROLL) ** np.maximum(pos - MIN_DEPTH - 1, 0))


def funnel(cat: dict, users: dict, sess: dict, s: np.ndarray, p: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The behaviour model: for session s shown product p at position pos (arrays of rows), P(click | impressed)
    (position-biased: relevance, attractiveness, favourite brand) and P(wants to buy | clicked) (relevance,
    quality, favourite brand, price against the user's sensitivity). The log is sampled from these
    (`_behaviour`); `workbench.data.market` replays other pages through the same function."""
    _, rel = _relevance(cat, sess, s, p)
    fav = users["fav"][sess["user"][s]]
    aff = (fav == cat["brand"][p][:, None]).any(1).astype(float)
    click_logit = -3.6 + 3.0 * rel + 1.2 * cat["attractiveness"][p] + 0.6 * aff
    p_click = (1.0 / pos) ** 0.5 / (1 + np.exp(-click_logit))
    median = np.array([leaf.median_price for leaf in cat["leaves"]])
    ref = np.where(np.isnan(sess["maxp"][s]), median[sess["leaf"][s]], sess["maxp"][s])
    over = np.maximum(0.0, np.log(cat["price"][p] / ref))
    buy_logit = -2.5 + 3.0 * rel + 1.2 * cat["quality"][p] + 0.8 * aff - users["sens"][sess["user"][s]] * 2.0 * over
    return p_click, 1 / (1 + np.exp(-buy_logit))


def _behaviour(cfg: SynthConfig, cat: dict, users: dict, sess: dict, pages: np.ndarray, r: np.random.Generator) -> pd.DataFrame:
    n = cfg.n_sessions
    page = pages[sess["qid"]]  # (S, page)
    s, pos0 = np.nonzero(page >= 0)  # flattened (session, position) rows, session-major
    p = page[s, pos0]
    pos = pos0 + 1
    depth = MIN_DEPTH + r.geometric(SCROLL, n)  # scroll depth per session
    impressed = pos <= depth[s]
    p_click, p_buy = funnel(cat, users, sess, s, p, pos)
    clicked = impressed & (r.random(len(s)) < p_click)
    want = clicked & (r.random(len(s)) < p_buy)
    # at most one purchase per session: the first wanted one on the page
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, s[want], np.flatnonzero(want))
    purchased = want & (np.arange(len(s)) == first[s])
    return pd.DataFrame({
        "session_id": s + 1,
        "user_id": pd.array(pa.array(users["uid"]).take(sess["user"][s])),
        "query_id": sess["qid"][s] + 1,
        "product_id": pd.array(pa.array(cat["pid"]).take(p)),
        "position": pos, "impressed": impressed, "clicked": clicked, "purchased": purchased,
        "time": sess["time"][s],
    })


# 6. judgments ----------------------------------------------------------------------------------------
def _judgments(cfg: SynthConfig, cat: dict, sess: dict, pages: np.ndarray, r: np.random.Generator) -> pd.DataFrame:
    first_session = pd.Series(np.arange(cfg.n_sessions)).groupby(sess["qid"]).first()  # query -> first session
    has_page = pages[first_session.index, 0] >= 0
    cands = first_session.index[has_page]
    freq = np.bincount(sess["qid"], minlength=len(pages))[cands].astype(float)
    m = min(cfg.n_judged_queries, len(cands))
    chosen = np.sort(r.choice(cands, m, replace=False, p=freq / freq.sum())) if m else np.array([], int)
    by_leaf = pd.Series(np.arange(len(cat["leaf"]))).groupby(cat["leaf"]).apply(np.asarray)
    by_cat2 = pd.Series(np.arange(len(cat["leaf"]))).groupby(cat["leaf_cat2"][cat["leaf"]]).apply(np.asarray)
    qs, ps = [], []
    for q in chosen:
        s0 = first_session[q]
        leaf = sess["leaf"][s0]
        none = np.zeros(0, np.int64)
        same_leaf, same_cat2 = by_leaf.get(leaf, none), by_cat2.get(cat["leaf_cat2"][leaf], none)
        pool = np.concatenate([pages[q][pages[q] >= 0], r.choice(same_leaf, min(15, len(same_leaf)), replace=False),
                               r.choice(same_cat2, min(5, len(same_cat2)), replace=False)])
        pool = np.unique(pool)
        qs.append(np.full(len(pool), s0))
        ps.append(pool)
    s, p = (np.concatenate(x) if x else np.array([], int) for x in (qs, ps))
    grade, _ = _relevance(cat, sess, s, p)
    return pd.DataFrame({"query_id": sess["qid"][s] + 1, "product_id": [cat["pid"][i] for i in p], "relevance": grade})
