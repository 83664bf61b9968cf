"""CQ-SID: an RQ-VAE trained with a category constraint and a query constraint (our design; the paper
publishes only its abstract).

Category constraint (soft prefix purity). For a batch, each product's soft assignment to the codes
of level l is P_l = softmax(-||r_l - e_l||^2 / (tau_code * mean distance)), (B, K). The chance that
products i and j share the prefix of length l is S_l[i, j] = prod_{m<=l} (P_m P_m^T)[i, j]. The loss at
level l is the mean over products of

    -log( sum_j same_category[i, j] * S_l[i, j] / sum_j S_l[i, j] ),   j != i,

a differentiable prefix purity: it is small when the products a prefix holds share its category, and
it grows when a prefix mixes categories. It does not ask one category to take a single code, so
large categories still spread over several prefixes "as far as capacity allows".

Query constraint (InfoNCE). Query embeddings go through the same encoder as products. For a batch of
(query, relevant product) pairs drawn by weight (purchase 2, click 1, judged relevant 1), the loss is
a multi-positive InfoNCE between normalised query and product latents, both directions, with every
product in the batch that is relevant to the query counted as a positive. What a query wants is thus
pulled together in latent space and lands under one prefix.

Two ID modes: `cluster` (the paper's: a SID is the L codes, many products share it) and `unique`
(TIGER's ablation: an extra dedup token numbers the products that share the L codes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench import dist
from workbench.sid import metrics
from workbench.sid.config import CQSIDConfig
from workbench.sid.rqvae import RQVAE, sq_dist


@dataclass
class SIDData:
    """What CQ-SID trains on; rows of `x` are products in `product_ids` order."""

    x: np.ndarray  # (N, D) product vectors
    product_ids: np.ndarray  # (N,)
    category: pd.Series | None = None  # (N,) category paths or None
    qx: np.ndarray | None = None  # (Q, D) query vectors
    pairs: pd.DataFrame | None = None  # query (row of qx), product (row of x), weight

    def category_codes(self, depth: int | None) -> np.ndarray:
        """(N,) int category labels at `depth`, -1 where a product has none."""
        if self.category is None:
            return np.full(len(self.x), -1)
        cat = metrics.cut_category(self.category.reset_index(drop=True), depth)
        codes, _ = pd.factorize(cat)
        return codes


def check_vectors(x: np.ndarray, what: str = "product vectors", dim: int | None = None, block: int = 65_536) -> None:
    """NaN, infinite or all-zero rows and a wrong width are errors naming the rows (checked in blocks: bounded memory)."""
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        raise ValueError(f"{what}: expected shape (N, {dim or 'D'}), got {x.shape}")
    nonfinite, zero = [], []
    for s in range(0, len(x), block):
        xb = x[s:s + block]
        nonfinite.append(s + np.flatnonzero(~np.isfinite(xb).all(1)))
        zero.append(s + np.flatnonzero((xb == 0).all(1)))
    for rows, msg in ((np.concatenate(nonfinite), "hold NaN or infinite values"), (np.concatenate(zero), "are all zeros, e.g. an empty text")):
        if len(rows):
            raise ValueError(f"{what}: {len(rows)} rows {msg} (rows {rows[:5].tolist()})")


# constraints ---------------------------------------------------------------------------------------
def soft_assign(r: torch.Tensor, codebook: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, d) residuals, (K, d) codes -> (B, K) soft assignment; distances scaled by their mean."""
    d = sq_dist(r, codebook)
    return torch.softmax(-d / (tau * d.mean(1, keepdim=True).detach().clamp_min(1e-8)), dim=1)


def category_loss(residuals: torch.Tensor, codebooks: torch.Tensor, cat: torch.Tensor, levels: tuple[int, ...],
                  tau: float, anchors: slice = slice(None)) -> torch.Tensor:
    """Soft prefix purity (module docstring). residuals (B, L, d), codebooks L x (K_l, d), cat (B,) with -1 = none.

    `anchors` picks the rows i whose terms are summed (still divided by the whole batch's count): the
    terms of all anchors add up to the loss, so processes can split them (`train`)."""
    known = cat >= 0
    same = (cat[:, None] == cat[None, :]) & known[:, None] & known[None, :]
    same.fill_diagonal_(False)
    rows = known & same.any(1)  # products with a category-mate in the batch
    if not rows.any():
        return residuals.new_zeros(())
    other = known[None, :].expand(len(cat), -1).clone()
    other.fill_diagonal_(False)
    same, other, mine = same[anchors], other[anchors], rows[anchors]  # (A, B), (A, B), (A,)
    loss, S = residuals.new_zeros(()), None
    for lvl in range(max(levels)):
        P = soft_assign(residuals[:, lvl], codebooks[lvl], tau)
        co = P[anchors] @ P.T  # (A, B) chance of sharing the code at this level
        S = co if S is None else S * co
        if lvl + 1 in levels:
            num = (S * same).sum(1)
            den = (S * other).sum(1)
            loss = loss + -(torch.log(num[mine] + 1e-12) - torch.log(den[mine] + 1e-12)).sum() / rows.sum()
    return loss / len(levels)


def query_loss(zq: torch.Tensor, zp: torch.Tensor, positive: torch.Tensor, tau: float) -> torch.Tensor:
    """Multi-positive InfoNCE both ways. zq (B, d) queries, zp (B, d) products, positive (B, B) bool."""
    logits = F.normalize(zq, dim=1) @ F.normalize(zp, dim=1).T / tau
    neg_inf = torch.finfo(logits.dtype).min

    def one_way(lg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return (torch.logsumexp(lg, 1) - torch.logsumexp(lg.masked_fill(~pos, neg_inf), 1)).mean()

    return 0.5 * (one_way(logits, positive) + one_way(logits.T, positive.T))


# training --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """What every step of one training reads, on the device: the products and what constrains them."""

    x: torch.Tensor  # (N, D) product vectors
    cat: torch.Tensor | None  # (N,) category labels (-1: none); None when the category constraint is off
    qx: torch.Tensor | None = None  # (Q, D) query vectors; None when the query constraint is off
    relevant: sp.csr_matrix | None = None  # (Q, N) query -> its relevant products
    pair_q: np.ndarray | None = None  # (P,) the (query, product) pairs the query constraint draws from ...
    pair_p: np.ndarray | None = None  # (P,)
    pair_w: torch.Tensor | None = None  # (P,) ... by weight (purchase 2, click 1, judged relevant 1)


@dataclass(frozen=True)
class Step:
    """One global batch's losses on this rank. Under torchrun each rank holds its part of a global mean
    (`weight` x its term; the anchors' share for the category loss), so averaging over ranks gives the
    one-process value (1 on one process)."""

    loss: torch.Tensor  # what this rank backpropagates
    parts: dict[str, torch.Tensor]  # recon, codebook, commit, category, query: each loss term
    weight: dict[str, float]  # the factor that makes each term this rank's part of the global mean
    codes: torch.Tensor  # (B_rank, L) the codes this rank's products took


def prepare(data: SIDData, cfg: CQSIDConfig, device: str, g: torch.Generator) -> tuple[RQVAE, Inputs]:
    """The RQ-VAE, standardised on the products and its codebooks k-means initialised (the same on every
    rank), and the training inputs on the device."""
    m = cfg.model
    check_vectors(data.x, dim=m.input_dim)
    n = len(data.x)
    if n < max(m.codebook_sizes):
        raise ValueError(f"{n} products but K={max(m.codebook_sizes)} codes at a level: k-means initialisation needs at "
                         f"least K products; use smaller codebooks (at most {n} codes per level)")
    torch.manual_seed(cfg.seed)
    model = RQVAE(m).to(device)
    x = torch.as_tensor(data.x, dtype=torch.float32, device=device)
    model.set_standardisation(x)
    model.init_codebooks(x[torch.randperm(n, generator=g)[:20_000].to(device)])
    dist.sync_params(model)
    cat = torch.as_tensor(data.category_codes(cfg.category_depth), device=device)
    inputs = Inputs(x, cat if cfg.category_weight > 0 and bool((cat >= 0).any()) else None)
    pairs = data.pairs if cfg.query_weight > 0 and data.pairs is not None and len(data.pairs) else None
    if pairs is None:
        return model, inputs
    check_vectors(data.qx, "query vectors", m.input_dim)
    qx = torch.as_tensor(data.qx, dtype=torch.float32, device=device)
    relevant = sp.csr_matrix((np.ones(len(pairs)), (pairs["query"], pairs["product"])), shape=(len(qx), n))
    return model, replace(inputs, qx=qx, relevant=relevant, pair_q=pairs["query"].to_numpy(), pair_p=pairs["product"].to_numpy(),
                          pair_w=torch.tensor(pairs["weight"].to_numpy(), dtype=torch.float))


def losses(model: RQVAE, inp: Inputs, b: torch.Tensor, cfg: CQSIDConfig, g: torch.Generator) -> Step:
    """The losses of global batch `b` (product rows, the same on every rank) on this rank: the RQ-VAE's on
    its slice, the category constraint over every rank's rows (its own anchors' terms), and the query
    constraint over a batch of pairs drawn by weight (every rank draws the same, encodes its part)."""
    N = dist.world()
    mine = dist.shard(b)
    k_mine = len(mine)
    share = k_mine / (len(b) / N)  # local means -> this rank's part of the global mean (1 on one process)
    out = model(inp.x[mine if k_mine else b[:1]])  # an empty slice runs one row at weight 0
    parts = {"recon": out["recon"], "codebook": out["codebook"], "commit": out["commit"]}
    weight = dict.fromkeys(parts, share)
    loss = out["loss"] * share
    if inp.cat is not None:
        res = dist.gather_batch(out["residuals"][:k_mine], len(b))  # (B, L, d), every rank's rows
        # each rank sums its anchors' terms: N x its share, which the gradient averaging divides back
        parts["category"] = N * category_loss(res, model.codebooks, inp.cat[b], cfg.category_levels, cfg.tau_code,
                                              anchors=dist.my_rows())
        weight["category"] = 1.0
        loss = loss + cfg.category_weight * parts["category"]
    if inp.qx is not None:
        pick = torch.multinomial(inp.pair_w, min(cfg.query_batch, len(inp.pair_w)), replacement=True, generator=g).numpy()
        qi, pi = inp.pair_q[pick], inp.pair_p[pick]
        positive = torch.as_tensor(inp.relevant[qi][:, pi].toarray() > 0, device=inp.x.device)  # (Bq, Bq)
        r = dist.my_rows()  # this rank's pairs
        z = dist.gather_batch(torch.cat([model.encode(inp.qx[qi[r]]), model.encode(inp.x[pi[r]])], 1), len(qi))  # (Bq, 2d)
        parts["query"] = query_loss(*z.chunk(2, dim=1), positive, cfg.tau_query)
        weight["query"] = 1.0
        loss = loss + cfg.query_weight * parts["query"]
    return Step(loss, parts, weight, out["codes"][:k_mine])


def update(model: RQVAE, opt, sched, loss: torch.Tensor) -> None:
    """One optimiser step on the gradients averaged over ranks (DDP's arithmetic, done by hand: the
    constraints' gathers need collectives of their own inside the backward pass)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.average_grads(model.parameters())
    opt.step()
    sched.step()


def restart(model: RQVAE, inp: Inputs, counts: list[torch.Tensor], g: torch.Generator) -> int:
    """Re-seed the codes no product took this epoch from live residuals of a product sample; how many."""
    model.eval()
    with torch.no_grad():
        sample = inp.x[torch.randperm(len(inp.x), generator=g)[:8192].to(inp.x.device)]
        res = model.quantize(model.encode(sample))[1]
    return model.restart_dead(counts, res, generator=g)


def epoch_row(model: RQVAE, data: SIDData, inp: Inputs, cfg: CQSIDConfig, epoch: int, sums: dict, counts: list[torch.Tensor],
              **extra) -> dict:
    """What one epoch logs: mean losses, code usage and perplexity per level, and every `eval_every` epochs
    (rank 0) the unique rate, purity and coherence of the codes."""
    ppl = [float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())) for p in (c / c.sum() for c in counts)]
    row = {**sums, **extra, **{f"used_l{i + 1}": float((c > 0).float().mean()) for i, c in enumerate(counts)},
           **{f"perplexity_l{i + 1}": p for i, p in enumerate(ppl)}}
    if dist.is_main() and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
        with torch.no_grad():  # x is checked and on the device already: code it in chunks, no round trip
            codes = torch.cat([model.codes(xb) for xb in inp.x.split(65_536)]).cpu().numpy()
        row.update(flat_stats(evaluate(model, data, cfg, inp.x.device, codes=codes)))
    return row


def train(data: SIDData, cfg: CQSIDConfig, device: str = "cpu", run=None, progress: bool = True) -> RQVAE:
    """Train CQ-SID on `data`: `prepare`, then per global batch `losses -> update`, and per epoch the dead
    codes' `restart` and the `epoch_row` that goes to `run` (a logbook Run, given on rank 0 only).

    Data-parallel under torchrun (`workbench.dist`): every rank draws the same global batches and query
    pairs and encodes its slice; the whole-batch constraint losses see every rank's rows through
    `dist.gather_batch`; gradients are averaged (`update`). Each rank holds every logged loss as N x its
    part of the global value, so their mean over ranks is the global value (`dist.mean_over_ranks`);
    code usage is summed over ranks (`dist.all_sum_many_`) before dead codes restart."""
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    model, inp = prepare(data, cfg, device, g)
    n, sizes = len(inp.x), cfg.model.codebook_sizes
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * -(-n // cfg.batch_size), eta_min=cfg.lr * 0.05)
    bar = tqdm(range(cfg.epochs), desc=f"cq-sid ({cfg.variant})", disable=not progress or not dist.is_main())
    for epoch in bar:
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        counts = [torch.zeros(k, device=device) for k in sizes]
        batches = torch.randperm(n, generator=g).to(device).split(cfg.batch_size)
        for b in batches:  # the same global batches on every rank
            step = losses(model, inp, b, cfg, g)
            update(model, opt, sched, step.loss)
            for k, v in step.parts.items():  # N x this rank's part of the epoch's mean
                sums[k] = sums.get(k, 0.0) + v.detach() * step.weight[k] / len(batches)
            for lvl, c in enumerate(step.codes.T):
                counts[lvl] += torch.bincount(c, minlength=sizes[lvl])
        sums = dist.mean_over_ranks(sums)  # the epoch's mean losses over the global batches
        counts = dist.all_sum_many_(counts)  # every rank's code usage
        dead = epoch < cfg.restart_until * cfg.epochs and any((c == 0).any() for c in counts)  # while there is time to train them
        restarted = restart(model, inp, counts, g) if dead else 0
        secs = time.perf_counter() - t0
        row = epoch_row(model, data, inp, cfg, epoch, sums, counts, lr=sched.get_last_lr()[0], restarted=restarted, seconds=secs,
                        examples_per_s=n / secs)
        if run is not None:
            run.log(epoch + 1, stage="sid", **row)
        bar.set_postfix(recon=f"{sums['recon']:.3f}", ppl1=f"{row['perplexity_l1']:.0f}")
    model.eval()
    return model


# assignment and IDs ------------------------------------------------------------------------------------
@torch.no_grad()
def assign(model: RQVAE, x: np.ndarray, device: str = "cpu", chunk: int = 65_536, progress: bool = False) -> np.ndarray:
    """(N, D) vectors -> (N, L) int32 codes, in chunks so memory stays bounded."""
    check_vectors(x, dim=model.cfg.input_dim)
    model.eval()
    out = np.empty((len(x), model.cfg.levels), np.int32)
    for s in tqdm(range(0, len(x), chunk), desc="assign SIDs", disable=not progress, unit="chunk"):
        xb = torch.as_tensor(np.ascontiguousarray(x[s:s + chunk]), dtype=torch.float32, device=device)
        out[s:s + len(xb)] = model.codes(xb).cpu().numpy()
    return out


def dedup(codes: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """(N,) dedup token of each row: its rank among earlier rows with the same codes (TIGER's unique IDs).

    `start` (N,) offsets the count per row, for new products joining clusters that already have members.
    """
    if len(codes) == 0:
        return np.zeros(0, np.int32)
    _, inv = np.unique(codes, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    sorted_inv = inv[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
    rank = np.arange(len(inv)) - np.repeat(first, np.diff(np.r_[first, len(inv)]))
    out = np.empty(len(inv), np.int32)
    out[order] = rank
    return out + (0 if start is None else start)


def evaluate(model: RQVAE, data: SIDData, cfg: CQSIDConfig, device: str = "cpu", codes: np.ndarray | None = None) -> dict:
    """Usage, cluster sizes, category purity and query coherence of the model's codes for `data`
    (`codes`, when the caller has already assigned them)."""
    codes = assign(model, data.x, device) if codes is None else codes
    out = {"usage": metrics.usage(codes, cfg.model.codebook_sizes), "clusters": metrics.cluster_sizes(codes)}
    if data.category is not None:
        out["purity"] = metrics.category_purity(codes, data.category.reset_index(drop=True))
    if data.pairs is not None and len(data.pairs):
        out["coherence"] = metrics.query_coherence(codes, data.pairs)
    return out


def flat_stats(stats: dict) -> dict[str, float]:
    """`evaluate`'s nested result as flat metric names for the logbook."""
    row = {k: float(v) for k, v in stats["clusters"].items()}
    for r in stats.get("purity", []):
        row[f"purity_l{r['level']}_d{r['depth']}"] = r["purity"]
    for r in stats.get("coherence", []):
        row[f"coherence_l{r['level']}"] = r["coherence"]
    return {**row, **stats.get("labels", {})}


def variant(cfg: CQSIDConfig, name: str) -> CQSIDConfig:
    """The four ablation variants of one config: plain, +category, +query, cq-sid."""
    w = {"plain": (0.0, 0.0), "+category": (1.0, 0.0), "+query": (0.0, 1.0), "cq-sid": (1.0, 1.0)}
    if name not in w:
        raise ValueError(f"unknown variant {name!r}; one of {list(w)}")
    c, q = w[name]
    return replace(cfg, category_weight=c * (cfg.category_weight or 1.0), query_weight=q * (cfg.query_weight or 1.0))
