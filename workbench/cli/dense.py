"""`workbench dense train`: the bi-encoder a team would run, fine-tuned on the workspace (workbench.encoder)."""

from __future__ import annotations

import click

from workbench.cli.options import apply, config_options, device_option, writes, ws_of
from workbench.encoder import EncoderConfig, encoder_dir, train


@click.group()
def dense() -> None:
    """The dense channel a team runs: fine-tune MiniLM on the workspace's training queries (eval's dense-tuned)."""


@dense.command(name="train")
@config_options(EncoderConfig, "epochs", "batch_size", "lr", "pseudo", "max_pairs", "seed")
@device_option()
@click.pass_context
@writes
def train_(ctx, device, **kw) -> None:
    """Fine-tune all-MiniLM-L6-v2 with MultipleNegativesRankingLoss on (training query, relevant product)
    pairs and pseudo-queries; writes <workspace>/dense/encoder/ and logs the run (examples/s, seconds).
    Evaluate it with `workbench eval --methods dense,dense-tuned,...`."""
    ws = ws_of(ctx).require()
    cfg = apply(ctx, EncoderConfig(), kw)
    got = train(ws, cfg, device)
    click.echo(f"fine-tuned on {got['pairs']:,} pairs in {got['seconds']:.0f} s ({got['examples_per_s']:.0f} pairs/s): "
               f"{encoder_dir(ws)}")
