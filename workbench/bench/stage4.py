"""Stage 4 judged by the simulated A/B: GRPO and EG-GRPO against stage 3, over seeds and judges.

For each judge (the workspace's ranker, or the simulator's truth: `RLConfig.judge`), algorithm and seed,
stage 4 refines `<name>-stage3` into `<name>-<algo>-<judge><tag>-s<seed>` (`tag` names a non-default
reward or temperature, so studies of several settings keep their models apart). Every model then becomes an arm
of one simulated A/B (`workbench.eval.ab`) beside stage 3 itself, with differences taken from the
stage-3 arm: does stage 4 sell more than the model it started from? The A/B is run with the learned
ranker ordering the pages and with the oracle ordering them, so a weak ranker cannot hide (or fake) what
the channel itself retrieves.

Returns one row per (page ranker, judge, algorithm, seed) and the mean over seeds.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from workbench.eval.ab import run_ab
from workbench.eval.config import ABConfig
from workbench.gen import names
from workbench.rl.config import RLConfig
from workbench.rl.train import train_rl

COLLAPSE = ("distinct_sids", "cluster_size", "equal_groups")  # stage 4's last 10 steps: the collapse diagnostics
KEEP = ("purchases", "purchases_lo", "purchases_hi", "d_purchases", "d_purchases_lo", "d_purchases_hi", "gmv", "d_gmv",
        "clicks", "d_clicks", "added_purchases_share", "clickbait_exposure_share")


def study(ws, cfg: RLConfig, ab: ABConfig, seeds=(0, 1, 2), judges=("ranker", "oracle"), algos=("grpo", "eg-grpo"),
          name: str = names.DEPLOYED, device: str = "cpu", progress: bool = True, tag: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    models, hits = {}, {}
    for judge in judges:
        for algo in algos:
            for seed in seeds:
                out = names.refined(name, algo, f"-{judge}{tag}-s{seed}")
                history = train_rl(ws, replace(cfg, algo=algo, judge=judge, seed=seed), name, out=out, device=device,
                                   progress=progress)
                models[out] = (judge, algo, seed)
                last = pd.DataFrame([h for h in history if "loss" in h][-10:])
                hits[out] = {**{k: v for k, v in history[-1].items() if "@" in k},
                             **{k: float(last[k].mean()) for k in COLLAPSE if k in last}}
    stage3 = names.stage(name, 3)
    rows = []
    for ranker in ("model", "oracle"):
        df = run_ab(ws, replace(ab, arms=(stage3, *models), ranker=ranker, baseline=f"+{stage3}"), device,
                    echo=lambda *_: None).set_index("arm")
        rows.append({"pages": ranker, "judge": "-", "algo": "stage 3", "seed": -1, **df.loc[f"+{stage3}", list(KEEP)].to_dict()})
        for out, (judge, algo, seed) in models.items():
            rows.append({"pages": ranker, "judge": judge, "algo": algo, "seed": seed, **df.loc[f"+{out}", list(KEEP)].to_dict(),
                         **hits[out]})
    per_seed = pd.DataFrame(rows)
    mean = (per_seed[per_seed["seed"] >= 0].groupby(["pages", "judge", "algo"], sort=False)
            .agg(**{c: (c, "mean") for c in ("purchases", "d_purchases", "d_gmv", "d_clicks", "clickbait_exposure_share",
                                               *[k for k in ("click_hit@10", "purchase_hit@10", *COLLAPSE) if k in per_seed])},
                 d_purchases_sd=("d_purchases", "std"), seeds=("seed", "size"),
                 significant_up=("d_purchases_lo", lambda v: int((v > 0).sum())),
                 significant_down=("d_purchases_hi", lambda v: int((v < 0).sum())))
            .reset_index())
    return per_seed, mean
