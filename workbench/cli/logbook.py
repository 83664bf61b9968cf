"""`workbench sql | runs | merge` over the logbook, and `workbench recipes`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from workbench import recipes as r
from workbench.cli.options import ws_of
from workbench.logbook import INTERACTIVE


@click.command()
@click.argument("query")
@click.option("--max-rows", type=click.IntRange(min=1), default=100, show_default=True,
              help="Rows to print (only these are fetched).")
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON lines.")
@click.pass_context
def sql(ctx, query, max_rows, as_json) -> None:
    """Run read-only SQL on the workspace logbook (tables: runs, metrics, evals, bench, served)."""
    import duckdb
    import pandas as pd

    if not query.strip():
        raise click.UsageError('empty SQL: give a query, e.g. workbench sql "SELECT * FROM runs"')
    try:
        df, more = ws_of(ctx).logbook().head(query, max_rows, safe=True, timeout=INTERACTIVE)
    except duckdb.Error as e:
        raise click.ClickException(f"SQL error: {e}") from None
    if as_json:
        for r in df.to_dict(orient="records"):
            click.echo(json.dumps(r, default=str))
        return
    with pd.option_context("display.max_columns", 50, "display.width", 200, "display.max_colwidth", 60):
        click.echo(df.to_string(index=False) if len(df) else "(no rows)")
    if more:
        click.echo(f"... more rows: the first {max_rows:,} are shown (--max-rows)")


@click.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Runs to list, latest first.")
@click.pass_context
def runs(ctx, limit) -> None:
    """List the latest runs in the logbook."""
    ctx.invoke(sql, query=f"SELECT run_id, kind, status, seed, code_version, started_at, ended_at FROM runs "
               f"ORDER BY started_at DESC LIMIT {int(limit)}", max_rows=limit, as_json=False)


@click.command()
@click.argument("other", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def merge(ctx, other: Path) -> None:
    """Copy the runs of another logbook file (e.g. from a GPU machine) into this workspace's logbook."""
    added = ws_of(ctx).require().logbook().merge(other)
    click.echo(", ".join(f"{n} {t}" for t, n in added.items()) + f" rows added from {other}")


@click.command()
@click.argument("name", required=False)
def recipes(name: str | None) -> None:
    """List the named recipes, or print one's every setting as JSON (diff two with `diff <(...) <(...)`)."""
    if name is None:
        for rec in r.RECIPES.values():
            click.echo(f"{rec.name:<12} {rec.about}")
        return
    click.echo(json.dumps(r.get(name).to_dict(), indent=1, sort_keys=True))
