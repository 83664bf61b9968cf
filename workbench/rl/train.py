"""Stage 4: refine the stage-3 generator against the ranker with GRPO or EG-GRPO (`workbench rl`).

Prompts are the training queries' searches that got a click (user context at that time + query);
the validation queries' searches measure click and purchase hit rates. Each step:

    1. draw `prompts` searches; sample `group` SIDs each from the current policy (constrained)   `rollout`
    2. EG-GRPO: add up to `refs` reference members, the SIDs of the products bought, then clicked
    3. score every member's cluster with the ranker (`rewards.Judge`), sum the weighted rewards,  `score`
       normalise them into advantages over each group
    4. `inner` clipped policy-gradient updates with KL to stage 3                                `update`

and logs, per step, the collapse diagnostics: each reward component, the share of sampled SIDs that
hold a product clicked (bought) in their search, the share of groups whose rewards are all equal, SID entropy (bits) and the share of distinct SIDs across the batch's samples,
mean cluster size, the share of click-bait clusters (half or more of their products), KL to the
reference. Every `eval_every` steps: click and purchase hit@10 on validation searches (beam, with the
user's context) and validation Recall@10. Writes <workspace>/gen/<out>.safetensors.

A step's groups (`Group`) hold, per prompt, N = G + R members: `members` (B, N, L) SIDs, `present`
(B, N) the members that exist (a search may have fewer than R references), `is_ref` (B, N).

Data-parallel under torchrun (`workbench.dist`): every rank draws the same prompts and the same
sampling uniforms for them, and takes its rows of both (`dist.my_rows`); groups live on one rank, so
the advantages are local; each rank's loss divides by the global batch's token counts over N
(`dist.mean_over_ranks` of its counts) and DDP averages the gradients, which gives the one-process
update. The diagnostics are computed on every rank's groups gathered together (`dist.gather_cat`);
rank 0 alone evaluates, logs and writes.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench import dist, lineage
from workbench.data import splits
from workbench.data.market import Market
from workbench.gen import names, store
from workbench.gen.context import UserContext
from workbench.gen.data import eval_set
from workbench.gen.retrieve import Retriever, ranked_products
from workbench.gen.stages import recall_eval
from workbench.rl import grpo, rewards
from workbench.rl.config import RLConfig
from workbench.rl.ranker import from_workspace as load_ranker
from workbench.rl.ranker import impressions


def searches(ws, split: str) -> pd.DataFrame:
    """One row per search with a click on a query of `split`: session_id, user_id, time, query_id, query,
    clicked, bought."""
    log = ws.table("search_log")
    ev = log[(log["clicked"] | log["purchased"]) & splits.mask(ws, log["query_id"], split)]
    if ev.empty:
        raise ValueError(f"workspace {ws.path} has no {split} searches with clicks")
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


@dataclass(frozen=True)
class Env:
    """What a step reads besides the models, built once (`environment`)."""

    retriever: Retriever  # the stage-3 policy's tokenizer, trie, SID index and product lookup
    judge: rewards.Judge  # the ranker's view of a SID's cluster (its `tau`: the exposure threshold)
    sid_of: dict  # product id -> index row of its SID
    ctx: UserContext | None  # the users' context ids, for a personalised generator
    qvecs: torch.Tensor  # (Q, D) query vectors, in the queries table's order
    q_row: pd.Series  # query id -> row of qvecs


@dataclass(frozen=True)
class Group:
    """One step's groups on this rank: B prompts, each with N = G sampled + R reference members."""

    batch: pd.DataFrame  # B rows of `searches`: the prompts
    members: torch.Tensor  # (B, N, L) SIDs: G samples, then R references (CPU)
    present: torch.Tensor  # (B, N) bool, the members that exist (a search may have fewer than R references)
    is_ref: torch.Tensor  # (B, N) bool, the reference members
    inputs: tuple  # encoder inputs (ids, mask, context or None), one row per member: (B*N, ...)
    old: torch.Tensor  # (B, N, L) token log-probs under the policy at sampling time
    ref: torch.Tensor  # (B, N, L) token log-probs under the frozen stage-3 model


@dataclass(frozen=True)
class Scores:
    """A group's rewards (`score`)."""

    scored: rewards.Scored  # what the ranker sees of each member's cluster
    parts: dict[str, torch.Tensor]  # (B, N) each reward component, unweighted
    reward: torch.Tensor  # (B, N) their weighted sum, 0 for absent members
    adv: torch.Tensor  # (B, N) group-normalised advantages
    equal: torch.Tensor  # (B,) bool, groups whose rewards are all equal


def exposure_tau(ws, ranker, feats, qvecs: torch.Tensor, seed: int, device: str, oracle=None, n: int = 20_000) -> float:
    """The exposure threshold: the median pCTR (no position) over up to n logged impressions; the true
    P(click) at position 1 with an `oracle` (a `data.market.Market`)."""
    imp = impressions(ws, qvecs.numpy(), feats)
    pick = torch.randperm(len(imp["user"]), generator=torch.Generator().manual_seed(seed))[:n]
    if oracle is not None:
        log = ws.table("search_log")
        log = log[log["impressed"]].iloc[pick.numpy()]
        c, _ = oracle.value(log["session_id"].to_numpy() - 1, oracle.rows(log["product_id"])[:, None])
        return float(np.median(c))
    with torch.no_grad():
        f = {k: v.to(device) for k, v in feats.rows(imp["user"][pick], qvecs[imp["query"][pick]], imp["product"][pick]).items()}
        return float(torch.sigmoid(ranker(f)[0]).median())


def environment(ws, source: str, cfg: RLConfig, device: str = "cpu", progress: bool = True) -> Env:
    """The generator `source` with its index, and the workspace's ranker as a `rewards.Judge`."""
    retriever = Retriever.from_workspace(ws, source, device)
    ranker, feats, qvecs = load_ranker(ws, device, progress)
    qvecs = torch.as_tensor(qvecs, dtype=torch.float32)
    oracle = Market.from_workspace(ws) if cfg.judge == "oracle" else None
    tau = exposure_tau(ws, ranker, feats, qvecs, cfg.seed, device, oracle)
    judge = rewards.Judge(retriever.index, retriever.lookup, ranker, feats, rewards.clickbait_products(ws), tau,
                          cfg.rewards, device, oracle)
    ctx = retriever.users(ws) if retriever.model.cfg.context_vocab > 0 else None
    return Env(retriever, judge, retriever.lookup.rows(), ctx, qvecs,
               pd.Series(np.arange(len(qvecs)), index=ws.table("queries")["query_id"]))


def member_logp(model, inputs: tuple, members: torch.Tensor, trie, temperature: float) -> torch.Tensor:
    """(B, N, L) token log-probs of (B, N, L) member SIDs under `model`, given one row of `inputs` per member."""
    B, N, L = members.shape
    flat = members.reshape(B * N, L).to(inputs[0].device)  # (B*N, L)
    return grpo.token_logp(model, *inputs, flat, trie, temperature).reshape(B, N, L)


def rollout(policy, reference, env: Env, batch: pd.DataFrame, u: torch.Tensor, cfg: RLConfig) -> Group:
    """The groups of `batch`'s prompts: G SIDs each sampled from the policy with their uniforms `u` (B, G, L)
    (rows of the global batch's), then for EG-GRPO up to R reference members (the SIDs of the products
    bought, then clicked), and every member's token log-probs under the policy and the stage-3 model."""
    r, dev = env.retriever, env.retriever.device
    B, G, R = len(batch), cfg.group, cfg.refs if cfg.algo == "eg-grpo" else 0
    ids, mask = r.tok.encode(batch["query"].tolist(), policy.cfg.max_len, dev)
    c = torch.as_tensor(env.ctx.ids(batch["user_id"], batch["time"]), device=dev) if env.ctx is not None else None
    policy.eval()
    with torch.no_grad():
        sampled = grpo.sample(policy, policy.memory(ids, mask, c), r.trie, G, cfg.temperature, uniforms=u).cpu()  # (B, G, L)
    refs = _gt_rows(env.sid_of, [b + c_ for b, c_ in zip(batch["bought"], batch["clicked"])], R)[:, :R]  # (B, R), -1: none
    members = torch.cat([sampled, torch.as_tensor(r.index.sids, dtype=torch.long)[refs.clamp_min(0)]], 1)  # (B, N, L)
    present = torch.cat([torch.ones(B, G, dtype=torch.bool), refs >= 0], 1)  # (B, N)
    is_ref = torch.cat([torch.zeros(B, G, dtype=torch.bool), torch.ones(B, R, dtype=torch.bool)], 1)  # (B, N)
    inputs = tuple(None if x is None else x.repeat_interleave(G + R, 0) for x in (ids, mask, c))  # (B*N, ...)
    with torch.no_grad():
        old, ref = (member_logp(m, inputs, members, r.trie, cfg.temperature) for m in (policy, reference))
    return Group(batch, members, present, is_ref, inputs, old, ref)


def score(env: Env, g: Group, cfg: RLConfig) -> Scores:
    """Every member's rewards from the ranker (`rewards.Judge`), their weighted total and the group advantages
    over the members present."""
    b, width = g.batch, cfg.refs + 4
    qvecs = env.qvecs[torch.as_tensor(env.q_row.loc[b["query_id"]].to_numpy().copy())]  # (B, D)
    scored = env.judge.score(g.members, env.judge.feats.users(b["user_id"]), qvecs,
                             _gt_rows(env.sid_of, b["bought"], width), _gt_rows(env.sid_of, b["clicked"], width),
                             b["session_id"].to_numpy() - 1)
    reward, parts = rewards.total(scored, cfg.rewards)
    reward = reward.masked_fill(~g.present, 0.0)
    return Scores(scored, parts, reward, grpo.advantages(reward, g.present), grpo.equal_groups(reward, g.present))


def update(net, opt, g: Group, adv: torch.Tensor, trie, cfg: RLConfig) -> dict[str, float]:
    """`cfg.inner` clipped policy-gradient steps on the groups (`grpo.loss`, gradient norm clipped at 1);
    the last one's loss and statistics, averaged over ranks."""
    L, dev = g.members.shape[-1], g.old.device
    # the global batch's token counts over the number of ranks: DDP's gradient average then gives the global means
    n = dist.mean_over_ranks({"present": float(g.present.sum()) * L, "sampled": float((g.present & ~g.is_ref).sum()) * L})
    fixed = {"old": g.old, "ref": g.ref, "adv": adv.to(dev), "is_ref": g.is_ref.to(dev), "present": g.present.to(dev)}
    for _ in range(cfg.inner):
        logp = member_logp(net, g.inputs, g.members, trie, cfg.temperature)
        lo, stats = grpo.loss(logp, **fixed, cfg=cfg.loss, totals=(n["present"], n["sampled"]))
        opt.zero_grad(set_to_none=True)
        lo.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    return dist.mean_over_ranks({"loss": float(lo.detach()), **stats})  # each rank's share of the global means


def diagnostics(members: torch.Tensor, present: torch.Tensor, s: Scores, G: int, has_buy: torch.Tensor | None = None) -> dict:
    """Collapse diagnostics of one step's groups: over the sampled members (the first G of each group), the
    mean reward and components, hit shares (purchases: over the searches with one, `has_buy` (B,)), equal
    groups, SID entropy and distinct SIDs, cluster sizes, click-bait share; the mean reward of the
    reference members present, when the groups have any."""
    flat = [tuple(x) for x in members[:, :G].reshape(-1, members.shape[-1]).tolist()]
    counts = pd.Series(flat).value_counts().to_numpy()
    p = counts / counts.sum()
    sc = s.scored
    out = {"reward": float(s.reward[:, :G].mean()), **{f"reward_{k}": float(v[:, :G].mean()) for k, v in s.parts.items()}}
    out["sample_click_hit"] = float(sc.hit_click[:, :G].float().mean())  # share of sampled SIDs holding a clicked product
    if has_buy is not None and has_buy.any():
        out["sample_purchase_hit"] = float(sc.hit_buy[has_buy, :G].float().mean())
    out.update({"equal_groups": float(s.equal.float().mean()), "sid_entropy_bits": float(-(p * np.log2(p)).sum()),
                "distinct_sids": len(counts) / len(flat), "cluster_size": float(sc.size[:, :G].float().mean()),
                "clickbait_clusters": float((sc.clickbait[:, :G] >= 0.5).float().mean())})
    if members.shape[1] > G:
        out["reward_refs"] = float(s.reward[:, G:][present[:, G:]].mean())
    return out


@lineage.reads
def train_rl(ws, cfg: RLConfig, name: str = names.DEPLOYED, source: str | None = None, out: str | None = None,
             device: str = "cpu", progress: bool = True) -> list[dict]:
    """Refine `source` (default <name>-stage3) with `cfg.algo`; save as `out` (default <name>-<algo>)."""
    if cfg.prompts < dist.world():
        raise ValueError(f"{cfg.prompts} prompts per step cannot be split over {dist.world()} processes; "
                         f"use --prompts >= {dist.world()}")
    source, out = source or names.stage(name, 3), out or names.refined(name, cfg.algo)
    env = environment(ws, source, cfg, device, progress)
    retriever, policy = env.retriever, env.retriever.model
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    train_s, test_s = searches(ws, "train"), searches(ws, "validation")
    test_ctx = torch.as_tensor(env.ctx.ids(test_s["user_id"], test_s["time"])) if env.ctx is not None else None
    evalset = eval_set(ws, "validation")

    def evaluate() -> dict:
        policy.eval()
        return {**hit_rates(retriever, test_s, test_ctx, cfg.eval_width), **recall_eval(retriever, evalset, cfg.eval_width, (10,))}

    net = dist.wrap(policy)  # DDP under torchrun, the policy itself on one process
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # sampling uniforms: the same on every rank
    stage, main = f"4-{cfg.algo}", dist.is_main()
    history: list[dict] = []
    logged = ws.logbook().run("rl", {"rl": cfg, "source": source, "out": out, "device": device, "tau": env.judge.tau,
                                     "processes": dist.world()}, seed=cfg.seed, name=f"rl {cfg.algo} {name}") if main else nullcontext()
    with logged as run:
        history.append({"step": 0, **(evaluate() if main else {})})
        if main:
            run.log(0, stage=stage, **{k: v for k, v in history[0].items() if k != "step"})
        for step in tqdm(range(1, cfg.steps + 1), desc=f"rl ({cfg.algo})", disable=not progress or not main):
            t0 = time.perf_counter()
            whole = train_s.iloc[rng.choice(len(train_s), min(cfg.prompts, len(train_s)), replace=False)]
            u = torch.rand(len(whole), cfg.group, policy.cfg.levels, generator=gen)  # (P, G, L): the global batch's uniforms
            mine = dist.my_rows()  # this rank's prompts (all of them on one process)
            g = rollout(policy, reference, env, whole.iloc[mine], u[mine], cfg)
            s = score(env, g, cfg)
            stats = update(net, opt, g, s.adv, retriever.trie, cfg)
            has_buy = torch.tensor([len(b) > 0 for b in g.batch["bought"]], dtype=torch.bool)
            members, present, s, has_buy = dist.gather_cat((g.members, g.present, s, has_buy))  # every rank's groups
            row = {"step": step, **stats, **diagnostics(members, present, s, cfg.group, has_buy),
                   "examples_per_s": len(whole) / (time.perf_counter() - t0)}  # prompts per second, evaluation aside
            if main and (step % cfg.eval_every == 0 or step == cfg.steps):
                row.update(evaluate())
            history.append(row)
            if main:
                run.log(step, stage=stage, **{k: v for k, v in row.items() if k != "step"})
        if main:
            for key, value in history[-1].items():
                if "@" in key:
                    metric, _, k = key.partition("@")
                    run.log_eval(metric, value, k=int(k), dataset="validation searches", method=f"generator/{cfg.algo}", stage=stage)
            store.save(ws, policy.cpu(), retriever.tok, out, parent=source, run_id=run.run_id, stage=stage, source=source, rl=asdict(cfg))
            policy.to(device)
    dist.barrier()  # every rank returns once rank 0 has written
    return history
