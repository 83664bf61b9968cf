"""`workbench ...` (also `python -m workbench ...`): every verb has --help.

The only package that imports click. One module per verb group, each a thin layer that turns options
into the library's config dataclasses (options derived from their fields: `options.config_options`)
and prints what the library returns:

    demo.py      demo                         data.py   data synth|import|validate|stats|schema, embed
    sid.py       sid train|assign|stats       gen.py    train, gen search
    rl.py        ranker, rl                   eval.py   eval, ab
    logbook.py   sql, runs, merge, recipes    bench.py  bench ... (every benchmark)
    batch.py     batch embed|sids|decode
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from workbench.workspace import Workspace, default_path

KNOWN = (ValueError, KeyError, OSError, RuntimeError)  # DataError, CheckpointError, LogbookBusy, torch's errors among them


def describe(e: BaseException) -> str:
    """One line naming the problem: `Type: message` for the errors users and machines cause (bad data or
    settings, missing or corrupt files, a busy logbook, DuckDB and torch errors), `internal error: ...`
    for anything else (a bug: WORKBENCH_DEBUG=1 shows its traceback)."""
    import duckdb

    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, KNOWN + (duckdb.Error,)):
        return f"{type(e).__name__}: {msg}"
    return f"internal error: {type(e).__name__}: {msg}; rerun with WORKBENCH_DEBUG=1 for the traceback"


class Interrupted(click.ClickException):
    exit_code = 130


class Errors(click.Group):
    """The CLI's one error boundary: every failure is one clear line and a non-zero exit code, never a
    traceback (click's own usage errors pass through; Ctrl-C exits 130). WORKBENCH_DEBUG=1 lets the
    original exception through, traceback and all."""

    def invoke(self, ctx):
        from workbench import dist

        try:
            out = super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            dist.teardown(wait=False)
            raise
        except (Exception, KeyboardInterrupt) as e:
            dist.teardown(wait=False)
            if os.environ.get("WORKBENCH_DEBUG", "") not in ("", "0"):
                raise
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted("interrupted") from None
            raise click.ClickException(describe(e)) from None
        dist.teardown()  # under torchrun: every rank leaves together
        return out


@click.group(cls=Errors, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Workspace directory (default: $WORKBENCH_WORKSPACE or ./workspaces/default).")
@click.version_option(package_name="workbench")
@click.pass_context
def main(ctx: click.Context, workspace: Path | None) -> None:
    """Generative e-commerce search workbench: data, semantic IDs, training, decoding, evaluation, logbook."""
    ctx.obj = {"ws": Workspace(workspace or default_path())}


def _register() -> None:
    from workbench.cli import batch, bench, data, demo, eval, gen, logbook, rl, serve, sid

    for module in (demo, data, sid, gen, rl, eval, serve, logbook, bench, batch):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
