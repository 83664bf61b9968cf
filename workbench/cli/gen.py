"""`workbench train` (the generator's stages, and stage 4 after them) and `workbench gen search`."""

from __future__ import annotations

import click
import pandas as pd

from workbench import dist, recipes
from workbench.cli.options import NAME, apply, config_options, device_option, embedder_option, given, recipe_option, writes, ws_of
from workbench.cli.rl import ensure_ranker
from workbench.engine import MAX_WIDTH
from workbench.eval.width import DEFAULT_WIDTH, served
from workbench.gen import names, store
from workbench.gen.config import BACKBONES, ORDERS, ChannelConfig, GenConfig, StagesConfig, TargetWeights
from workbench.gen.data import query_pairs, shown_not_bought
from workbench.gen.rank import RankConfig, fit_rank
from workbench.gen.retrieve import Channel, Retriever
from workbench.gen.stages import train_stages
from workbench.gen.trie import compile_trie
from workbench.logbook import tagged
from workbench.rl.config import ALGOS, RLConfig
from workbench.rl.train import train_rl
from workbench.sid.index import SIDIndex
from workbench.sid.store import load_labels, sid_dir

MODEL = ("d_model", "n_heads", "dec_layers", "d_ff", "dropout")  # GenConfig fields `train` sets; --layers sets both stacks


@click.command()
@recipe_option("the curriculum and the model")
@config_options(StagesConfig, "stages", "epochs",
                help={"stages": "1 items, 2 queries, 3 personal (user + history + query), 4 RL against the ranker "
                                "(`workbench rl`); each starts from the previous one.",
                      "epochs": "Epochs per stage 1-3 (one number: the same for each)."})
@config_options(RLConfig, "algo", "steps", flags={"steps": "--rl-steps"}, choices={"algo": ALGOS},
                help={"algo": "Stage 4's algorithm.", "steps": "Stage 4's steps."})
@embedder_option("Stage 4: the ranker's embedder, if one is trained.")
@config_options(StagesConfig, "backbone", choices={"backbone": BACKBONES})
@config_options(GenConfig, *MODEL, flags={"n_heads": "--heads", "dec_layers": "--layers"},
                help={"dec_layers": "Decoder layers (and scratch encoder layers)."})
@config_options(StagesConfig, "train.batch_size", "train.lr", "replay", "pseudo", "targets.purchased", "targets.clicked", "targets.judged",
                "distill", "distill_k", "distill_query_k", flags={f"targets.{s}": f"--target-{s}" for s in ("purchased", "clicked", "judged")})
@click.option("--name", type=NAME, default=names.DEPLOYED, show_default=True, help="Checkpoint name in <workspace>/gen/.")
@config_options(StagesConfig, "eval_width", "history", "history_brands")
@click.option("--fresh", is_flag=True, help="Ignore finished and interrupted stages' checkpoints (default: resume).")
@config_options(StagesConfig, "train.seed")
@device_option("cpu, cuda (under torchrun: each process its own GPU).")
@click.pass_context
@writes
def train(ctx, recipe, embedder, name, fresh, device, **kw):
    """Train the generator stage by stage (resumes a killed run: finished stages are kept, an
    interrupted one continues after its last finished epoch).

    Every stage is data-parallel under torchrun, e.g. `torchrun --nproc_per_node 2 -m workbench train`:
    --batch-size is the global batch, split over the processes; only rank 0 writes."""
    from dataclasses import replace

    ws = ws_of(ctx).require()
    r = recipes.get(recipe)
    model = dict(r.gen.model)
    for f in MODEL:
        value = kw.pop(f)
        if given(ctx, f):
            model.update({"enc_layers": value, "dec_layers": value} if f == "dec_layers" else {f: value})
    plan, epochs = kw.pop("stages"), kw.pop("epochs")
    plan = plan if given(ctx, "stages") else r.gen.stages
    st = tuple(s for s in plan if s != 4)
    if not given(ctx, "epochs"):  # the recipe's epochs of the stages asked for
        epochs = tuple(dict(zip(r.gen.stages, r.gen.epochs)).get(s, r.gen.train.epochs) for s in st)
    rl_cfg = apply(ctx, r.rl, {k: kw.pop(k) for k in ("algo", "steps")})
    cfg = apply(ctx, r.gen, kw)  # the rest: backbone, batch size, lr, replay, eval width, seed
    rl_cfg = replace(rl_cfg, eval_width=cfg.eval_width, seed=cfg.train.seed)
    device = dist.setup(device)
    with tagged(recipe=r.name):
        if st:
            cfg = replace(cfg, stages=st, epochs=epochs, model=model)
            rows = train_stages(ws, cfg, name=name, device=device, resume=not fresh)
            if dist.is_main():  # the other ranks go on to stage 4, if asked, without a word
                df = pd.DataFrame(rows).drop(columns=["epoch", "seconds"], errors="ignore")
                click.echo(f"\ngenerator {name!r}, validation queries, beam width {cfg.eval_width}\n"
                           + df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if 4 in plan:
            _stage4(ws, rl_cfg, name, embedder, device, fresh)


def _stage4(ws, cfg: RLConfig, name: str, embedder: str, device: str, fresh: bool) -> None:
    """Stage 4 after stages 1-3: `<name>-stage4` (trained again when stage 3 changed since), then deployed
    as `<name>` when it was trained now or nothing is deployed."""
    out = names.refined(name, "stage4")
    why = "--fresh" if fresh else "" if store.checkpoint_path(ws, out).exists() else "none yet"
    if not why:
        try:
            why = store.parent_changed(store.load(ws, out)[2], ws)
        except ValueError as e:  # damaged or on other SIDs
            why = str(e)
    if why:
        ensure_ranker(ws, embedder, device)
        history = train_rl(ws, cfg, name, out=out, device=device)
        if dist.is_main():
            click.echo(f"\nstage 4 ({cfg.algo}, {cfg.steps} steps; {why}): "
                       f"{({k: round(v, 3) for k, v in history[-1].items() if '@' in k})}")
    if dist.is_main():
        if why or not store.checkpoint_path(ws, name).exists():
            store.deploy(ws, out, name, why="train stage 4")
            click.echo(f"wrote {out} and deployed it as {name}")
        else:
            click.echo(f"{out} is current: {name} left as it is (--fresh trains it again)")


@click.group()
def gen() -> None:
    """The generator: decode queries into SIDs and products (train it with `workbench train`)."""


@gen.command()
@click.argument("queries", nargs=-1, required=True)
@click.option("--width", type=click.IntRange(1, MAX_WIDTH), default=None,
              help=f"Beam width: how many SIDs to decode [default: the width the workspace serves: its sweep's choice, else {DEFAULT_WIDTH}].")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="SIDs (and channel products) to show per query.")
@config_options(ChannelConfig, "budget", "order", "logp_weight", "popularity_weight", "pool", "compact", choices={"order": ORDERS})
@click.option("--user", default=None, help="Personalise for this user id (a generator trained with stage 3).")
@click.option("--name", type=NAME, default=names.DEPLOYED, show_default=True)
@device_option()
@click.pass_context
def search(ctx, queries, width, top, user, name, device, **kw):
    """Decode QUERIES into SIDs and their products (constrained beam search), and the channel's list:
    the decoded SIDs' products cut at --budget, ranked inside (--order)."""
    ws = ws_of(ctx).require()
    width, why = (width, "--width") if width is not None else served(ws)
    r = Retriever.from_workspace(ws, name, device)
    channel = Channel.from_workspace(ws, apply(ctx, ChannelConfig(), kw), device)
    click.echo(f"beam width {width} ({why})")
    context = None
    if user is not None:
        context, known = r.user_context(ws, [user] * len(queries))
        if not known[0]:
            click.echo(f"unknown user {user!r}: results are not personalised")

    titles = ws.table("products").set_index("product_id")["title"]
    labels = load_labels(ws)["label"]
    hits = r.search(list(queries), width, context=context)
    for q, hs, ranked in zip(queries, hits, channel(list(queries), hits)):
        click.echo(f"\n{q!r}: {len(hs)} SIDs, {sum(len(h.products) for h in hs)} products")
        for h in hs[:top]:
            sid = "-".join(map(str, h.sid))
            click.echo(f"  {sid:<14} logp {h.logp:7.3f}  {len(h.products):3d} products  [{labels.get(sid, '')}]: "
                       + "; ".join(titles.get(p, p) for p in h.products[:3]))
        click.echo(f"  channel ({channel.cfg.order} order, {len(ranked)} candidates): "
                   + "; ".join(titles.get(p, p) for p in ranked[:top]))


@gen.command()
@click.option("--name", type=NAME, default=names.DEPLOYED, show_default=True, help="The generator to start from.")
@click.option("--out", type=NAME, default=None, help="Name of the result [default: NAME-rank]; the deployed generator is never overwritten.")
@config_options(RankConfig, "width", "epochs", "batch_size", "lr", "max_targets", "negatives", "seed")
@config_options(TargetWeights, "purchased", "clicked", "judged", flags={s: f"--target-{s}" for s in ("purchased", "clicked", "judged")})
@device_option()
@click.pass_context
@writes
def rank(ctx, name, out, device, **kw):
    """Train a generator further with a rank loss over its own beam (`workbench.gen.rank`): each training
    query's target SIDs against the SIDs the beam decodes instead; saved as a new checkpoint."""
    ws = ws_of(ctx).require()
    out = out or names.ranked(name)
    if out in (names.DEPLOYED, name):
        raise click.BadParameter(f"{out!r} would overwrite a generator; give another --out", param_hint="--out")
    cfg, targets = apply(ctx, RankConfig(), kw), apply(ctx, TargetWeights(), kw)
    model, tok, _ = store.load(ws, name, device)
    trie = compile_trie(SIDIndex.load(sid_dir(ws) / "index.parquet"), device)
    pairs = query_pairs(ws, weights=targets.weights())
    with ws.logbook().run("gen-rank", {"rank": cfg, "targets": targets, "from": name, "device": device}, seed=cfg.seed,
                          name=f"gen-rank {name} -> {out}") as run:
        history = fit_rank(model, tok, pairs, trie, cfg, device, run=run,
                           negatives=shown_not_bought(ws) if cfg.negatives else None)
        store.save(ws, model.cpu(), tok, out, parent=name, run_id=run.run_id, stage="rank", examples=len(pairs))
    click.echo(pd.DataFrame(history).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    click.echo(f"wrote {store.checkpoint_path(ws, out)}")


@click.command()
@click.argument("source", type=NAME, required=False)
@click.option("--repair", is_flag=True, help="Deploy the generator again from the checkpoint it was deployed from when it is "
                                               "missing, damaged or older than that checkpoint.")
@click.pass_context
@writes
def deploy(ctx, source, repair):
    """Make checkpoint SOURCE the deployed generator (what search, eval, the app, the server and the batch jobs
    load), or --repair the deployed one; a logbook run records each deploy."""
    ws = ws_of(ctx).require()
    if bool(source) == repair:
        raise click.UsageError("give a checkpoint to deploy (`workbench deploy generator-stage3`) or --repair, one of the two")
    if repair:
        done = store.repair(ws)
        click.echo(done or f"{names.DEPLOYED} is sound: deployed from {store.last_deployed(ws) or 'its parent'}, nothing to repair")
        return
    if source == names.DEPLOYED:
        raise click.BadParameter(f"{source!r} is the deployed generator itself; name the checkpoint to deploy", param_hint="SOURCE")
    path = store.deploy(ws, source, names.DEPLOYED, why="workbench deploy")
    click.echo(f"deployed {source} as {names.DEPLOYED} ({path})")
