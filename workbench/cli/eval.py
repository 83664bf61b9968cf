"""`workbench eval`: generative retrieval against the baselines on the same queries."""

from __future__ import annotations

import click

from workbench.ann import KINDS
from workbench.cli.options import FINITE, apply, config_options, device_option, embedder_option, ws_of
from workbench.data.market import Market
from workbench.eval.config import PAGE_ORDERS as AB_ORDERS
from workbench.eval.config import RANKERS, SPLITS, ABConfig, EvalConfig
from workbench.gen.config import ORDERS


@click.command(name="eval")
@config_options(EvalConfig, "ks", "width", "methods", "share", "split", flags={"ks": "--k"}, choices={"split": SPLITS})
@config_options(EvalConfig, "channel.budget", "channel.order", "channel.logp_weight", "channel.popularity_weight", "channel.pool", "channel.compact", "budgets", choices={"channel.order": ORDERS})
@click.option("--judgments", "judgments_csv", type=click.Path(dir_okay=False), default=None,
              help="Evaluate these judgments (CSV: query, product_id, relevance) instead of the workspace's --split queries.")
@click.option("--threshold", type=FINITE, default=None, help="Relevance threshold for --judgments (default: the workspace's).")
@config_options(EvalConfig, "generator", flags={"generator": "--name"})
@config_options(EvalConfig, "fusions", "fusion_budget", "fusion_reference", "seed")
@config_options(EvalConfig, "ann.kind", "ann.m", "ann.ef_search", "ann.nlist", "ann.nprobe", "ann.pq_m",
                choices={"ann.kind": KINDS},
                flags={f"ann.{f}": f"--ann-{f.replace('_', '-')}" for f in ("kind", "m", "ef_search", "nlist", "nprobe", "pq_m")})
@embedder_option()
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON records.")
@click.pass_context
def eval_(ctx, judgments_csv, threshold, embedder, device, as_json, **kw) -> None:
    """Generative retrieval against BM25, dense, hybrid and generation-as-supplement on the same queries, every
    channel at the same budgets; with --fusions, sets of channels merged by a learned ranker (LightGBM
    LambdaMART, trained on the training queries) at one total budget, each compared with the reference
    set with a paired 95% interval."""
    from dataclasses import replace

    from workbench.eval.harness import evaluate, judgments_file

    ws = ws_of(ctx).require()
    cfg = replace(apply(ctx, EvalConfig(), kw), embedder=embedder, device=device)
    queries = judgments_file(ws, judgments_csv, threshold) if judgments_csv else None
    with ws.logbook().run("eval", {"eval": cfg, "judgments": judgments_csv}) as run:
        df = evaluate(ws, cfg, queries, run=run, progress=not as_json)
    if as_json:
        click.echo(df.to_json(orient="records", indent=1))
    else:
        click.echo(df.set_index("method").T.to_string(float_format=lambda v: f"{v:.3f}"))


@click.command()
@config_options(ABConfig, "arms", "baseline", "ranker", "order", "recall", "supplement", "width", "channel.logp_weight", "channel.popularity_weight", "channel.pool", "channel.user_gate",
                "personal", "split", "draws", "by_activity", "heavy",
                "aa_splits", "seed",
                choices={"ranker": RANKERS, "order": AB_ORDERS, "split": SPLITS})
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON records (every value and interval).")
@click.pass_context
def ab(ctx, device, as_json, **kw) -> None:
    """A simulated online A/B on a synthetic marketplace: the test queries' sessions replayed through the funnel
    that made the log, with the legacy engine's recall set (control) and with each --arms arm's channels
    merged into it (dense+generator: both), one ranker ordering every page. Clicks, purchases, GMV, CTR,
    CVR with paired intervals over whole queries (jackknife t), differences from --baseline, the share of
    exposures, clicks and purchases the arm's channels added, and the intervals' A/A false-positive rate."""
    from workbench.eval.ab import run_ab, table

    ws = ws_of(ctx).require()
    cfg = apply(ctx, ABConfig(), kw)
    Market.from_workspace(ws)  # a workspace without a simulator is refused before a run is logged
    with ws.logbook().run("ab", {"ab": cfg, "device": device}, seed=cfg.seed, name=f"ab {cfg.ranker} {','.join(cfg.arms)}") as run:
        df = run_ab(ws, cfg, device, run=run, echo=(lambda *_: None) if as_json else click.echo)
    click.echo(df.to_json(orient="records", indent=1) if as_json else
               f"\n{df['arm'].nunique()} arms x {int(df['sessions'][0]):,} {cfg.split} sessions; pages ordered by the {cfg.ranker} ranker "
               f"({cfg.order}); 95% paired jackknife t intervals over whole queries, differences from {cfg.baseline} in %; "
               + (f"A/A false-positive rate of these intervals {df['aa_false_positive_rate'].iloc[0]:.1%} "
                  f"({cfg.aa_splits} random halves of the queries, nominal 5%)" if cfg.aa_splits else "A/A check skipped (--aa-splits 0)")
               + ("".join(f"\n\n{users} users ({int(part['sessions'].iloc[0]):,} sessions)\n" + table(part)
                          for users, part in df.groupby("users", sort=False)) if cfg.by_activity else "\n" + table(df)))


@click.command()
@config_options(ABConfig, "arms", "recall", "supplement", "width", "channel.pool", "personal", "split", "draws", "heavy",
                choices={"split": SPLITS})
@device_option()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON records (every value and interval).")
@click.pass_context
def headroom(ctx, device, as_json, **kw) -> None:
    """What knowing the user is worth on a synthetic marketplace: the same candidates (control's legacy recall
    set and each --arms arm's) ordered into pages by an oracle that knows the session's intent and its user,
    and by one that knows the intent only (averaged over --draws users). Purchases and GMV per session of
    both, and the user's worth in % with paired intervals, for every session and by the user's activity
    before it (cold: no earlier click or purchase; warm; heavy: at least --heavy). The ceiling of personalisation."""
    from workbench.eval.headroom import headroom as run_headroom
    from workbench.eval.headroom import table

    ws = ws_of(ctx).require()
    cfg = apply(ctx, ABConfig(), kw)
    Market.from_workspace(ws)  # a workspace without a simulator is refused before a run is logged
    with ws.logbook().run("headroom", {"ab": cfg, "device": device}, name=f"headroom {','.join(cfg.arms)}") as run:
        df = run_headroom(ws, cfg, device, run=run, echo=(lambda *_: None) if as_json else click.echo)
    click.echo(df.to_json(orient="records", indent=1) if as_json else
               f"\n{cfg.split} sessions; cold: no click or purchase in the log before the session, warm: fewer than "
               f"{cfg.heavy}, heavy: at least {cfg.heavy}; 95% paired jackknife t intervals over whole queries\n" + table(df))
