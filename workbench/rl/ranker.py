"""The downstream ranker, learned from the search log: pCTR and pCVR of (user, query, product).

It plays the production ranker that the paper aligns generative recall with, and is the reward
model of stage 4 (`workbench.rl.rewards`). Our design (the paper publishes none):

    q = W_q e(query)      p = W_p e(product text) + E_prod[product] + E_cat[category] + w * log(price)
    u = E_user[user] + E_age[age band] + E_region[region]
    h = MLP([q, p, q * p, u, u * p])
    pCTR = sigmoid(head_ctr(h) + b_pos[position])      click given an impression
    pCVR = sigmoid(head_cvr(h))                         purchase given a click

e(.) is the workspace's text embedder (MiniLM by default). With `id_dropout` > 0, E_prod[product] is
replaced by one learned "cold" vector for products no training impression showed, and for that share of
training impressions at random (ID dropout): a product the legacy engine never showed, which is what a
new recall channel adds, is scored from its text, category and price as such products are worth on
average, not by an embedding that training never moved. Position enters only as an additive bias
on the click logit (a "position-aware" shallow tower): logged clicks are position-biased, and scoring
with the bias left out (position = None) ranks as if every product sat in the first slot. CTR is
fitted on every impression, CVR on clicked impressions only. Held-out queries (the same 20% split as
everywhere) give the AUC of each head, logged every epoch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from workbench import checkpoint, lineage
from workbench.data import splits
from workbench.embed import embed_workspace, get_embedder
from workbench.metrics import auc
from workbench.rl.config import RankerConfig


class Ranker(nn.Module):
    def __init__(self, cfg: RankerConfig):
        super().__init__()
        self.cfg, d = cfg, cfg.d
        self.q = nn.Linear(cfg.text_dim, d)
        self.p = nn.Linear(cfg.text_dim, d)
        self.prod, self.cat = nn.Embedding(cfg.products, d), nn.Embedding(cfg.categories, d)
        self.price = nn.Parameter(torch.zeros(d))
        self.user, self.age, self.region = nn.Embedding(cfg.users + 1, d), nn.Embedding(cfg.age_bands, d), nn.Embedding(cfg.regions, d)
        self.mlp = nn.Sequential(nn.Linear(5 * d, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU())
        self.ctr, self.cvr = nn.Linear(cfg.hidden, 1), nn.Linear(cfg.hidden, 1)
        self.pos = nn.Embedding(cfg.positions, 1)
        if cfg.id_dropout:
            self.cold = nn.Parameter(torch.zeros(d))
            self.register_buffer("shown", torch.zeros(cfg.products, dtype=torch.bool))  # (P,) set by `fit`: shown in training
        for e in (self.prod, self.cat, self.user, self.age, self.region):
            nn.init.normal_(e.weight, std=0.01)
        nn.init.zeros_(self.pos.weight)

    def forward(self, f: dict[str, torch.Tensor], position: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N rows; see `Features.rows`) -> (click logit, purchase-given-click logit), each (N,)."""
        q = self.q(f["query_vec"])
        e = self.prod(f["product"])  # (N, d)
        if self.cfg.id_dropout:
            known = self.shown[f["product"]]
            if self.training:
                known = known & (torch.rand(known.shape, device=known.device) >= self.cfg.id_dropout)
            e = torch.where(known[:, None], e, self.cold)
        p = self.p(f["product_vec"]) + e + self.cat(f["category"]) + f["log_price"][:, None] * self.price
        u = self.user(f["user"]) + self.age(f["age"]) + self.region(f["region"])
        h = self.mlp(torch.cat([q, p, q * p, u, u * p], -1))
        ctr = self.ctr(h)[:, 0]
        if position is not None:
            ctr = ctr + self.pos(position.clamp(0, self.cfg.positions - 1))[:, 0]
        return ctr, self.cvr(h)[:, 0]


class Features:
    """Lookup tables that turn (user id, query vector, product row) into the ranker's input tensors.
    Unknown users map to row `users` (an embedding of its own), which is how a new user is scored."""

    def __init__(self, ws, embedder_key: str, product_vecs: np.ndarray):
        products, users = ws.table("products"), ws.table("users") if ws.has("users") else pd.DataFrame({"user_id": []})
        self.product_index = pd.Index(products["product_id"])
        self.product_vecs = torch.as_tensor(product_vecs, dtype=torch.float32)
        self.category = torch.as_tensor(pd.factorize(products["category"].fillna(""), sort=True)[0])
        self.log_price = torch.as_tensor(np.log1p(products["price"].fillna(0).to_numpy(np.float32)))
        self.user_index = pd.Index(users["user_id"].astype(str))
        self.age = torch.as_tensor(_codes(users.get("age_band"), len(users)))
        self.region = torch.as_tensor(_codes(users.get("region"), len(users)))
        self.embedder_key = embedder_key

    def sizes(self) -> dict[str, int]:
        return {"text_dim": self.product_vecs.shape[1], "users": len(self.user_index), "products": len(self.product_index),
                "categories": int(self.category.max()) + 1, "age_bands": int(self.age.max()) + 2,
                "regions": int(self.region.max()) + 2}

    def users(self, user_ids) -> torch.Tensor:
        rows = self.user_index.get_indexer(pd.Index(user_ids).astype(str))
        return torch.as_tensor(np.where(rows < 0, len(self.user_index), rows))

    def rows(self, user_rows: torch.Tensor, query_vecs: torch.Tensor, product_rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N,) user rows, (N, D) query vectors, (N,) product rows -> feature tensors."""
        known = user_rows < len(self.user_index)
        safe = user_rows.clamp_max(max(len(self.user_index) - 1, 0))
        return {"query_vec": query_vecs, "product_vec": self.product_vecs[product_rows], "product": product_rows,
                "category": self.category[product_rows], "log_price": self.log_price[product_rows], "user": user_rows,
                "age": torch.where(known, self.age[safe], 0), "region": torch.where(known, self.region[safe], 0)}


def _codes(col: pd.Series | None, n: int) -> np.ndarray:
    """Category codes + 1 (0 = missing or unknown)."""
    if col is None:
        return np.zeros(n, np.int64)
    return pd.factorize(col, sort=True)[0].astype(np.int64) + 1


def impressions(ws, query_vecs: np.ndarray, feats: Features) -> dict[str, torch.Tensor]:
    """Every impressed row of the search log as tensors: features, position, clicked, purchased, and its
    query's side (`train` True on training queries, `validation` True on validation queries)."""
    if not ws.has("search_log"):
        raise ValueError(f"workspace {ws.path} has no search log: the ranker learns pCTR and pCVR from one")
    log = ws.table("search_log")
    log = log[log["impressed"]]
    if log.empty or not log["clicked"].any():
        raise ValueError(f"workspace {ws.path}: the search log has no impressions with clicks to learn from")
    q_rows = pd.Index(ws.table("queries")["query_id"]).get_indexer(log["query_id"])
    p_rows = feats.product_index.get_indexer(log["product_id"])
    keep = (q_rows >= 0) & (p_rows >= 0)
    log, q_rows, p_rows = log[keep], q_rows[keep], p_rows[keep]
    return {"user": feats.users(log["user_id"]), "query": torch.as_tensor(q_rows), "product": torch.as_tensor(p_rows),
            "position": torch.as_tensor(log["position"].to_numpy(np.int64) - 1),
            "clicked": torch.as_tensor(log["clicked"].to_numpy(np.float32)),
            "purchased": torch.as_tensor(log["purchased"].to_numpy(np.float32)),
            "train": torch.as_tensor(splits.mask(ws, log["query_id"], "train")),
            "validation": torch.as_tensor(splits.mask(ws, log["query_id"], "validation"))}


def fit(ws, cfg: RankerConfig, feats: Features, query_vecs: np.ndarray, device: str = "cpu", run=None,
        progress: bool = True) -> tuple[Ranker, list[dict]]:
    data = impressions(ws, query_vecs, feats)
    qv = torch.as_tensor(query_vecs, dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    model = Ranker(cfg).to(device)
    if cfg.id_dropout:
        model.shown[data["product"][data["train"]].to(device)] = True
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train = torch.nonzero(data["train"])[:, 0]
    valid = torch.nonzero(data["validation"])[:, 0]  # test queries stay for the simulated A/B
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in tqdm(range(cfg.epochs), desc="ranker", disable=not progress):
        model.train()
        total = 0.0
        for b in train[torch.randperm(len(train), generator=gen)].split(cfg.batch_size):
            f = _batch(feats, data, qv, b, device)
            ctr, cvr = model(f, data["position"][b].to(device))
            clicked, bought = data["clicked"][b].to(device), data["purchased"][b].to(device)
            lo = F.binary_cross_entropy_with_logits(ctr, clicked)
            if clicked.sum() > 0:
                lo = lo + (F.binary_cross_entropy_with_logits(cvr, bought, reduction="none") * clicked).sum() / clicked.sum()
            opt.zero_grad(set_to_none=True)
            lo.backward()
            opt.step()
            total += float(lo.detach()) * len(b)
        row = {"epoch": epoch + 1, "loss": total / max(len(train), 1), **evaluate(model, feats, data, qv, valid, device)}
        history.append(row)
        if run is not None:
            run.log(epoch + 1, stage="ranker", **{k: v for k, v in row.items() if k != "epoch"})
    return model.eval(), history


def _batch(feats: Features, data: dict, qv: torch.Tensor, b: torch.Tensor, device: str) -> dict[str, torch.Tensor]:
    f = feats.rows(data["user"][b], qv[data["query"][b]], data["product"][b])
    return {k: v.to(device) for k, v in f.items()}


@torch.no_grad()
def evaluate(model: Ranker, feats: Features, data: dict, qv: torch.Tensor, rows: torch.Tensor, device: str) -> dict:
    """AUC of pCTR over the impressions `rows` and of pCVR over their clicks (with the logged position)."""
    model.eval()
    ctr, cvr = [], []
    for b in rows.split(8192):
        c, v = model(_batch(feats, data, qv, b, device), data["position"][b].to(device))
        ctr.append(c.cpu())
        cvr.append(v.cpu())
    ctr, cvr = torch.cat(ctr).numpy(), torch.cat(cvr).numpy()
    clicked, bought = data["clicked"][rows].numpy(), data["purchased"][rows].numpy()
    return {"ctr_auc": auc(clicked, ctr), "cvr_auc": auc(bought[clicked > 0], cvr[clicked > 0])}


def save(path, model: Ranker, **meta) -> None:
    checkpoint.save(path, model, model.cfg, kind="ranker", **meta)


def load(path, device: str = "cpu", meta: dict | None = None) -> Ranker:
    """The ranker at `path`; `meta` (a dict) receives the file's metadata."""
    state, cfg, md = checkpoint.load(path, RankerConfig, kind="ranker", device=device)
    if meta is not None:
        meta.update(md)
    model = Ranker(cfg)
    checkpoint.load_into(model, state, path)
    return model.to(device).eval()


def ranker_path(ws):
    return ws.path / "rl" / "ranker.safetensors"


def workspace_inputs(ws, embedder_name: str, device: str = "cpu", progress: bool = True) -> tuple[Features, np.ndarray]:
    """The ranker's features and the queries table's vectors, embedded with `embedder_name` (cached)."""
    e = get_embedder(embedder_name, device)
    vecs = embed_workspace(ws, e, ("products", "queries"), progress=progress)
    return Features(ws, embedder_name, vecs["products"]), vecs["queries"]


@lineage.reads
def train_workspace(ws, embedder_name: str = "minilm", device: str = "cpu", progress: bool = True,
                    **overrides) -> tuple[Ranker, list[dict]]:
    """Fit the ranker on the workspace's search log, log it, save it as <workspace>/rl/ranker.safetensors."""
    feats, qvecs = workspace_inputs(ws, embedder_name, device, progress)
    cfg = RankerConfig(**feats.sizes(), embedder=embedder_name, **overrides)
    with ws.logbook().run("ranker", {"ranker": cfg, "device": device}, seed=cfg.seed, name="ranker") as run:
        model, history = fit(ws, cfg, feats, qvecs, device, run=run, progress=progress)
        last = history[-1]
        for metric in ("ctr_auc", "cvr_auc"):
            run.log_eval(metric, last[metric], dataset="validation impressions", method="ranker")
        save(ranker_path(ws), model.cpu(), run_id=run.run_id, lineage={**lineage.as_read(ws, lineage.tables(ws, ROWS_FROM)), "split": splits.SPLIT},
             **{k: v for k, v in last.items() if k != "epoch"})
    return model.to(device), history


ROWS_FROM = ("products", "users")  # the tables whose rows the ranker's embeddings index (its hard parents)


def load_checked(ws, device: str = "cpu") -> Ranker:
    """The workspace's ranker; refuses one trained on another catalog or user table (workbench.lineage)."""
    path = ranker_path(ws)
    if not path.exists():
        raise FileNotFoundError(f"workspace {ws.path} has no ranker ({path}); train one with `workbench ranker`")
    meta: dict = {}
    model = load(path, device, meta)
    made_from = lineage.decode(meta.get("lineage"))
    lineage.check(str(path), {k: v for k, v in made_from.items() if k != "split"}, lineage.tables(ws, ROWS_FROM),
                  "retrain it with `workbench ranker`")
    lineage.check_split(made_from, str(path), "retrain it with `workbench ranker`")
    return model


def from_workspace(ws, device: str = "cpu", progress: bool = True) -> tuple[Ranker, Features, np.ndarray]:
    """The saved ranker with its features; refuses one trained on another catalog or user table."""
    path = ranker_path(ws)
    model = load_checked(ws, device)
    feats, qvecs = workspace_inputs(ws, model.cfg.embedder, device, progress)
    have = {k: getattr(model.cfg, k) for k in feats.sizes()}
    if have != feats.sizes():
        raise checkpoint.CheckpointError(f"{path}: trained on another catalog or user table ({have} vs {feats.sizes()}); "
                                         "retrain it with `workbench ranker`")
    return model, feats, qvecs
