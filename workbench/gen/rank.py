"""A rank loss over the beam (after LTRGR, arXiv 2305.15115, and PAG, arXiv 2404.14600).

Stages 1-3 teach the generator the likelihood of one target SID at a time, level by level; the channel
is judged by whether the SIDs that answer a query are *inside the beam* it decodes. This phase
optimises that directly. For each training query q with target SIDs P(q) and weights w_p (its
relevant products' SIDs, `data.query_pairs`), decode the constrained beam B(q) of width W with the
current model (no gradient), and score every SID of the list C(q) = B(q) u P(q) by its path score, the
one beam search ranks by (`gen.beam`: per level log-softmax over the level's codes, summed):

    s(c) = sum_l log softmax(logits_l)[c_l]

    L(q) = - sum_{p in P(q)} w_p log( exp s(p) / sum_{c in C(q)} exp s(c) )  /  sum_p w_p

a listwise softmax cross-entropy whose negatives are the beam's own competitors (the SIDs the model
would otherwise hand over instead), not the whole vocabulary of each level as in teacher forcing.
With `negatives` > 0, C(q) also holds up to that many SIDs of products the query's training sessions
showed and never bought (`data.shown_not_bought`): hard negatives the beam may not have reached.
Invariants: every target is in its list (so the loss is finite); a SID appears once per list (a
target the beam also found is not counted twice); queries are the training split's only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.config import positive
from workbench.gen.beam import beam_search
from workbench.gen.data import Pairs
from workbench.gen.model import Generator
from workbench.gen.trie import Trie


@dataclass(frozen=True)
class RankConfig:
    width: int = 32  # beam width whose SIDs are each query's negatives
    epochs: int = 1  # passes over the training queries
    batch_size: int = 32  # queries per step
    lr: float = 1e-4  # AdamW learning rate (constant)
    max_targets: int = 16  # a query's heaviest target SIDs kept
    negatives: int = 0  # per query, up to this many SIDs shown on it in training sessions and never bought (0: the beam's only)
    seed: int = 0  # order of the queries

    def __post_init__(self):
        positive(self, "width", "epochs", "batch_size", "lr", "max_targets")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")


def list_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, N) path scores (-inf: an empty slot) and (B, N) target weights (0: not a target) -> the mean
    over queries of the listwise softmax cross-entropy in the docstring."""
    logz = torch.logsumexp(scores, 1, keepdim=True)  # (B, 1)
    lp = torch.where(target > 0, scores - logz, torch.zeros_like(scores))
    return -((target * lp).sum(1) / target.sum(1).clamp_min(1e-12)).mean()


def path_scores(model: Generator, ids: torch.Tensor, mask: torch.Tensor, sids: torch.Tensor) -> torch.Tensor:
    """(B, T) inputs and (B, N, L) SIDs -> (B, N) path scores with gradients (teacher forcing)."""
    B, N, L = sids.shape
    rep = lambda x: x.repeat_interleave(N, 0)  # noqa: E731  (B, ...) -> (B * N, ...)
    flat = sids.reshape(B * N, L)
    logits = model(rep(ids), rep(mask), flat)  # per level (B * N, K_l)
    s = sum(lg.float().log_softmax(-1).gather(1, flat[:, lvl: lvl + 1])[:, 0] for lvl, lg in enumerate(logits))
    return s.reshape(B, N)


def lists(beam_sids: torch.Tensor, beam_ok: torch.Tensor, targets: list[tuple[np.ndarray, np.ndarray]],
          negatives: list[np.ndarray] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query the beam's SIDs (B, W, L) (valid where `beam_ok` (B, W)), its targets (codes (P, L),
    weights (P,)) and optional extra negatives (codes (M, L)) -> the union list (B, N, L), whether each
    slot is filled (B, N), and each slot's target weight (B, N); each SID once, targets first."""
    rows, weights = [], []
    for b, (codes, w) in enumerate(targets):
        seen = {tuple(c): x for c, x in zip(codes.tolist(), w.tolist())}
        beam = [tuple(s) for s, ok in zip(beam_sids[b].tolist(), beam_ok[b].tolist()) if ok]
        more = [tuple(s) for s in negatives[b].tolist()] if negatives is not None else []
        extra = list(dict.fromkeys(s for s in beam + more if s not in seen))
        rows.append(list(seen) + extra)
        weights.append(list(seen.values()) + [0.0] * len(extra))
    n, L = max(len(r) for r in rows), beam_sids.shape[-1]
    out = torch.zeros(len(rows), n, L, dtype=torch.long)
    filled = torch.zeros(len(rows), n, dtype=torch.bool)
    target = torch.zeros(len(rows), n)
    for b, (r, w) in enumerate(zip(rows, weights)):
        out[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        filled[b, : len(r)] = True
        target[b, : len(w)] = torch.tensor(w)
    return out, filled, target


def grouped(pairs: Pairs, max_targets: int) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """Training pairs -> distinct texts and, per text, its target SIDs (heaviest first, repeats summed)."""
    df = pd.DataFrame({"text": pairs.text, "w": pairs.weight, "k": [tuple(c) for c in pairs.sids.tolist()]})
    df = df.groupby(["text", "k"], sort=False)["w"].sum().reset_index().sort_values(["text", "w"], ascending=[True, False])
    texts, targets = [], []
    for text, g in df.groupby("text", sort=False):
        g = g.head(max_targets)
        texts.append(text)
        targets.append((np.array(g["k"].tolist(), dtype=np.int64), g["w"].to_numpy(np.float64)))
    return texts, targets


def fit_rank(model: Generator, tok, pairs: Pairs, trie: Trie, cfg: RankConfig, device: str = "cpu", run=None,
             progress: bool = True, negatives: dict[str, np.ndarray] | None = None) -> list[dict]:
    """Train `model` in place with the rank loss on `pairs` (training queries -> target SIDs), with
    `negatives` (text -> (M, L) SIDs; `data.shown_not_bought`) when `cfg.negatives` > 0; one dict per
    epoch: loss, the share of targets the beam held before the step (`beam_recall`), seconds."""
    texts, targets = grouped(pairs, cfg.max_targets)
    if not texts:
        raise ValueError("no training queries with target SIDs for the rank loss")
    if cfg.negatives and not negatives:
        raise ValueError("negatives > 0 needs shown-and-not-bought SIDs: this workspace's search log has none on training queries")
    empty = np.zeros((0, pairs.sids.shape[1]), np.int64)
    extra = [(negatives or {}).get(t, empty)[: cfg.negatives] for t in texts] if cfg.negatives else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        t0, total, held, n_targets = time.perf_counter(), 0.0, 0.0, 0.0
        order = torch.randperm(len(texts), generator=gen).tolist()
        steps = range(0, len(order), cfg.batch_size)
        for s in tqdm(steps, desc=f"rank loss (epoch {epoch + 1})", disable=not progress, total=math.ceil(len(order) / cfg.batch_size)):
            idx = order[s: s + cfg.batch_size]
            ids, mask = tok.encode([texts[i] for i in idx], model.cfg.max_len, device)
            model.eval()
            with torch.no_grad():
                beams = beam_search(model, model.memory(ids, mask), trie, cfg.width)
            sids, filled, target = lists(beams.sids.cpu(), beams.valid.cpu(), [targets[i] for i in idx],
                                         None if extra is None else [extra[i] for i in idx])
            in_beam = [{tuple(x) for x, ok in zip(beams.sids[b].tolist(), beams.valid[b].tolist()) if ok} for b in range(len(idx))]
            held += sum(w for b, i in enumerate(idx) for c, w in zip(targets[i][0].tolist(), targets[i][1].tolist())
                        if tuple(c) in in_beam[b])
            n_targets += sum(float(targets[i][1].sum()) for i in idx)
            model.train()
            scores = path_scores(model, ids, mask, sids.to(device)).masked_fill(~filled.to(device), float("-inf"))
            lo = list_loss(scores, target.to(device))
            opt.zero_grad(set_to_none=True)
            lo.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(lo.detach()) * len(idx)
        row = {"epoch": epoch + 1, "loss": total / len(texts), "beam_recall": held / max(n_targets, 1e-12),
               "seconds": time.perf_counter() - t0, "queries_per_s": len(texts) / (time.perf_counter() - t0)}
        history.append(row)
        if run is not None:
            run.log(epoch + 1, stage="rank", **{k: v for k, v in row.items() if k != "epoch"})
    model.eval()
    return history
