"""Stage 4: refine the stage-3 generator against the ranker with GRPO or EG-GRPO (`workbench rl`).

Prompts are the training queries' searches that got a click (user context at that time + query);
the held-out queries' searches measure click and purchase hit rates. Each step:

    1. draw `prompts` searches; sample `group` SIDs each from the current policy (constrained)
    2. EG-GRPO: add up to `refs` reference members, the SIDs of the products bought, then clicked
    3. score every member's cluster with the ranker (`rewards.Judge`) and sum the weighted rewards
    4. advantages over each group; `inner` clipped policy-gradient updates with KL to stage 3

and logs, per step, the collapse diagnostics: each reward component, the share of sampled SIDs that
hold a product clicked (bought) in their search, the share of groups whose rewards are all equal, SID entropy (bits) and the share of distinct SIDs across the batch's samples,
mean cluster size, the share of click-bait clusters (half or more of their products), KL to the
reference. Every `eval_every` steps: click and purchase hit@10 on held-out searches (beam, with the
user's context) and held-out Recall@10. Writes <workspace>/gen/<out>.safetensors.

Data-parallel under torchrun (`workbench.dist`): every rank draws the same prompts and the same
sampling uniforms for them, and takes its slice of the prompts; groups live on one rank, so the
advantages are local; each rank's loss divides by the global batch's token counts over N and DDP
averages the gradients, which gives the one-process update. The diagnostics are computed on every
rank's members gathered together; rank 0 alone evaluates, logs and writes.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench import dist
from workbench.data.relevance import held_out
from workbench.gen import store
from workbench.gen.data import eval_set
from workbench.gen.retrieve import Retriever, ranked_products
from workbench.gen.stages import recall_eval
from workbench.rl import grpo, rewards
from workbench.rl.ranker import from_workspace as load_ranker
from workbench.rl.ranker import impressions


@dataclass(frozen=True)
class RLConfig:
    algo: str = "eg-grpo"  # grpo, or eg-grpo (ground-truth reference members in every group)
    steps: int = 100  # optimisation steps
    prompts: int = 32  # searches per step (the global number under torchrun)
    group: int = 8  # SIDs sampled per search (G)
    refs: int = 1  # EG-GRPO: ground-truth members per group (R)
    temperature: float = 1.0  # sampling temperature of the groups
    inner: int = 2  # clipped updates per step on the same samples
    lr: float = 1e-4  # AdamW learning rate
    eval_every: int = 20  # steps between held-out evaluations
    eval_width: int = 32  # beam width of the held-out evaluations
    seed: int = 0  # random seed
    loss: grpo.LossConfig = field(default_factory=grpo.LossConfig)
    rewards: rewards.RewardConfig = field(default_factory=rewards.RewardConfig)

    def __post_init__(self):
        if self.algo not in grpo.ALGOS:
            raise ValueError(f"algo must be one of {grpo.ALGOS}, got {self.algo!r}")
        if min(self.steps, self.prompts, self.group, self.inner) < 1 or self.refs < 0:
            raise ValueError("steps, prompts, group and inner must be >= 1 and refs >= 0")


def searches(ws, held: bool) -> pd.DataFrame:
    """One row per search with a click: session_id, user_id, time, query_id, query, clicked, bought."""
    log = ws.table("search_log")
    ev = log[(log["clicked"] | log["purchased"]) & (held_out(log["query_id"]) == held)]
    if ev.empty:
        raise ValueError(f"workspace {ws.path} has no {'held-out' if held else 'training'} searches with clicks")
    g = ev.groupby("session_id", sort=True).agg(
        user_id=("user_id", "first"), time=("time", "first"), query_id=("query_id", "first"),
        clicked=("product_id", list), bought=("purchased", list))
    g["bought"] = [[p for p, b in zip(c, f) if b] for c, f in zip(g["clicked"], g["bought"])]
    return g.reset_index().merge(ws.table("queries"), on="query_id")


def hit_rates(retriever: Retriever, s: pd.DataFrame, context, width: int, k: int = 10) -> dict[str, float]:
    """Share of searches with a clicked (bought) product in the top k retrieved products."""
    got = [set(ranked_products(h, k)) for h in retriever.search(s["query"].tolist(), width, context)]
    click = np.mean([bool(g & set(c)) for g, c in zip(got, s["clicked"])])
    has_buy = [len(b) > 0 for b in s["bought"]]
    buy = np.mean([bool(g & set(b)) for g, b, h in zip(got, s["bought"], has_buy) if h]) if any(has_buy) else float("nan")
    return {f"click_hit@{k}": float(click), f"purchase_hit@{k}": float(buy)}


def _gt_rows(sid_of: dict, lists, width: int) -> torch.Tensor:
    """(B, width) index rows of the SIDs of the listed products, -1 padded."""
    out = torch.full((len(lists), max(width, 1)), -1, dtype=torch.long)
    for i, ps in enumerate(lists):
        rows = list(dict.fromkeys(int(sid_of[p]) for p in ps if p in sid_of))[:width]
        out[i, : len(rows)] = torch.as_tensor(rows, dtype=torch.long)
    return out


def diagnostics(sids: torch.Tensor, s: rewards.Scored, parts: dict, equal: torch.Tensor, G: int, has_buy=None) -> dict:
    """Collapse diagnostics over the sampled members (the first G of each group) of one step."""
    flat = [tuple(x) for x in sids[:, :G].reshape(-1, sids.shape[-1]).tolist()]
    counts = pd.Series(flat).value_counts().to_numpy()
    p = counts / counts.sum()
    out = {f"reward_{k}": float(v[:, :G].mean()) for k, v in parts.items()}
    buyers = s.hit_buy.new_tensor([bool(b) for b in has_buy]) if has_buy is not None else None
    out["sample_click_hit"] = float(s.hit_click[:, :G].float().mean())  # share of sampled SIDs holding a clicked product
    if buyers is not None and buyers.any():
        out["sample_purchase_hit"] = float(s.hit_buy[buyers, :G].float().mean())
    out.update({"equal_groups": float(equal.float().mean()), "sid_entropy_bits": float(-(p * np.log2(p)).sum()),
                "distinct_sids": len(counts) / len(flat), "cluster_size": float(s.size[:, :G].float().mean()),
                "clickbait_clusters": float((s.clickbait[:, :G] >= 0.5).float().mean())})
    return out


def _cpu(x):
    """Tensors in (nested) tuples, lists, dicts and `Scored` moved to the CPU, to gather between processes."""
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu(v) for v in x)
    if isinstance(x, rewards.Scored):
        return rewards.Scored(**{f.name: _cpu(getattr(x, f.name)) for f in fields(x)})
    return x


def _cat_ranks(parts: list) -> tuple:
    """Every rank's (members, scored, rewards, equal, has_buy) joined along the batch: one step's whole batch."""
    members, scored, comps, equal, has_buy = zip(*parts)
    s = rewards.Scored(**{f.name: torch.cat([getattr(x, f.name) for x in scored]) for f in fields(rewards.Scored) if f.name != "tau"},
                       tau=scored[0].tau)
    comps = {k: torch.cat([c[k] for c in comps]) for k in comps[0]}
    return torch.cat(members), s, comps, torch.cat(equal), [b for h in has_buy for b in h]


def train_rl(ws, cfg: RLConfig, name: str = "generator", source: str | None = None, out: str | None = None,
             device: str = "cpu", progress: bool = True) -> list[dict]:
    """Refine `source` (default <name>-stage3) with `cfg.algo`; save as `out` (default <name>-<algo>)."""
    n_ranks, me, main = dist.world(), dist.rank(), dist.is_main()
    if cfg.prompts < n_ranks:
        raise ValueError(f"{cfg.prompts} prompts per step cannot be split over {n_ranks} processes; use --prompts >= {n_ranks}")
    source = source or f"{name}-stage3"
    out = out or f"{name}-{cfg.algo}"
    retriever = Retriever.from_workspace(ws, source, device)
    policy, tok, trie = retriever.model, retriever.tok, retriever.trie
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    ranker, feats, qvecs = load_ranker(ws, device, progress)
    qvecs = torch.as_tensor(qvecs, dtype=torch.float32)
    q_row = pd.Series(np.arange(len(qvecs)), index=ws.table("queries")["query_id"])

    # the exposure threshold: median pCTR (no position) over logged impressions
    imp = impressions(ws, qvecs.numpy(), feats)
    pick = torch.randperm(len(imp["user"]), generator=torch.Generator().manual_seed(cfg.seed))[:20_000]
    with torch.no_grad():
        f = {k: v.to(device) for k, v in feats.rows(imp["user"][pick], qvecs[imp["query"][pick]], imp["product"][pick]).items()}
        tau = float(torch.sigmoid(ranker(f)[0]).median())
    judge = rewards.Judge(retriever.index, retriever.lookup, ranker, feats, rewards.clickbait_products(ws), tau,
                          cfg.rewards, device)
    rows = np.repeat(np.arange(len(retriever.index.sids)), np.diff(retriever.lookup.offsets))
    sid_of = dict(zip(retriever.lookup.ids, rows))  # product id -> index row of its SID

    personal = policy.cfg.context_vocab > 0
    ctx = retriever.users(ws) if personal else None
    train_s, test_s = searches(ws, False), searches(ws, True)
    test_ctx = torch.as_tensor(ctx.ids(test_s["user_id"], test_s["time"])) if personal else None
    evalset = eval_set(ws)

    def evaluate() -> dict:
        policy.eval()
        return {**hit_rates(retriever, test_s, test_ctx, cfg.eval_width), **recall_eval(retriever, evalset, cfg.eval_width, (10,))}

    net = dist.wrap(policy)  # DDP under torchrun, the policy itself on one process
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # sampling uniforms: the same on every rank
    stage = f"4-{cfg.algo}"
    history: list[dict] = []
    logged = ws.logbook().run("rl", {"rl": cfg, "source": source, "out": out, "device": device, "tau": tau,
                                     "processes": n_ranks}, seed=cfg.seed, name=f"rl {cfg.algo} {name}") if main else nullcontext()
    with logged as run:
        row = {"step": 0, **(evaluate() if main else {})}
        history.append(row)
        if main:
            run.log(0, stage=stage, **{k: v for k, v in row.items() if k != "step"})
        for step in tqdm(range(1, cfg.steps + 1), desc=f"rl ({cfg.algo})", disable=not progress or not main):
            t0 = time.perf_counter()
            whole = train_s.iloc[rng.choice(len(train_s), min(cfg.prompts, len(train_s)), replace=False)]
            G, L = cfg.group, policy.cfg.levels
            u = torch.rand(len(whole), G, L, generator=gen)[me::n_ranks]  # this rank's prompts' uniforms
            batch = whole.iloc[me::n_ranks]  # this rank's prompts (all of them on one process)
            ids, mask = tok.encode(batch["query"].tolist(), policy.cfg.max_len, device)
            c = torch.as_tensor(ctx.ids(batch["user_id"], batch["time"]), device=device) if personal else None
            B = len(batch)
            policy.eval()
            with torch.no_grad():
                sampled = grpo.sample(policy, policy.memory(ids, mask, c), trie, G, cfg.temperature, uniforms=u).cpu()  # (B, G, L)
            buy_rows = _gt_rows(sid_of, batch["bought"], cfg.refs + 4)
            click_rows = _gt_rows(sid_of, batch["clicked"], cfg.refs + 4)
            R = cfg.refs if cfg.algo == "eg-grpo" else 0
            refs = _gt_rows(sid_of, [b + c_ for b, c_ in zip(batch["bought"], batch["clicked"])], R)[:, :R]  # (B, R)
            ref_sids = torch.as_tensor(retriever.index.sids, dtype=torch.long)[refs.clamp_min(0)]  # (B, R, L)
            members = torch.cat([sampled, ref_sids], 1)  # (B, N, L)
            present = torch.cat([torch.ones(B, G, dtype=torch.bool), refs >= 0], 1)  # (B, N)
            is_ref = torch.cat([torch.zeros(B, G, dtype=torch.bool), torch.ones(B, R, dtype=torch.bool)], 1)
            users = feats.users(batch["user_id"])
            scored = judge.score(members, users, qvecs[torch.as_tensor(q_row.loc[batch["query_id"]].to_numpy().copy())],
                                 buy_rows, click_rows)
            reward, parts = rewards.total(scored, cfg.rewards)
            reward = reward.masked_fill(~present, 0.0)
            adv = grpo.advantages(reward, present)
            equal = grpo.equal_groups(reward, present)

            N = members.shape[1]
            inputs = [None if x is None else x.repeat_interleave(N, 0) for x in (ids, mask, c)]  # (B*N, ...)
            flat = members.reshape(B * N, L).to(device)
            with torch.no_grad():
                old = grpo.token_logp(policy, *inputs, flat, trie, cfg.temperature).reshape(B, N, L)
                ref_lp = grpo.token_logp(reference, *inputs, flat, trie, cfg.temperature).reshape(B, N, L)
            # the global batch's token counts over the number of ranks: DDP's average then gives the global mean
            counts = torch.tensor([float(present.sum()), float((present & ~is_ref).sum())], dtype=torch.float64)
            totals = tuple((dist.all_sum_(counts) * L / n_ranks).tolist())
            for _ in range(cfg.inner):
                logp = grpo.token_logp(net, *inputs, flat, trie, cfg.temperature).reshape(B, N, L)
                lo, stats = grpo.loss(logp, old, ref_lp, adv.to(device), is_ref.to(device), present.to(device), cfg.loss, totals)
                opt.zero_grad(set_to_none=True)
                lo.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                opt.step()
            stats = {"loss": float(lo.detach()), **stats}  # each rank's share of the global means, summed in one reduce
            stats = dict(zip(stats, (dist.all_sum_(torch.tensor(list(stats.values()), dtype=torch.float64)) / n_ranks).tolist()))
            step_ = (members, scored, {"_reward": reward, "_present": present, **parts}, equal, [len(b) > 0 for b in batch["bought"]])
            if n_ranks > 1:  # the diagnostics see every rank's members
                step_ = _cat_ranks(dist.gather_objects(_cpu(step_)))
            members, scored, parts, equal, has_buy = step_
            reward, present = parts.pop("_reward"), parts.pop("_present")
            row = {"step": step, **stats, "reward": float(reward[:, :G].mean()), **diagnostics(members, scored, parts, equal, G, has_buy),
                   "examples_per_s": len(whole) / (time.perf_counter() - t0)}  # prompts per second, evaluation aside
            if R:
                row["reward_refs"] = float(reward[:, G:][present[:, G:]].mean())
            if main and (step % cfg.eval_every == 0 or step == cfg.steps):
                row.update(evaluate())
            history.append(row)
            if main:
                run.log(step, stage=stage, **{k: v for k, v in row.items() if k != "step"})
        if main:
            for key, value in history[-1].items():
                if "@" in key:
                    metric, _, k = key.partition("@")
                    run.log_eval(metric, value, k=int(k), dataset="held-out searches", method=f"generator/{cfg.algo}", stage=stage)
            store.save(ws, policy.cpu(), tok, out, run_id=run.run_id, stage=stage, source=source, rl=asdict(cfg))
            policy.to(device)
    dist.barrier()  # every rank returns once rank 0 has written
    return history
