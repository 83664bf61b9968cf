"""`workbench ...` (also `python -m workbench ...`): every verb has --help.

The only package that imports click. One module per verb group, each a thin layer that turns options
into the library's config dataclasses (options derived from their fields: `options.config_options`)
and prints what the library returns:

    demo.py      demo                         data.py   data synth|import|validate|stats|schema, embed
    sid.py       sid train|assign|stats       gen.py    train, gen search|rank, deploy
    rl.py        ranker, rl                   eval.py   eval, ab, headroom
    logbook.py   sql, runs, merge, recipes    bench.py  bench ... (every benchmark)
    batch.py     batch embed|sids|decode      serve.py  serve
    dense.py     dense train

Verbs load lazily (click's lazy group): `VERBS` names each verb's module and function, a verb's module
is imported only when that verb runs (or shows its own --help), and `workbench --help` reads the verbs'
one-line summaries from their docstrings without importing them. So `--help`, `sql`, `runs`, `recipes`
and `data stats` answer without loading torch (tests/test_cli.py checks it with -X importtime).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import click
import duckdb

from workbench.workspace import Workspace, default_path

KNOWN = (ValueError, KeyError, OSError, RuntimeError)  # DataError, CheckpointError, LogbookBusy, torch's errors among them
VERBS = {  # verb -> (module, function)
    "ab": ("workbench.cli.eval", "ab"),
    "batch": ("workbench.cli.batch", "batch"),
    "bench": ("workbench.cli.bench", "bench"),
    "data": ("workbench.cli.data", "data"),
    "demo": ("workbench.cli.demo", "demo"),
    "deploy": ("workbench.cli.gen", "deploy"),
    "dense": ("workbench.cli.dense", "dense"),
    "embed": ("workbench.cli.data", "embed"),
    "eval": ("workbench.cli.eval", "eval_"),
    "gen": ("workbench.cli.gen", "gen"),
    "headroom": ("workbench.cli.eval", "headroom"),
    "merge": ("workbench.cli.logbook", "merge"),
    "ranker": ("workbench.cli.rl", "ranker"),
    "recipes": ("workbench.cli.logbook", "recipes"),
    "rl": ("workbench.cli.rl", "rl"),
    "runs": ("workbench.cli.logbook", "runs"),
    "serve": ("workbench.cli.serve", "serve"),
    "sid": ("workbench.cli.sid", "sid"),
    "sql": ("workbench.cli.logbook", "sql"),
    "train": ("workbench.cli.gen", "train"),
}


def describe(e: BaseException) -> str:
    """One line naming the problem: `Type: message` for the errors users and machines cause (bad data or
    settings, missing or corrupt files, a busy logbook, DuckDB and torch errors), `internal error: ...`
    for anything else (a bug: WORKBENCH_DEBUG=1 shows its traceback)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    if isinstance(e, KNOWN + (duckdb.Error,)):
        return f"{type(e).__name__}: {msg}"
    return f"internal error: {type(e).__name__}: {msg}; rerun with WORKBENCH_DEBUG=1 for the traceback"


def summary(verb: str, limit: int = 45) -> str:
    """A verb's one-line help, as click makes it from the docstring, read from its module's source
    without importing the module."""
    module, function = VERBS[verb]
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return click.utils.make_default_short_help((ast.get_docstring(fn) or "").split("\f")[0], limit)


def _leave(wait: bool = True) -> None:
    """Under torchrun, every rank leaves the process group together; a verb that never imported
    workbench.dist (and torch) has none to leave."""
    if (dist := sys.modules.get("workbench.dist")) is not None:
        dist.teardown(wait=wait)


class Interrupted(click.ClickException):
    exit_code = 130


class Errors(click.Group):
    """The CLI's one error boundary: every failure is one clear line and a non-zero exit code, never a
    traceback (click's own usage errors pass through; Ctrl-C exits 130). WORKBENCH_DEBUG=1 lets the
    original exception through, traceback and all."""

    def invoke(self, ctx):
        try:
            out = super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            _leave(wait=False)
            raise
        except (Exception, KeyboardInterrupt) as e:
            _leave(wait=False)
            if os.environ.get("WORKBENCH_DEBUG", "") not in ("", "0"):
                raise
            if isinstance(e, KeyboardInterrupt):
                raise Interrupted("interrupted") from None
            raise click.ClickException(describe(e)) from None
        _leave()
        return out


class Workbench(Errors):
    """The CLI's verbs, each loaded when it is asked for (`VERBS`), behind the error boundary."""

    def list_commands(self, ctx):
        return sorted(VERBS)

    def get_command(self, ctx, name):
        if name not in VERBS:
            return None
        module, function = VERBS[name]
        return getattr(importlib.import_module(module), function)

    def format_commands(self, ctx, formatter):
        limit = formatter.width - 6 - max(map(len, VERBS))
        with formatter.section("Commands"):
            formatter.write_dl([(verb, summary(verb, limit)) for verb in self.list_commands(ctx)])


@click.group(cls=Workbench, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-w", "--workspace", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Workspace directory (default: $WORKBENCH_WORKSPACE or ./workspaces/default).")
@click.version_option(package_name="workbench")
@click.pass_context
def main(ctx: click.Context, workspace: Path | None) -> None:
    """Generative e-commerce search workbench: data, semantic IDs, training, decoding, evaluation, logbook."""
    ctx.obj = {"ws": Workspace(workspace or default_path())}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
