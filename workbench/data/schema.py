"""The workbench's tables: columns, meaning, and validation.

Every table in a workspace is a Parquet file whose columns are listed here. `validate` checks a
DataFrame against its table (columns present, types, nulls, keys, value rules, references to other
tables) and raises one `DataError` that names the file, the row and the column of each problem.

Rows are numbered from 1 over the data (the header is not a row). Loaders that read text files pass
`line_offset=1` so that messages give the file's own line numbers as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "str" | "int" | "float" | "bool" | "time"
    doc: str
    nullable: bool = False
    required: bool = True  # must be present; optional columns are filled with nulls


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    refs: tuple[tuple[str, str, str], ...] = ()  # (column, other table, other column)
    truth: bool = False  # simulator ground truth: only synthetic workspaces have it

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


C = Column
TABLES: dict[str, Table] = {
    t.name: t
    for t in [
        Table(
            "products",
            "The catalog: one row per product.",
            (
                C("product_id", "str", "Product id, unique (kept as text, as the source spells it)."),
                C("title", "str", "Product title, non-empty."),
                C("category", "str", "Category path from root to leaf, levels joined by ' > '.", True, False),
                C("brand", "str", "Brand name.", True, False),
                C("price", "float", "Price in the catalog's currency, >= 0.", True, False),
                C("attributes", "str", 'JSON object of text attributes, e.g. {"colour": "black"}.', True, False),
                C("description", "str", "Longer product text.", True, False),
            ),
            key=("product_id",),
        ),
        Table(
            "users",
            "Users with an optional coarse profile (what a ranker may see; no latent preferences).",
            (
                C("user_id", "str", "User id, unique."),
                C("age_band", "str", "Coarse age band, e.g. '25-34'.", True, False),
                C("region", "str", "Coarse region.", True, False),
            ),
            key=("user_id",),
        ),
        Table(
            "queries",
            "Distinct search queries.",
            (
                C("query_id", "int", "Query id, unique."),
                C("query", "str", "Query text as typed (whitespace-trimmed), non-empty."),
            ),
            key=("query_id",),
        ),
        Table(
            "search_log",
            "What the search engine served and what the user did: one row per (session, position).",
            (
                C("session_id", "int", "Search session (one query by one user)."),
                C("user_id", "str", "User, null for anonymous traffic.", True),
                C("query_id", "int", "Query typed in the session."),
                C("product_id", "str", "Product served at this position."),
                C("position", "int", "1-based rank on the result page."),
                C("impressed", "bool", "The product was shown on screen."),
                C("clicked", "bool", "The user clicked it (implies impressed)."),
                C("purchased", "bool", "The user bought it from this session (implies clicked)."),
                C("time", "time", "Session start, UTC."),
            ),
            key=("session_id", "position"),
            refs=(
                ("user_id", "users", "user_id"),
                ("query_id", "queries", "query_id"),
                ("product_id", "products", "product_id"),
            ),
        ),
        Table(
            "judgments",
            "Graded relevance of products for queries (human raters or a simulator's truth).",
            (
                C("query_id", "int", "Judged query."),
                C("product_id", "str", "Judged product."),
                C("relevance", "float", "Graded relevance, higher is better (scale in workspace.json)."),
            ),
            key=("query_id", "product_id"),
            refs=(("query_id", "queries", "query_id"), ("product_id", "products", "product_id")),
        ),
        Table(
            "interactions",
            "Behaviour outside search (e.g. purchase or review histories), in order per user.",
            (
                C("user_id", "str", "User."),
                C("product_id", "str", "Product."),
                C("event", "str", "One of view, click, cart, purchase, review."),
                C("seq", "int", "Order of the event within the user's history, from 0."),
                C("time", "time", "Event time, UTC, when known.", True, False),
            ),
            key=("user_id", "seq"),
            refs=(("user_id", "users", "user_id"), ("product_id", "products", "product_id")),
        ),
        Table(
            "pseudo_queries",
            "Training text drawn from product text (`workbench data pseudo`): never from logged queries.",
            (
                C("product_id", "str", "The product whose text the query was drawn from."),
                C("query", "str", "The pseudo-query, lowercased words."),
                C("kind", "str", "How it was drawn: span, drop, shuffle, abbrev, brand or category."),
            ),
            key=("product_id", "query"),
            refs=(("product_id", "products", "product_id"),),
        ),
        # Simulator ground truth, written only by `workbench data synth`: what generated the data.
        Table(
            "truth_products",
            "Latent product traits of the synthetic marketplace.",
            (
                C("product_id", "str", "Product."),
                C("leaf", "int", "Index of the leaf category in the taxonomy."),
                C("attractiveness", "float", "Pull on clicks, independent of relevance."),
                C("quality", "float", "Pull on purchases once clicked."),
                C("clickbait", "bool", "Attracts clicks but rarely sells."),
            ),
            key=("product_id",),
            refs=(("product_id", "products", "product_id"),),
            truth=True,
        ),
        Table(
            "truth_users",
            "Latent user preferences of the synthetic marketplace.",
            (
                C("user_id", "str", "User."),
                C("departments", "str", "JSON object department -> preference weight."),
                C("brands", "str", "JSON list of favourite brands."),
                C("price_sensitivity", "float", "How strongly price above the norm deters a purchase."),
            ),
            key=("user_id",),
            refs=(("user_id", "users", "user_id"),),
            truth=True,
        ),
        Table(
            "truth_sessions",
            "The shopping intent behind each synthetic search session.",
            (
                C("session_id", "int", "Session."),
                C("leaf", "int", "Wanted leaf category (-1: a broad query for a level-2 category)."),
                C("category", "str", "Wanted category path."),
                C("attribute", "str", "Typed attribute as key=value.", True),
                C("brand", "str", "Typed brand.", True),
                C("max_price", "float", "Typed price cap.", True),
                C("typo", "bool", "The typed query has a typo."),
            ),
            key=("session_id",),
            truth=True,
        ),
    ]
}
EVENTS = ("view", "click", "cart", "purchase", "review")


class DataError(ValueError):
    """Bad input data. `problems` lists each (file, row, column, message); row is 1-based or None."""

    def __init__(self, problems: list[tuple[str, int | None, str | None, str]], line_offset: int = 0):
        self.problems = problems
        lines = []
        for file, row, col, msg in problems[:20]:
            where = file
            if row is not None:
                where += f", row {row}" + (f" (line {row + line_offset})" if line_offset else "")
            if col is not None:
                where += f", column '{col}'"
            lines.append(f"{where}: {msg}")
        if len(problems) > 20:
            lines.append(f"... and {len(problems) - 20} more problems")
        super().__init__("\n".join(lines))


def _rows(mask: np.ndarray, limit: int = 5) -> tuple[list[int], int]:
    idx = np.flatnonzero(mask)
    return [int(i) + 1 for i in idx[:limit]], len(idx)


def _coerce(s: pd.Series, kind: str) -> tuple[pd.Series, np.ndarray]:
    """Cast a column to its kind; returns the cast column and a mask of values that did not cast."""
    isna = s.isna().to_numpy()
    if kind == "str":
        if pd.api.types.is_numeric_dtype(s):  # numeric ids (e.g. from JSON) become text
            s = s.astype("Int64") if pd.api.types.is_integer_dtype(s) or (s.dropna() % 1 == 0).all() else s
            return s.astype("str").where(~isna), np.zeros(len(s), bool)
        if s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) not in ("string", "empty"):
            ok = s.map(lambda v: isinstance(v, str), na_action="ignore").fillna(True).to_numpy(bool)
            return s.where(ok).astype("str"), ~ok
        return s.astype("str"), np.zeros(len(s), bool)
    if kind == "int":
        num = pd.to_numeric(s, errors="coerce")
        bad = (num.isna().to_numpy() & ~isna) | (num.notna().to_numpy() & (num.fillna(0) % 1 != 0).to_numpy())
        return num.where(~pd.Series(bad, index=s.index)).astype("Int64"), bad
    if kind == "float":
        num = pd.to_numeric(s, errors="coerce").astype("float64")
        return num, num.isna().to_numpy() & ~isna
    if kind == "bool":
        if pd.api.types.is_bool_dtype(s):
            return s.astype("boolean"), np.zeros(len(s), bool)
        m = {True: True, False: False, "true": True, "false": False, "1": True, "0": False}  # 1 == True, 0 == False
        out = s.map(lambda v: m.get(v.lower() if isinstance(v, str) else v), na_action="ignore")
        return out.astype("boolean"), out.isna().to_numpy() & ~isna
    if kind == "time":
        out = pd.to_datetime(s, errors="coerce", utc=True)
        return out, out.isna().to_numpy() & ~isna
    raise ValueError(f"unknown column kind {kind!r}")


def validate(
    df: pd.DataFrame,
    table: str,
    file: str | None = None,
    others: dict[str, pd.DataFrame] | None = None,
    line_offset: int = 0,
) -> pd.DataFrame:
    """Check `df` against `table` and return it with canonical column order and types.

    `others` maps table names to already validated tables for reference checks (references to a
    table that is absent are not checked). Raises DataError listing every problem found.
    """
    t = TABLES[table]
    file = file or f"{table}.parquet"
    problems: list[tuple[str, int | None, str | None, str]] = []

    def bad(mask: np.ndarray, col: str, msg: str) -> None:
        rows, n = _rows(mask)
        more = f" ({n} rows in all)" if n > len(rows) else ""
        for r in rows:
            problems.append((file, r, col, msg + (more if r == rows[0] else "")))

    missing = [c.name for c in t.columns if c.required and c.name not in df.columns]
    if missing:
        have = ", ".join(map(str, df.columns)) or "none"
        for m in missing:
            problems.append((file, None, m, f"missing column for table '{table}' (columns found: {have})"))
        raise DataError(problems, line_offset)
    if len(df) == 0:
        raise DataError([(file, None, None, f"table '{table}' has no rows")], line_offset)

    out = {}
    for c in t.columns:
        if c.name not in df.columns:
            out[c.name] = pd.Series([None] * len(df), dtype=object)
            continue
        s, uncast = _coerce(df[c.name].reset_index(drop=True), c.kind)
        if uncast.any():
            bad(uncast, c.name, f"not a valid {c.kind}")
        if not c.nullable:
            nulls = s.isna().to_numpy() & ~uncast
            if nulls.any():
                bad(nulls, c.name, "empty value in a required column")
        out[c.name] = s
    res = pd.DataFrame(out)

    # value rules
    def rule(col: str, mask, msg: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            bad(mask, col, msg)

    for c in t.columns:
        s = res[c.name]
        if c.kind == "str" and not c.nullable:
            rule(c.name, s.str.strip().str.len().eq(0).fillna(False), "blank text")
        if c.kind == "str":
            rule(c.name, s.str.contains("\x00", regex=False).fillna(False), f"NUL byte (\\x00) in the text of table '{table}'")
        if c.kind == "float":
            rule(c.name, np.isinf(s.to_numpy(dtype=float, na_value=np.nan)), "infinite number")
    if table == "products":
        rule("price", res["price"].fillna(0) < 0, "negative price")
        rule("attributes", res["attributes"].map(_bad_attributes, na_action="ignore").fillna(False), "not a JSON object of text values")
    if table == "search_log":
        rule("position", res["position"].fillna(1) < 1, "position must be >= 1")
        imp, clk, buy = (res[k].fillna(False).to_numpy(bool) for k in ("impressed", "clicked", "purchased"))
        rule("clicked", clk & ~imp, "clicked but not impressed")
        rule("purchased", buy & ~clk, "purchased but not clicked")
    if table == "interactions":
        rule("event", ~res["event"].isin(EVENTS) & res["event"].notna(), f"event must be one of {', '.join(EVENTS)}")
        rule("seq", res["seq"].fillna(0) < 0, "seq must be >= 0")

    # keys
    if t.key and not problems:
        dup = res.duplicated(list(t.key), keep="first").to_numpy()
        if dup.any():
            first = res.drop_duplicates(list(t.key)).reset_index().set_index(list(t.key))["index"]
            for r in _rows(dup)[0]:
                k = tuple(v.item() if hasattr(v, "item") else v for v in res.loc[r - 1, list(t.key)])
                was = int(first.loc[k if len(k) > 1 else k[0]]) + 1
                problems.append((file, r, ",".join(t.key), f"duplicate id {k if len(k) > 1 else k[0]!r} (first at row {was})"))

    # references
    for col, other, ocol in t.refs:
        if others is None or other not in others:
            continue
        known = pd.Index(others[other][ocol].dropna())
        s = res[col]
        unknown = s.notna().to_numpy() & ~s.isin(known).to_numpy()
        if unknown.any():
            rows, n = _rows(unknown)
            for r in rows:
                more = f" ({n} rows in all)" if n > len(rows) and r == rows[0] else ""
                problems.append((file, r, col, f"unknown {ocol} {res.loc[r - 1, col]!r}: not in table '{other}'{more}"))

    if problems:
        raise DataError(problems, line_offset)
    return res


def _bad_attributes(v: str) -> bool:
    try:
        d = json.loads(v)
    except (TypeError, ValueError):
        return True
    return not isinstance(d, dict) or not all(isinstance(x, str) for x in d.values())


def describe() -> str:
    """The data model as Markdown (docs/data_model.md is made from this)."""
    out = []
    for t in TABLES.values():
        key = f" Key: ({', '.join(t.key)})." if t.key else ""
        out.append(f"### `{t.name}`\n{t.doc}{key}\n\n| column | type | required | meaning |\n|---|---|---|---|")
        for c in t.columns:
            req = "optional" if not c.required else ("nullable" if c.nullable else "yes")
            out.append(f"| `{c.name}` | {c.kind} | {req} | {c.doc} |")
        out.append("")
    return "\n".join(out)
