"""Rewards for stage 4: plain functions of (generated SIDs, what the ranker sees of their clusters).

A generated SID is a recall set: its cluster's products go to the downstream ranker. `Judge.score`
looks each member up once and returns a `Scored` batch; every reward is then a pure function
`reward(s: Scored) -> (B, N)` and the total is a weighted sum (weights in `RewardConfig`). Ours:

    click      expected clicks of the cluster in the ranker's `slots` best positions:
               sum of the top-`slots` pCTR among its products / slots (a small cluster fills fewer)
    purchase   the same products' expected purchases: sum of pCTR * pCVR / slots
    exposure   how much the ranker would expose: min(#products with pCTR >= tau, cap) / cap, tau the
               median pCTR of logged impressions (broad clusters score high: the collapse lure)
    valid      1 if the SID exists (constrained sampling always gives 1; kept for unconstrained runs)
    gt         1 if the cluster holds a product the user bought in this search, 0.5 if only one
               they clicked (the sparse ground-truth hit)

Products are scored with the ranker's position bias left out. On a synthetic marketplace the judge
can be the simulator instead (`oracle`: `workbench.data.market`): pCTR and pCVR are then the true
P(click) and P(buy | click) of the search's session at position 1, an upper bound that separates "the
ranker is a poor proxy" from "the RL algorithm is weak". Diagnostics also use `clickbait`, the
share of click-bait products in each cluster (the synthetic marketplace's truth when present, else
from the log: CTR in the top quarter and CVR in the bottom quarter among products with >= 20
impressions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.rl.config import RewardConfig
from workbench.rl.ranker import Features, Ranker
from workbench.sid.index import SIDIndex


@dataclass
class Scored:
    pctr: torch.Tensor  # (B, N, M) of the cluster's scored products, best pCTR first; 0 where absent
    pcvr: torch.Tensor  # (B, N, M)
    present: torch.Tensor  # (B, N, M) bool
    size: torch.Tensor  # (B, N) products in the cluster
    valid: torch.Tensor  # (B, N) bool
    hit_buy: torch.Tensor  # (B, N) bool
    hit_click: torch.Tensor  # (B, N) bool
    clickbait: torch.Tensor  # (B, N) share of click-bait products in the cluster
    tau: float  # exposure threshold on pCTR


def click(s: Scored, cfg: RewardConfig) -> torch.Tensor:
    return s.pctr[..., : cfg.slots].sum(-1) / cfg.slots


def purchase(s: Scored, cfg: RewardConfig) -> torch.Tensor:
    return (s.pctr * s.pcvr)[..., : cfg.slots].sum(-1) / cfg.slots


def exposure(s: Scored, cfg: RewardConfig) -> torch.Tensor:
    return ((s.pctr >= s.tau) & s.present).sum(-1).clamp_max(cfg.cap).float() / cfg.cap


def valid(s: Scored, cfg: RewardConfig) -> torch.Tensor:
    return s.valid.float()


def gt(s: Scored, cfg: RewardConfig) -> torch.Tensor:
    return torch.where(s.hit_buy, 1.0, torch.where(s.hit_click, 0.5, 0.0))


REWARDS = {"click": click, "purchase": purchase, "exposure": exposure, "valid": valid, "gt": gt}


def total(s: Scored, cfg: RewardConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, N) weighted sum, and each component (unweighted) for the logbook."""
    parts = {name: fn(s, cfg) for name, fn in REWARDS.items()}
    return sum(cfg.weights()[k] * v for k, v in parts.items()), parts


class Judge:
    """Everything a reward needs about the catalog, built once: per index row its first `max_products`
    products, the cluster sizes, click-bait shares, and the ranker with its features."""

    def __init__(self, index: SIDIndex, lookup, ranker: Ranker, feats: Features, clickbait: pd.Series, tau: float,
                 cfg: RewardConfig, device: str = "cpu", oracle=None):
        """`oracle`: a `data.market.Market` whose truth replaces the ranker's predictions."""
        self.index, self.ranker, self.feats, self.cfg, self.tau, self.device = index, ranker, feats, cfg, tau, device
        self.oracle = oracle
        if oracle is not None:
            self.to_market = torch.as_tensor(oracle.rows(feats.product_index))  # ranker row -> market row
        M, R = cfg.max_products, len(index.sids)
        table = np.full((R, M), -1, np.int64)
        bait = np.zeros(R, np.float32)
        flags = feats.product_index.get_indexer(clickbait[clickbait].index) if clickbait.any() else np.zeros(0, int)
        is_bait = np.zeros(len(feats.product_index), bool)
        is_bait[flags[flags >= 0]] = True
        for r in range(R):
            rows = feats.product_index.get_indexer(lookup(r))
            rows = rows[rows >= 0]
            table[r, : min(M, len(rows))] = rows[:M]
            bait[r] = is_bait[rows].mean() if len(rows) else 0.0
        self.products = torch.as_tensor(table)  # (R, M) product rows, -1 padded
        self.size = torch.as_tensor(np.array(index.counts))
        self.bait = torch.as_tensor(bait)

    def rows(self, sids: torch.Tensor) -> torch.Tensor:
        """(..., L) SIDs -> (...) index rows, -1 where the SID does not exist."""
        flat = self.index.rows(sids.reshape(-1, sids.shape[-1]).cpu().numpy())
        return torch.as_tensor(flat).reshape(sids.shape[:-1])

    @torch.no_grad()
    def score(self, sids: torch.Tensor, users: torch.Tensor, query_vecs: torch.Tensor, buy_rows: torch.Tensor,
              click_rows: torch.Tensor, sessions: np.ndarray | None = None) -> Scored:
        """sids (B, N, L); users (B,) ranker user rows; query_vecs (B, D); buy_rows / click_rows (B, G)
        index rows of the SIDs of products bought / clicked in the search (-1 padded); sessions (B,)
        session rows, which the oracle needs."""
        B, N, _ = sids.shape
        row = self.rows(sids)  # (B, N)
        ok = row >= 0
        prods = self.products[row.clamp_min(0)]  # (B, N, M)
        present = (prods >= 0) & ok[..., None]
        M = prods.shape[-1]
        if self.oracle is not None:
            if sessions is None:
                raise ValueError("the oracle judge needs each search's session")
            cands = torch.where(present, self.to_market[prods.clamp_min(0)], -1).reshape(B, N * M).numpy()
            c, b = self.oracle.value(np.asarray(sessions), cands)
            pctr, pcvr = (torch.as_tensor(x, dtype=torch.float32).reshape(B, N, M) * present for x in (c, b))
        else:
            u = users[:, None, None].expand(B, N, M).reshape(-1)
            q = query_vecs[:, None, None, :].expand(B, N, M, query_vecs.shape[-1]).reshape(B * N * M, -1)
            f = {k: v.to(self.device) for k, v in self.feats.rows(u, q, prods.clamp_min(0).reshape(-1)).items()}
            ctr, cvr = self.ranker(f)
            pctr = torch.sigmoid(ctr).cpu().reshape(B, N, M) * present
            pcvr = torch.sigmoid(cvr).cpu().reshape(B, N, M) * present
        pctr, order = pctr.sort(-1, descending=True)
        pcvr, present = pcvr.gather(-1, order), present.gather(-1, order)
        hit_buy = ok & (row[..., None] == buy_rows[:, None, :]).any(-1)
        hit_click = ok & (row[..., None] == click_rows[:, None, :]).any(-1)
        return Scored(pctr, pcvr, present, torch.where(ok, self.size[row.clamp_min(0)], 0), ok, hit_buy, hit_click,
                      torch.where(ok, self.bait[row.clamp_min(0)], 0.0), self.tau)


def clickbait_products(ws, min_impressions: int = 20) -> pd.Series:
    """product_id -> is click-bait: the synthetic truth where the workspace has it, else from the log."""
    if ws.has("truth_products"):
        t = ws.table("truth_products")
        if "clickbait" in t:
            return pd.Series(t["clickbait"].astype(bool).to_numpy(), index=t["product_id"])
    log = ws.table("search_log")
    g = log[log["impressed"]].groupby("product_id").agg(n=("clicked", "size"), clicks=("clicked", "sum"),
                                                         buys=("purchased", "sum"))
    g = g[g["n"] >= min_impressions]
    if g.empty:
        return pd.Series(dtype=bool)
    ctr, cvr = g["clicks"] / g["n"], g["buys"] / g["clicks"].clip(lower=1)
    return (ctr >= ctr.quantile(0.75)) & (cvr <= cvr.quantile(0.25))
