"""The synthetic marketplace's funnel as a simulator: what would this session have clicked and bought,
had this page been shown?

A synthetic workspace is deterministic in its `SynthConfig` (kept in workspace.json), so `Market`
rebuilds its latent truth exactly: every product's attractiveness, quality and click-bait flag, every
user's favourite brands and price sensitivity, every session's intent (`synth.world`), and checks it
against the workspace's tables. Pages are then replayed through the behaviour model that generated the
log (`synth.funnel`, one implementation), so the simulator cannot drift from the log.

For a session s shown page (p_1 .. p_K), with c_i = P(click | seen) and b_i = P(wants it | clicked):

    seen_i     = P(depth >= i)                                    (the scroll model, synth.seen)
    E[clicks]  = sum_i seen_i c_i
    P(buy i)   = seen_i c_i b_i prod_{j<i} (1 - c_j b_j)          (at most one purchase: the first wanted)

(if position i is seen, so is every j < i, hence the product). `sample` draws the same model with a
seed, as `synth._behaviour` does. Real catalogs have no latent truth: `MarketError` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pandas as pd

from workbench.data import synth


class MarketError(ValueError):
    """A workspace whose counterfactuals cannot be simulated."""


@dataclass
class Market:
    cfg: synth.SynthConfig
    cat: dict
    users: dict
    sess: dict

    @classmethod
    def from_workspace(cls, ws) -> Market:
        """The latent truth of a workspace written by `workbench data synth` (or the sample), checked
        against its tables."""
        meta = ws.require().meta
        why = ("a simulated A/B replays pages through the marketplace's latent truth (intents, preferences, "
               "product quality and the click and purchase model that made the log); only a synthetic workspace "
               "(`workbench data synth`, or the sample) has one")
        if meta.get("source") != "synth" or "synth" not in meta:
            raise MarketError(f"workspace {ws.path} holds {meta.get('source') or 'imported'} data, not a synthetic "
                              f"marketplace: {why}")
        missing = [t for t in ("truth_products", "truth_users", "truth_sessions", "search_log") if not ws.has(t)]
        if missing:
            raise MarketError(f"workspace {ws.path} has no {', '.join(missing)}: {why}")
        cfg = synth.SynthConfig(**meta["synth"])
        cat, users, sess, _ = synth.world(cfg)
        products, truth = ws.table("products"), ws.table("truth_products")
        same = (len(products) == len(cat["pid"]) and (products["product_id"].to_numpy() == np.array(cat["pid"])).all()
                and (products["title"].to_numpy() == np.array(cat["tables"]["products"]["title"])).all()
                and np.allclose(truth["quality"].to_numpy(), cat["quality"], atol=1e-4)
                and len(ws.table("truth_sessions")) == cfg.n_sessions)
        if not same:
            raise MarketError(f"workspace {ws.path}: its tables are not the marketplace its synth settings generate "
                              "(changed or replaced since); regenerate it with `workbench data synth`")
        return cls(cfg, cat, users, sess)

    # lookups ----------------------------------------------------------------------------------------
    @property
    def product_ids(self) -> list[str]:
        return self.cat["pid"]

    def user_ids(self, s: np.ndarray) -> list[str]:
        """Session rows -> the user id of each session."""
        return [self.users["uid"][u] for u in self.sess["user"][np.asarray(s)]]

    @cached_property
    def _pid_index(self) -> pd.Index:
        return pd.Index(self.cat["pid"])

    def rows(self, product_ids) -> np.ndarray:
        """Product ids -> catalog rows (-1 for unknown ids)."""
        return self._pid_index.get_indexer(pd.Index(product_ids))

    @property
    def clickbait(self) -> np.ndarray:
        return self.cat["tables"]["truth_products"]["clickbait"].to_numpy()

    @property
    def price(self) -> np.ndarray:
        return self.cat["price"]

    def legacy(self, k: int) -> np.ndarray:
        """The legacy engine's top k product rows for every query row (-1 pads). (Q, k)"""
        return synth.legacy_search(self.cfg, self.cat, self.sess, k=k)

    # the funnel ---------------------------------------------------------------------------------------
    def value(self, s: np.ndarray, cands: np.ndarray, knows_user: bool = True, draws: int = 16,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """What an oracle ranker knows: P(click) and P(buy | click) of each candidate were it shown
        first (S, C each; 0 for -1 slots). `knows_user` False: an oracle that knows the session's intent
        but not who asks, i.e. the same two averaged over `draws` users drawn as sessions draw them
        (by activity: the users of random sessions), so the user's favourite brands and price
        sensitivity become the population's: E_u[click] and E_u[click x buy] / E_u[click]."""
        if knows_user:
            _, c, b = self._probs(s, cands, first=True)
            return c, b
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        rng, s = np.random.default_rng(seed), np.asarray(s)
        c_sum, cb_sum = np.zeros(np.shape(cands)), np.zeros(np.shape(cands))
        for _ in range(draws):
            user = self.sess["user"].copy()
            user[s] = self.sess["user"][rng.integers(0, self.cfg.n_sessions, len(s))]  # another session's user
            _, c, b = replace(self, sess={**self.sess, "user": user})._probs(s, cands, first=True)
            c_sum, cb_sum = c_sum + c, cb_sum + c * b
        with np.errstate(invalid="ignore", divide="ignore"):
            return c_sum / draws, np.where(c_sum > 0, cb_sum / c_sum, 0.0)

    def _probs(self, s: np.ndarray, pages: np.ndarray, first: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(S,) session rows, (S, K) product rows (-1: empty slot) -> seen, P(click | seen), P(want | click);
        `first`: every product as if at position 1."""
        s, pages = np.asarray(s), np.asarray(pages)
        if pages.ndim != 2 or len(pages) != len(s):
            raise ValueError(f"pages must be (sessions, K) with one row per session, got {pages.shape} for {len(s)} sessions")
        if len(s) and (s.min() < 0 or s.max() >= self.cfg.n_sessions):
            raise ValueError(f"session rows must be in [0, {self.cfg.n_sessions}), got {s.min()}..{s.max()}")
        if pages.size and pages.max() >= len(self.cat["pid"]):
            raise ValueError(f"product rows must be < {len(self.cat['pid'])} (catalog rows), got {pages.max()}")
        S, K = pages.shape
        pos = np.broadcast_to(np.ones(K, np.int64) if first else np.arange(1, K + 1), (S, K))
        ok = pages >= 0
        c, b = np.zeros((S, K)), np.zeros((S, K))
        rs, ks = np.nonzero(ok)
        c[rs, ks], b[rs, ks] = synth.funnel(self.cat, self.users, self.sess, s[rs], pages[rs, ks], pos[rs, ks])
        return synth.seen(pos) * ok, c, b

    def expected(self, s: np.ndarray, pages: np.ndarray) -> dict[str, np.ndarray]:
        """Expected outcomes of showing `pages` (S, K) to sessions `s`: per slot `seen`, `click`, `buy`
        (S, K) and per session `impressions`, `clicks`, `purchases`, `gmv` (S,)."""
        seen, c, b = self._probs(s, pages)
        w = c * b
        before = np.cumprod(np.concatenate([np.ones((len(w), 1)), 1 - w[:, :-1]], 1), 1)  # prod_{j<i} (1 - w_j)
        click, buy = seen * c, seen * w * before
        gmv = (buy * np.where(pages >= 0, self.price[np.maximum(pages, 0)], 0.0)).sum(1)
        return {"seen": seen, "click": click, "buy": buy, "impressions": seen.sum(1), "clicks": click.sum(1),
                "purchases": buy.sum(1), "gmv": gmv}

    def sample(self, s: np.ndarray, pages: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
        """One draw of the same model: (S, K) booleans impressed, clicked, purchased."""
        seen, c, b = self._probs(s, pages)
        r = np.random.default_rng(seed)
        depth = synth.MIN_DEPTH + r.geometric(synth.SCROLL, len(pages))
        impressed = (np.arange(1, pages.shape[1] + 1)[None, :] <= depth[:, None]) & (pages >= 0)
        clicked = impressed & (r.random(pages.shape) < c)
        want = clicked & (r.random(pages.shape) < b)
        purchased = want & (np.cumsum(want, 1) == 1)
        return {"impressed": impressed, "clicked": clicked, "purchased": purchased}

    def logged_pages(self, log: pd.DataFrame, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The pages the log shows: (session rows, (S, K) product rows in position order, -1 pads)."""
        k = k or self.cfg.page_size
        sessions = np.sort(log["session_id"].unique())
        pages = np.full((len(sessions), k), -1, np.int64)
        i = np.searchsorted(sessions, log["session_id"].to_numpy())
        pos = log["position"].to_numpy() - 1
        keep = pos < k
        pages[i[keep], pos[keep]] = self.rows(log["product_id"].to_numpy()[keep])
        return sessions - 1, pages
