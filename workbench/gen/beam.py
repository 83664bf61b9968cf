"""Trie-constrained, batched beam search on the device.

All queries and all beams move together: per level one decoder step on (B, W) beams, one gather
into the trie's transition table for the valid codes, one top-k over (B, W * K) candidates, one
gather to reorder the KV caches. No Python loop over beams or queries, no host round-trip until the
caller asks for lists. Scores are path log-probabilities (log-softmax over a level's K codes, then
codes the trie forbids set to -inf, as Hugging Face's prefix_allowed_tokens_fn does).

Width 1 is constrained greedy decoding (`greedy`, the reference). When fewer valid SIDs exist than
beams (a small index, or a width larger than it), the extra slots come back with logp = -inf and
valid = False, never an invalid SID. `constrained=False` decodes the same way without the trie,
for measuring what the constraint costs; its SIDs may not exist.

With `anonymous` (the same queries' memory without their user context) a level's log-probabilities
are a residual on the user term, log_softmax(lp_anon + gate x (lp_user - lp_anon)): gate 0 decodes
exactly as without the user, 1 exactly as with, in between a geometric mixture of the two. Both
decoders follow the same beams (their caches are reordered together); the cost is one more step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.gen.model import Generator, Memory
from workbench.gen.trie import Trie


@dataclass
class Beams:
    sids: torch.Tensor  # (B, W, L) codes, best first
    logp: torch.Tensor  # (B, W) path log-probability; -inf marks an empty slot
    row: torch.Tensor | None  # (B, W) row of the SID in the index (the trie's leaf), -1 if empty; None unconstrained

    @property
    def valid(self) -> torch.Tensor:
        return torch.isfinite(self.logp)

    def to_lists(self) -> list[list[tuple[tuple[int, ...], float, int]]]:
        """Per query, its valid (sid, logp, index row) best first: the one host transfer."""
        sids, logp, valid = self.sids.cpu().tolist(), self.logp.float().cpu().tolist(), self.valid.cpu().tolist()
        rows = self.row.cpu().tolist() if self.row is not None else [[-1] * len(v) for v in valid]
        return [[(tuple(s), lp, r) for s, lp, r, ok in zip(S, P, R, V) if ok] for S, P, R, V in zip(sids, logp, rows, valid)]


def check(model: Generator, trie: Trie | None, width: int) -> None:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"beam width must be a positive integer, got {width!r}")
    if trie is not None and tuple(trie.vocab) != tuple(model.cfg.sid_vocab):
        raise ValueError(f"the SID index's vocabulary {tuple(trie.vocab)} does not match the generator's "
                         f"{tuple(model.cfg.sid_vocab)}: retrain the generator on these SIDs")


def check_gate(gate: float) -> None:
    if not 0.0 <= gate <= 1.0:  # also refuses NaN
        raise ValueError(f"the user term's gate must lie in [0, 1], got {gate!r}")


@torch.no_grad()
def beam_search(model: Generator, mem: Memory, trie: Trie | None, width: int, constrained: bool = True,
                anonymous: Memory | None = None, gate: float = 1.0) -> Beams:
    """Top-`width` SIDs per query of `mem` (B queries); `trie` may be None only when not constrained."""
    if constrained and trie is None:
        raise ValueError("constrained beam search needs a trie (compile_trie(index))")
    check(model, trie if constrained else None, width)
    check_gate(gate)
    if anonymous is not None and anonymous.batch != mem.batch:
        raise ValueError(f"the anonymous memory holds {anonymous.batch} queries, the personal one {mem.batch}")
    mix = anonymous is not None and gate < 1.0
    B, L, dev = mem.batch, model.cfg.levels, mem.mask.device
    score = torch.zeros(B, 1, device=dev)  # (B, W) running path log-probability
    node = torch.zeros(B, 1, dtype=torch.long, device=dev)  # (B, W) trie node of each beam's prefix
    seq = torch.zeros(B, 1, 0, dtype=torch.long, device=dev)  # (B, W, t) codes so far
    cache = anon_cache = None
    for t in range(L):
        W = score.shape[1]
        logits, cache = model.step(mem, seq if t else None, t, cache, W)  # (B, W, K)
        lp = torch.log_softmax(logits.float(), -1)
        if mix:
            anon, anon_cache = model.step(anonymous, seq if t else None, t, anon_cache, W)
            anon = torch.log_softmax(anon.float(), -1)
            lp = torch.log_softmax(anon + gate * (lp - anon), -1)
        cand = score[..., None] + lp  # (B, W, K)
        if constrained:
            cand = cand.masked_fill(~trie.valid_mask(t, node.clamp_min(0)), float("-inf"))
        K = cand.shape[-1]
        score, idx = cand.flatten(1).topk(min(width, W * K), dim=1)  # (B, W') best first
        parent, codes = idx // K, idx % K  # (B, W')
        seq = torch.cat([seq.gather(1, parent[..., None].expand(-1, -1, t)), codes[..., None]], 2)  # (B, W', t+1)
        if constrained:
            node = trie.step(t, node.gather(1, parent).clamp_min(0), codes)
            node = node.masked_fill(~torch.isfinite(score), -1)
        if t + 1 < L:  # reorder each layer's self-attention cache to the surviving beams
            flat = (parent + torch.arange(B, device=dev)[:, None] * W).flatten()  # (B*W',) rows of (B*W, ...)
            cache = [(k[flat], v[flat]) for k, v in cache]
            anon_cache = [(k[flat], v[flat]) for k, v in anon_cache] if mix else None
    return Beams(seq, score, node if constrained else None)


@torch.no_grad()
def greedy(model: Generator, mem: Memory, trie: Trie) -> Beams:
    """Constrained greedy decoding, step by step: the reference that width 1 must equal."""
    check(model, trie, 1)
    B, dev = mem.batch, mem.mask.device
    node = torch.zeros(B, dtype=torch.long, device=dev)
    total = torch.zeros(B, device=dev)
    out, cache = [], None
    for t in range(model.cfg.levels):
        logits, cache = model.step(mem, torch.stack(out, 1)[:, None] if out else None, t, cache, 1)
        lp = torch.log_softmax(logits[:, 0].float(), -1).masked_fill(~trie.valid_mask(t, node), float("-inf"))
        best = lp.argmax(-1)
        total = total + lp.gather(1, best[:, None])[:, 0]
        node = trie.step(t, node, best)
        out.append(best)
    return Beams(torch.stack(out, 1)[:, None], total[:, None], node[:, None])
