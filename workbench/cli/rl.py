"""`workbench ranker` (the reward model) and `workbench rl` (stage 4: GRPO or EG-GRPO)."""

from __future__ import annotations

import click
import pandas as pd

from workbench import recipes
from workbench.cli.options import (
    NAME,
    Finite,
    apply,
    config_options,
    device_option,
    embedder_option,
    recipe_option,
    writes,
    ws_of,
)
from workbench.gen import names
from workbench.logbook import tagged
from workbench.pipeline import check
from workbench.rl.config import ALGOS, JUDGES, SHAPINGS, RankerConfig, RLConfig


def rl_options(name_help: str):
    """Stage 4's options: RLConfig's fields (and its loss's), --reward weights by name, the generator's
    --name (`name_help`), the ranker's --embedder and --device."""
    def deco(f):
        f = device_option()(f)
        f = embedder_option("For the ranker, if it has to be trained.")(f)
        f = click.option("--name", type=NAME, default=names.DEPLOYED, show_default=True, help=name_help)(f)
        return _rl_fields(f)
    return deco


def _rl_fields(f):
    f = config_options(RLConfig, "judge", "eval_every", "seed", choices={"judge": JUDGES})(f)
    f = click.option("--reward", "reward_weights", default="", help="Reward weights, e.g. click=1,purchase=0,exposure=1.")(f)
    f = config_options(RLConfig, "lr", "loss.kl", "loss.shaping", "loss.ref_floor", choices={"loss.shaping": SHAPINGS})(f)
    f = config_options(RLConfig, "algo", "steps", "prompts", "group", "refs", "temperature", choices={"algo": ALGOS})(f)
    return recipe_option("stage 4")(f)


def rl_config(ctx, recipe: str, reward_weights: str, kw: dict) -> RLConfig:
    """The recipe's RLConfig with the options given and the --reward weights."""
    from dataclasses import replace

    from workbench.rl.rewards import REWARDS

    cfg = apply(ctx, recipes.get(recipe).rl, kw)
    weights = {}
    for part in filter(None, (p.strip() for p in reward_weights.split(","))):
        key, _, value = part.partition("=")
        if key not in REWARDS:
            raise click.BadParameter(f"unknown reward {key!r}; rewards: {', '.join(REWARDS)}", param_hint="--reward")
        try:
            weights[key] = float(value)
        except ValueError:
            raise click.BadParameter(f"{part!r} is not name=number", param_hint="--reward") from None
    return replace(cfg, rewards=replace(cfg.rewards, **weights))


def ensure_ranker(ws, embedder: str, device: str) -> None:
    """Train the ranker unless the workspace has a current one (`pipeline.check`: missing, damaged or
    trained on another catalog all count as none); under torchrun rank 0 does, the others wait for it."""
    from workbench import dist
    from workbench.rl.ranker import train_workspace

    with dist.main_first():
        if why := check(ws, "ranker"):
            click.echo(f"training the ranker on the search log first ({why})")
            train_workspace(ws, embedder, device)


@click.command()
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@embedder_option("Text embedder of queries and products.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--id-dropout", type=Finite(0, 1, max_open=True), default=RankerConfig.id_dropout, show_default=True,
              help="Share of training impressions scored as a never-shown product; such products share one learned vector.")
@device_option()
@click.pass_context
@writes
def ranker(ctx, epochs, embedder, seed, id_dropout, device):
    """Train the downstream ranker (pCTR, pCVR) on the search log: stage 4's reward model."""
    from workbench.rl.ranker import train_workspace

    _, history = train_workspace(ws_of(ctx).require(), embedder, device, epochs=epochs, seed=seed, id_dropout=id_dropout)
    click.echo(pd.DataFrame(history).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


@click.command()
@rl_options("Starts from <name>-stage3; writes <name>-<algo>.")
@click.pass_context
@writes
def rl(ctx, recipe, reward_weights, name, embedder, device, **kw):
    """Stage 4: refine the stage-3 generator against the ranker with GRPO or EG-GRPO.

    Data-parallel under torchrun, e.g. `torchrun --nproc_per_node 2 -m workbench rl`: --prompts is the
    global number per step, split over the processes; only rank 0 evaluates and writes."""
    from workbench import dist
    from workbench.rl.train import train_rl

    ws = ws_of(ctx).require()
    cfg = rl_config(ctx, recipe, reward_weights, kw)
    device = dist.setup(device)
    ensure_ranker(ws, embedder, device)
    with tagged(recipe=recipe):
        history = train_rl(ws, cfg, name, device=device)
    if not dist.is_main():
        return
    df = pd.DataFrame([h for h in history if "click_hit@10" in h])
    click.echo(f"\n{cfg.algo}: wrote {name}-{cfg.algo}\n" + df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
