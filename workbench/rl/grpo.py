"""GRPO and EG-GRPO for the SID generator: pure functions on tensors (the loop is `workbench.rl.train`).

A prompt is one search (user context + query). Its *group* holds N members, each a SID with a
reward (`workbench.rl.rewards`):

    GRPO     the G SIDs sampled from the current policy (trie-constrained, so every one exists)
    EG-GRPO  the same G samples plus up to R *reference* members: the SIDs of the products the user
             bought (first) or clicked in that search, the ground truth ("expert guidance")

The policy is the constrained one: at level l, softmax over the codes the trie allows after the
prefix (renormalised), at the sampling temperature. Per member and level, with token log-probs
logp (current), old (at sampling time), ref (the frozen stage-3 model):

    advantage   A_i = (r_i - mean_group r) / (std_group r + eps), over all members of the group
                (EG-GRPO: over the union of samples and references); exactly 0 when the group's
                rewards are all equal: such a group teaches nothing, and its share is logged
    sampled     PPO-clipped surrogate  min(rho A, clip(rho, 1 - eps_clip, 1 + eps_clip) A),
                rho = exp(logp - old)
    reference   off-policy: the log's behaviour policy is unknown, so (our choice, after LUFFY,
                arXiv 2504.14945) we treat the expert as deterministic, q(y) = 1, which makes the
                importance ratio pi(y) itself; LUFFY's policy shaping f(pi) = pi / (pi + gamma)
                replaces it (`shaping="luffy"`): gradient A * gamma * pi / (pi + gamma)^2 * grad log pi,
                which, unlike pi * grad log pi, does not vanish for the low-probability codes that
                guidance exists to teach; no clipping (there is no old policy to stay near).
                `shaping="none"` takes the ratio as 1: gradient A * grad log pi (advantage-weighted SFT).
                Either way times `ref_weight`. `ref_floor` f uses max(A, f) for references: with f = 0 a
                reward that does not value the ground truth (say, clicks and exposure alone) cannot teach
                the policy away from what users bought, it only stops pulling towards it; with f > 0 the
                references always pull, an SFT anchor whose strength the advantage can only raise.
    KL          k3 estimator exp(ref - logp) - (ref - logp) - 1 on sampled members, times beta

    loss = -(mean over members and levels of the surrogates) + beta * mean KL

Shapes: B groups of N members, each member a SID of L codes (B, N, L); the mask `present` (B, N)
marks the members that exist (a search may have fewer than R references), `is_ref` (B, N) the references.

Everything here except the choice of LUFFY-style shaping for the references is standard GRPO
(Shao et al. 2024; TRL's GRPOTrainer); injecting references into the group and normalising over the
union is the paper's EG-GRPO as its abstract describes it; the exact formulas are ours.
"""

from __future__ import annotations

import torch

from workbench.gen.model import Generator, Memory
from workbench.gen.trie import Trie
from workbench.rl.config import LossConfig


@torch.no_grad()
def sample(model: Generator, mem: Memory, trie: Trie, n: int, temperature: float = 1.0,
           generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n, L) SIDs, n independent samples per query from the trie-constrained policy.

    Inverse-CDF sampling from `uniforms` (B, n, L) in [0, 1), drawn with `generator` when not given:
    a sample is a function of its query's own uniforms, so a batch split over processes (each
    passing its rows of the global batch's uniforms) draws what one process would."""
    if n < 1 or temperature <= 0:
        raise ValueError(f"need n >= 1 samples and temperature > 0, got {n}, {temperature}")
    B, dev = mem.batch, mem.mask.device
    if uniforms is None:
        uniforms = torch.rand(B, n, model.cfg.levels, generator=generator, device=generator.device if generator else dev)
    if uniforms.shape != (B, n, model.cfg.levels):
        raise ValueError(f"uniforms must have shape {(B, n, model.cfg.levels)}, got {tuple(uniforms.shape)}")
    uniforms = uniforms.to(dev)
    node = torch.zeros(B, n, dtype=torch.long, device=dev)
    cache, out = None, []
    for t in range(model.cfg.levels):
        logits, cache = model.step(mem, torch.stack(out, -1) if out else None, t, cache, n)  # (B, n, K); members keep their own cache rows
        logits = (logits.float() / temperature).masked_fill(~trie.valid_mask(t, node), float("-inf"))
        cdf = logits.softmax(-1).cumsum(-1)  # (B, n, K); flat over codes the trie forbids, so they are never drawn
        u = uniforms[..., t: t + 1] * cdf[..., -1:]  # (B, n, 1), below the total mass
        codes = torch.searchsorted(cdf, u, right=True)[..., 0].clamp_max(cdf.shape[-1] - 1)  # (B, n)
        node = trie.step(t, node, codes)
        out.append(codes)
    return torch.stack(out, -1)


def token_logp(model: Generator, ids: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None,
               sids: torch.Tensor, trie: Trie, temperature: float = 1.0) -> torch.Tensor:
    """(M, L) log-probabilities of each code of (M, L) SIDs under the constrained policy (teacher forcing)."""
    logits = model(ids, mask, sids, context)  # per level (M, K_l)
    node = torch.zeros(len(sids), dtype=torch.long, device=sids.device)
    out = []
    for lvl, lg in enumerate(logits):
        lp = (lg.float() / temperature).masked_fill(~trie.valid_mask(lvl, node.clamp_min(0)), float("-inf")).log_softmax(-1)
        out.append(lp.gather(1, sids[:, lvl: lvl + 1])[:, 0])
        node = trie.step(lvl, node.clamp_min(0), sids[:, lvl])
    return torch.stack(out, 1)


def advantages(rewards: torch.Tensor, present: torch.Tensor | None = None, eps: float = 1e-4) -> torch.Tensor:
    """(B, N) rewards -> (B, N) group-normalised advantages over the members present (mask (B, N));
    0 for absent members and for every member of a group whose rewards are all equal."""
    m = torch.ones_like(rewards, dtype=torch.bool) if present is None else present
    w = m.float()
    n = w.sum(1, keepdim=True).clamp_min(1)
    mean = (rewards * w).sum(1, keepdim=True) / n
    std = (((rewards - mean) ** 2) * w).sum(1, keepdim=True).div(n).sqrt()
    equal = equal_groups(rewards, m)[:, None]
    return torch.where(m & ~equal, (rewards - mean) / (std + eps), torch.zeros_like(rewards))


def equal_groups(rewards: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) whether all present members (mask (B, N)) of each group have the same reward (no learning signal)."""
    m = torch.ones_like(rewards, dtype=torch.bool) if present is None else present
    hi = rewards.masked_fill(~m, float("-inf")).amax(1)
    lo = rewards.masked_fill(~m, float("inf")).amin(1)
    return (hi - lo) <= 1e-9 * hi.abs().clamp_min(1.0)


def loss(logp: torch.Tensor, *, old: torch.Tensor, ref: torch.Tensor, adv: torch.Tensor, is_ref: torch.Tensor,
         present: torch.Tensor, cfg: LossConfig, totals: tuple[float, float] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch of groups and its statistics (pg_loss, kl, clip_share). See the module docstring.

    logp / old / ref (B, N, L) token log-probs of the members (current policy, at sampling time, stage 3);
    adv (B, N) advantages; is_ref (B, N) the reference members; present (B, N) the members that exist.
    The means divide by the batch's present and sampled token counts, or by `totals` (the global
    batch's counts over the number of processes, for a data-parallel slice: see `workbench.dist`)."""
    A = adv[..., None]  # (B, N, 1)
    rho = torch.exp(logp - old)
    sampled = torch.minimum(rho * A, rho.clamp(1 - cfg.clip, 1 + cfg.clip) * A)
    p = logp.exp()
    A_ref = A if cfg.ref_floor is None else A.clamp_min(cfg.ref_floor)
    guided = p / (p + cfg.gamma) * A_ref if cfg.shaping == "luffy" else torch.exp(logp - logp.detach()) * A_ref
    surrogate = torch.where(is_ref[..., None], cfg.ref_weight * guided, sampled)  # (B, N, L)
    tok_present = present[..., None].expand_as(surrogate).float()  # (B, N, L) tokens of present members
    tok_sampled = (present & ~is_ref)[..., None].expand_as(surrogate).float()  # (B, N, L) tokens of sampled members
    d = ref - logp
    kl = torch.exp(d) - d - 1  # (B, N, L), >= 0
    n_present, n_sampled = totals if totals is not None else (tok_present.sum(), tok_sampled.sum())
    n_present, n_sampled = max(float(n_present), 1.0), max(float(n_sampled), 1.0)
    pg = -(surrogate * tok_present).sum() / n_present
    kl_mean = (kl * tok_sampled).sum() / n_sampled
    total = pg + cfg.kl * kl_mean
    clipped = ((rho - 1).abs() > cfg.clip).float()
    return total, {"pg_loss": float(pg.detach()), "kl": float(kl_mean.detach()),
                   "clip_share": float((clipped * tok_sampled).sum() / n_sampled)}
