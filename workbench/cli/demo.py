"""`workbench demo`: build the default workspace with a named recipe, then open the app."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from workbench.cli.options import device_option, embedder_option, ws_of


@click.command()
@click.option("--rebuild", is_flag=True, help="Delete the workspace and build it again.")
@click.option("--source", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Workspace of tables to build from (default: the repository's sample_data/).")
@click.option("--recipe", default="demo", show_default=True, help="Named settings of every step (`workbench recipes`).")
@embedder_option()
@device_option("Torch device for models (cpu, cuda, cuda:1...).")
@click.option("--app/--no-app", default=True, show_default=True, help="Start the app on http://127.0.0.1:PORT afterwards.")
@click.option("--port", type=int, default=8501, show_default=True)
@click.pass_context
def demo(ctx: click.Context, rebuild: bool, source: Path | None, recipe: str, embedder: str, device: str, app: bool,
         port: int) -> None:
    """Build the default workspace from sample_data/ (steps already done are skipped), then open the app."""
    from workbench.pipeline import SAMPLE_DATA, build

    ws = ws_of(ctx)
    if rebuild and ws.path.exists():
        shutil.rmtree(ws.path)
    click.echo(f"building workspace {ws.path}")
    t0 = time.perf_counter()
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


COMMANDS = [demo]
