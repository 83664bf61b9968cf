"""`workbench demo`: build the default workspace with a named recipe, then open the app."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from workbench.bench.data import import_real
from workbench.cli.options import device_option, embedder_option, ws_of
from workbench.pipeline import SAMPLE_DATA, build
from workbench.workspace import Workspace


@click.command()
@click.option("--rebuild", is_flag=True, help="Delete the workspace and build it again.")
@click.option("--source", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Workspace of tables to build from (default: the repository's sample_data/).")
@click.option("--catalog", type=click.Choice(["sample", "homedepot"]), default="sample", show_default=True,
              help="What to build from: the sample marketplace, or Home Depot's real catalog from --datasets (54,667 "
                   "products with judged queries; in workspaces/homedepot unless -w says otherwise, with recipe few-logs "
                   "unless --recipe says otherwise; 35 minutes on 2 cores here). Any other catalog: `data import csv` into "
                   "a workspace, then `demo` there.")
@click.option("--datasets", "datasets_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the real data sets (default: ../shared/datasets beside the repository).")
@click.option("--recipe", default=None, help="Named settings of every step (`workbench recipes`)  [default: demo; few-logs for --catalog homedepot]")
@embedder_option()
@device_option("Torch device for models (cpu, cuda, cuda:1...).")
@click.option("--app/--no-app", default=True, show_default=True, help="Start the app on http://127.0.0.1:PORT afterwards.")
@click.option("--port", type=int, default=8501, show_default=True)
@click.pass_context
def demo(ctx: click.Context, rebuild: bool, source: Path | None, catalog: str, datasets_dir: Path | None, recipe: str | None,
         embedder: str, device: str, app: bool, port: int) -> None:
    """Build the default workspace from sample_data/ (steps already done are skipped), then open the app;
    `--catalog homedepot` does the same on a real catalog."""
    ws = ws_of(ctx)
    if catalog != "sample":
        if source is not None:
            raise click.UsageError("--source and --catalog both say what to build from: give one")
        if ctx.find_root().params.get("workspace") is None and "WORKBENCH_WORKSPACE" not in os.environ:  # no workspace named
            ws = Workspace(Path("workspaces") / catalog)
        recipe = recipe or "few-logs"
    recipe = recipe or "demo"
    if rebuild and ws.path.exists():
        shutil.rmtree(ws.path)
    click.echo(f"building workspace {ws.path}")
    t0 = time.perf_counter()
    with ws.writer("demo"):  # the build only: the app that follows reads
        if catalog != "sample" and not ws.has("products"):
            click.echo(f"importing {catalog} from {datasets_dir or 'the shared data sets'}")
            import_real(ws, catalog, datasets_dir)
        build(ws, source or SAMPLE_DATA, embedder, device, echo=click.echo, recipe=recipe)
    click.echo(f"done in {time.perf_counter() - t0:.1f} s; logbook {ws.logbook_path}")
    if not app:
        click.echo('next: workbench data stats; workbench sql "SELECT kind, status, started_at FROM runs"')
        return
    script = Path(__file__).resolve().parents[2] / "app.py"
    if not script.exists():
        raise click.ClickException(f"the app is not installed beside the package ({script}); run from a clone of the repository")
    click.echo(f"starting the app on http://127.0.0.1:{port} (Ctrl+C stops it)")
    env = {**os.environ, "WORKBENCH_WORKSPACE": str(ws.path.resolve())}
    sys.exit(subprocess.call([sys.executable, "-m", "streamlit", "run", str(script), "--server.address=127.0.0.1",
                              f"--server.port={port}", "--server.headless=true", "--browser.gatherUsageStats=false"],
                             env=env))
