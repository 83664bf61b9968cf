"""`workbench train` (the generator's stages) and `workbench gen search`."""

from __future__ import annotations

import click
import pandas as pd

from workbench.cli_args import ints
from workbench.gen.train import TrainConfig


def _ws(ctx):
    return ctx.find_root().obj["ws"]


@click.command()
@click.option("--stages", default="1,2,3", show_default=True,
              help="1 items, 2 queries, 3 personal (user + history + query), 4 RL against the ranker (`workbench rl`); "
                   "each starts from the previous one.")
@click.option("--epochs", default="20,12,6", show_default=True,
              help="Epochs per stage 1-3 (one number: the same for each).")
@click.option("--algo", type=click.Choice(["grpo", "eg-grpo"]), default="eg-grpo", show_default=True, help="Stage 4's algorithm.")
@click.option("--rl-steps", type=int, default=100, show_default=True, help="Stage 4's steps.")
@click.option("--embedder", default="minilm", show_default=True, help="Stage 4: the ranker's embedder, if one is trained.")
@click.option("--backbone", type=click.Choice(["scratch", "minilm"]), default="scratch", show_default=True,
              help="Encoder trained from scratch, or all-MiniLM-L6-v2's pretrained BERT.")
@click.option("--d-model", type=int, default=128, show_default=True)
@click.option("--layers", type=int, default=2, show_default=True, help="Decoder layers (and scratch encoder layers).")
@click.option("--heads", type=int, default=4, show_default=True)
@click.option("--d-ff", type=int, default=512, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--replay", type=float, default=0.2, show_default=True,
              help="Examples replayed from earlier stages, as a share of the stage's own.")
@click.option("--name", default="generator", show_default=True, help="Checkpoint name in <workspace>/gen/.")
@click.option("--eval-width", type=int, default=32, show_default=True, help="Beam width of the per-epoch held-out Recall@K.")
@click.option("--fresh", is_flag=True, help="Ignore finished and interrupted stages' checkpoints (default: resume).")
@click.option("--dropout", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda (under torchrun: each process its own GPU).")
@click.pass_context
def train(ctx, stages, epochs, algo, rl_steps, embedder, backbone, d_model, layers, heads, d_ff, batch_size, lr, replay, name,
          eval_width, fresh, dropout, seed, device):
    """Train the generator stage by stage (resumes a killed run: finished stages are kept, an
    interrupted one continues after its last finished epoch).

    Every stage is data-parallel under torchrun, e.g. `torchrun --nproc_per_node 2 -m workbench train`:
    --batch-size is the global batch, split over the processes; only rank 0 writes."""
    from workbench import dist
    from workbench.gen.stages import train_stages

    ws = _ws(ctx).require()
    st, ep = ints(stages), ints(epochs)
    rl_stage, st = 4 in st, tuple(s for s in st if s != 4)
    device = dist.setup(device)
    ep = ep * len(st) if len(ep) == 1 else ep
    if st:
        model = dict(d_model=d_model, n_heads=heads, enc_layers=layers, dec_layers=layers, d_ff=d_ff, dropout=dropout)
        rows = train_stages(ws, st, backbone, model, TrainConfig(batch_size=batch_size, lr=lr, seed=seed), replay, name=name,
                            device=device, eval_width=eval_width, resume=not fresh, epochs=ep)
        if dist.is_main():  # the other ranks go on to stage 4, if asked, without a word
            df = pd.DataFrame(rows).drop(columns=["epoch", "seconds"], errors="ignore")
            click.echo(f"\ngenerator {name!r}, held-out queries, beam width {eval_width}\n"
                       + df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if rl_stage:
        from workbench.gen import store
        from workbench.rl.cli import ensure_ranker
        from workbench.rl.train import RLConfig, train_rl

        if fresh or not (store.gen_dir(ws) / f"{name}-stage4.safetensors").exists():
            ensure_ranker(ws, embedder, device)
            history = train_rl(ws, RLConfig(algo=algo, steps=rl_steps, seed=seed, eval_width=eval_width), name,
                               out=f"{name}-stage4", device=device)
            if dist.is_main():
                click.echo(f"\nstage 4 ({algo}, {rl_steps} steps): {({k: round(v, 3) for k, v in history[-1].items() if '@' in k})}")
        if dist.is_main():
            gen_, tok, meta = store.load(ws, f"{name}-stage4")
            store.save(ws, gen_, tok, name, **{k: v for k, v in meta.items() if k != "sid_fingerprint"})
            click.echo(f"wrote {name}-stage4 and {name}")


@click.group()
def gen() -> None:
    """The generator: decode queries into SIDs and products (train it with `workbench train`)."""


@gen.command()
@click.argument("queries", nargs=-1, required=True)
@click.option("--width", type=int, default=16, show_default=True, help="Beam width: how many SIDs to decode.")
@click.option("--top", type=int, default=5, show_default=True, help="SIDs to show per query.")
@click.option("--user", default=None, help="Personalise for this user id (a generator trained with stage 3).")
@click.option("--name", default="generator", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.pass_context
def search(ctx, queries, width, top, user, name, device):
    """Decode QUERIES into SIDs and their products (constrained beam search)."""
    from workbench.gen.retrieve import Retriever

    ws = _ws(ctx).require()
    r = Retriever.from_workspace(ws, name, device)
    context = None
    if user is not None:
        context, known = r.user_context(ws, [user] * len(queries))
        if not known[0]:
            click.echo(f"unknown user {user!r}: results are not personalised")
    titles = ws.table("products").set_index("product_id")["title"]
    for q, hits in zip(queries, r.search(list(queries), width, context=context)):
        click.echo(f"\n{q!r}: {len(hits)} SIDs, {sum(len(h.products) for h in hits)} products")
        for h in hits[:top]:
            click.echo(f"  {'-'.join(map(str, h.sid)):<14} logp {h.logp:7.3f}  {len(h.products):3d} products: "
                       + "; ".join(titles.get(p, p) for p in h.products[:3]))
