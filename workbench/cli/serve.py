"""`workbench serve`: the recall channels over HTTP (workbench.service, on LitServe)."""

from __future__ import annotations

import multiprocessing
import signal

import click

from workbench.ann import KINDS
from workbench.cli.options import apply, config_options, ws_of
from workbench.embed import DTYPES
from workbench.service import ServeConfig, build


@click.command()
@click.option("--host", type=click.Choice(["127.0.0.1", "0.0.0.0", "::"]), default="127.0.0.1", show_default=True,
              help="Listen here (0.0.0.0 or :: to accept other machines).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@config_options(ServeConfig, "channels", "max_batch", "batch_wait_ms", "workers", "threads", "api_servers", "accelerator", "max_body",
                "bm25_backend", "log", "name", "width", "query_dtype", "compact", "compiled", "ann.kind", "ann.m", "ann.ef_search", "ann.nlist", "ann.nprobe",
                "ann.pq_m",
                choices={"accelerator": ("cpu", "cuda", "auto"), "bm25_backend": ("numba", "numpy"), "query_dtype": DTYPES,
                         "ann.kind": KINDS},
                flags={f"ann.{f}": f"--ann-{f.replace('_', '-')}" for f in ("kind", "m", "ef_search", "nlist", "nprobe", "pq_m")})
@click.pass_context
def serve(ctx, host, port, **kw) -> None:
    """Serve the generative channel, BM25, dense (exact) and dense-ann (FAISS) over HTTP: POST /generative, /bm25, /dense, /dense-ann with
    {"query", "k"} (and "width", "user" for /generative); GET /health. Ctrl+C or SIGTERM stops it,
    writing the served queries still buffered to the logbook."""
    ws = ws_of(ctx).require()
    try:
        cfg = apply(ctx, ServeConfig(), kw)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    server = build(ws.path, cfg)
    for sig in (signal.SIGINT, signal.SIGTERM):  # both stop it gracefully (LitServe's own stop is on KeyboardInterrupt), even
        signal.signal(sig, _interrupt)  # where SIGINT was ignored at start (a background job of a shell) or comes as SIGTERM
    click.echo(f"serving {', '.join('/' + c for c in cfg.channels)} of {ws.path} on http://{host}:{port} "
               f"(batches of up to {cfg.max_batch}, {cfg.workers} worker(s) per channel)")
    try:
        server.run(host=host, port=port, num_api_servers=cfg.api_servers, generate_client_file=False)
    except RuntimeError as e:
        if "workers failed to start" not in str(e):
            raise
        for child in multiprocessing.active_children():  # LitServe's logger and manager: gone quietly, not with a traceback
            child.kill()
        raise click.ClickException("the server did not start: a worker could not load its channel (the line above says why)") from None


def _interrupt(signum, frame):
    raise KeyboardInterrupt
