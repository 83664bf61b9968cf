"""`workbench ranker` (the reward model) and `workbench rl` (stage 4: GRPO or EG-GRPO)."""

from __future__ import annotations

import click
import pandas as pd

from workbench.rl.grpo import ALGOS, SHAPINGS


def _ws(ctx):
    return ctx.find_root().obj["ws"]


def rl_options(f):
    for opt in reversed([
        click.option("--algo", type=click.Choice(ALGOS), default="eg-grpo", show_default=True),
        click.option("--steps", type=int, default=100, show_default=True),
        click.option("--prompts", type=int, default=32, show_default=True, help="Searches per step."),
        click.option("--group", type=int, default=8, show_default=True, help="SIDs sampled per search (G)."),
        click.option("--refs", type=int, default=1, show_default=True, help="EG-GRPO: ground-truth members per group (R)."),
        click.option("--temperature", type=float, default=1.0, show_default=True, help="Sampling temperature of the groups."),
        click.option("--lr", type=float, default=1e-4, show_default=True),
        click.option("--kl", type=float, default=0.02, show_default=True, help="Weight of the KL to the stage-3 model."),
        click.option("--shaping", type=click.Choice(SHAPINGS), default="luffy", show_default=True,
                     help="Reference members' weight: LUFFY's pi / (pi + gamma), or none (ratio 1)."),
        click.option("--reward", "reward_weights", default="", help="Reward weights, e.g. click=1,purchase=0,exposure=1."),
        click.option("--eval-every", type=int, default=20, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
    ]):
        f = opt(f)
    return f


def rl_config(algo, steps, prompts, group, refs, temperature, lr, kl, shaping, reward_weights, eval_every, seed):
    from workbench.rl.grpo import LossConfig
    from workbench.rl.rewards import REWARDS, RewardConfig
    from workbench.rl.train import RLConfig

    weights = {}
    for part in filter(None, (p.strip() for p in reward_weights.split(","))):
        key, _, value = part.partition("=")
        if key not in REWARDS:
            raise click.BadParameter(f"unknown reward {key!r}; rewards: {', '.join(REWARDS)}", param_hint="--reward")
        try:
            weights[key] = float(value)
        except ValueError:
            raise click.BadParameter(f"{part!r} is not name=number", param_hint="--reward") from None
    return RLConfig(algo=algo, steps=steps, prompts=prompts, group=group, refs=refs, temperature=temperature, lr=lr,
                    eval_every=eval_every, seed=seed,
                    loss=LossConfig(kl=kl, shaping=shaping), rewards=RewardConfig(**weights))


def ensure_ranker(ws, embedder: str, device: str) -> None:
    """Train the ranker if the workspace has none (under torchrun rank 0 does; the others wait for it)."""
    from workbench import dist
    from workbench.rl.ranker import ranker_path, train_workspace

    with dist.main_first():
        if not ranker_path(ws).exists():
            click.echo(f"no ranker in {ws.path}: training one on the search log first")
            train_workspace(ws, embedder, device)


@click.command()
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--embedder", default="minilm", show_default=True, help="Text embedder of queries and products.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def ranker(ctx, epochs, embedder, seed, device):
    """Train the downstream ranker (pCTR, pCVR) on the search log: stage 4's reward model."""
    from workbench.rl.ranker import train_workspace

    _, history = train_workspace(_ws(ctx).require(), embedder, device, epochs=epochs, seed=seed)
    click.echo(pd.DataFrame(history).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


@click.command()
@rl_options
@click.option("--name", default="generator", show_default=True, help="Starts from <name>-stage3; writes <name>-<algo>.")
@click.option("--embedder", default="minilm", show_default=True, help="For the ranker, if it has to be trained.")
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def rl(ctx, name, embedder, device, **kw):
    """Stage 4: refine the stage-3 generator against the ranker with GRPO or EG-GRPO.

    Data-parallel under torchrun, e.g. `torchrun --nproc_per_node 2 -m workbench rl`: --prompts is the
    global number per step, split over the processes; only rank 0 evaluates and writes."""
    from workbench import dist
    from workbench.rl.train import train_rl

    ws = _ws(ctx).require()
    cfg = rl_config(**kw)
    device = dist.setup(device)
    ensure_ranker(ws, embedder, device)
    history = train_rl(ws, cfg, name, device=device)
    if not dist.is_main():
        return
    df = pd.DataFrame([h for h in history if "click_hit@10" in h])
    click.echo(f"\n{cfg.algo}: wrote {name}-{cfg.algo}\n" + df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


@click.command(name="rl")
@rl_options
@click.option("--name", default="generator", show_default=True, help="Both start from <name>-stage3.")
@click.option("--embedder", default="minilm", show_default=True, help="For the ranker, if it has to be trained.")
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def bench_rl(ctx, name, embedder, device, **kw):
    """GRPO vs EG-GRPO with the same seed, prompts and budget: curves, collapse diagnostics, stage 3 vs 4."""
    from workbench.bench import device_name, report
    from workbench.bench.rl import compare

    ws = _ws(ctx).require()
    cfg = rl_config(**kw)
    ensure_ranker(ws, embedder, device)
    tag = "-" + "-".join(f"{k}{v:g}" for k, v in cfg.rewards.weights().items()) if kw["reward_weights"] else ""
    tag += f"-t{cfg.temperature:g}" if cfg.temperature != 1 else ""
    params = {"steps": cfg.steps, "prompts": cfg.prompts, "group": cfg.group, "refs": cfg.refs, "seed": cfg.seed,
              "temperature": cfg.temperature,
              "rewards": cfg.rewards.weights(), "lr": cfg.lr, "kl": cfg.loss.kl, "shaping": cfg.loss.shaping}
    with ws.logbook().run("bench", {"bench": "rl", "rl": cfg, "device": device}, seed=cfg.seed) as run:
        curves, diags, harness = compare(ws, cfg, name=name, device=device, tag=tag)
        curves["case"] = curves["case"] + " step " + curves["step"].astype(str)
        report("rl-curves", curves.drop(columns="step").to_dict("records"), run, params=params, device=device_name(device))
        report("rl-diagnostics (mean of the last 10 steps)", diags.to_dict("records"), run, params=params,
               device=device_name(device))
        report("rl-harness (held-out queries, generative)", harness.to_dict("records"), run, params=params,
               device=device_name(device))
