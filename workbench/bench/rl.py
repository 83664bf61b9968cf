"""GRPO vs EG-GRPO from the same stage-3 generator, with the same seed, prompts and budget.

`compare` trains each algorithm (`workbench.rl.train.train_rl`), then returns three tables: the curves
at every evaluation (click / purchase hit@10, Recall@10), the collapse diagnostics averaged over the
last `tail` steps, and stage 3 vs each stage-4 model on the evaluation harness (generative only).
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from workbench.eval.config import EvalConfig
from workbench.eval.harness import evaluate
from workbench.gen import names
from workbench.rl.config import RLConfig
from workbench.rl.train import train_rl

DIAGNOSTICS = ["reward", "reward_click", "reward_purchase", "reward_exposure", "reward_gt", "equal_groups",
               "sid_entropy_bits", "distinct_sids", "cluster_size", "clickbait_clusters", "kl"]


def compare(ws, cfg: RLConfig, algos=("grpo", "eg-grpo"), name: str = names.DEPLOYED, device: str = "cpu",
            tail: int = 10, tag: str = "", progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    curves, diags, models = [], [], {"stage 3": names.stage(name, 3)}
    for algo in algos:
        out = names.refined(name, algo, tag)
        history = train_rl(ws, replace(cfg, algo=algo), name, out=out, device=device, progress=progress)
        models[f"stage 4 {algo}"] = out
        curves += [{"case": algo, **{k: v for k, v in h.items() if k == "step" or "@" in k}} for h in history if "click_hit@10" in h]
        last = pd.DataFrame([h for h in history if "loss" in h][-tail:])
        diags.append({"case": algo, **{k: float(last[k].mean()) for k in DIAGNOSTICS if k in last}})
    harness = []
    for label, model in models.items():
        df = evaluate(ws, EvalConfig(ks=(10, 50), methods=("generative",), generator=model, device=device), progress=False)
        harness.append({"case": label, **df.drop(columns="method").iloc[0].to_dict()})
    return pd.DataFrame(curves), pd.DataFrame(diags), pd.DataFrame(harness)
