"""Loaders for real data into the workbench's tables.

- `csv_tables`: product, judgment, search-log and user CSV files with a column mapping and an
  encoding (e.g. the Home Depot search-relevance data). Queries are given as text and get ids.
- `lcrec_tables`: the LC-Rec json format (`<name>.item.json` item metadata, `<name>.inter.json`
  chronological user sequences), e.g. Amazon Reviews 2018 "Industrial & Scientific".

Loaders only read: each returns an `Imported` (frames, their source files, workspace metadata) that
`Workspace.write_import` validates and writes, as `synth.generate` returns frames. Every problem is a
`DataError` naming the file, the row (and line) and the file's own column name; nothing is written
unless every table is valid.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from workbench.data.schema import TABLES, DataError

CSV_TABLES = ("products", "users", "judgments", "search_log")


@dataclass
class Imported:
    """Tables read from files, not yet validated against a workspace or written."""

    frames: dict[str, pd.DataFrame]
    sources: dict[str, str]  # table -> the file it came from (validation errors name it)
    meta: dict  # workspace metadata: source, files, relevance threshold, name
    explain: Callable[[DataError], DataError] = field(default=lambda e: e)  # validation errors in the files' own column names


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """Read a whole text file; a decoding error names the line and suggests --encoding."""
    path = Path(path)
    if not path.is_file():
        raise DataError([(str(path), None, None, "file not found")])
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError([(str(path), None, None, "empty file")])
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError([(str(path), None, None, f"line {line}, byte {col} is not valid {encoding} "
                          f"({raw[e.start:e.start + 1]!r}); pass the file's encoding, e.g. --encoding latin-1")]) from e
    except LookupError as e:
        raise DataError([(str(path), None, None, f"unknown encoding {encoding!r}")]) from e
    return text.removeprefix("\ufeff")


def read_csv(path: str | Path, columns: dict[str, str], encoding: str = "utf-8", sep: str = ",",
             required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV as text columns and rename file columns to ours.

    `columns` maps our column name -> the file's column name (unmapped columns keep their name).
    """
    text = read_text(path, encoding)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
        if any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):  # a row longer than the header
            rows = csv.reader(io.StringIO(text), delimiter=sep)
            width = len(next(rows))
            line, n = next(((i, len(r)) for i, r in enumerate(rows, 2) if len(r) != width), (None, None))
            raise DataError([(str(path), None, None, f"malformed CSV: line {line} has {n} fields, the header has {width}")])
    except pd.errors.ParserError as e:
        raise DataError([(str(path), None, None, f"malformed CSV: {e}")]) from e
    except pd.errors.EmptyDataError as e:
        raise DataError([(str(path), None, None, "empty file")]) from e
    if len(df) == 0:
        raise DataError([(str(path), None, None, "no data rows (only a header)")])
    missing = [(ours, theirs) for ours in required for theirs in [columns.get(ours, ours)] if theirs not in df.columns]
    if missing:
        have = ", ".join(df.columns)
        raise DataError([(str(path), None, theirs, f"missing column (needed for '{ours}'; columns found: {have}; "
                          f"map another with --map {ours}=NAME)") for ours, theirs in missing])
    return df.rename(columns={theirs: ours for ours, theirs in columns.items() if theirs in df.columns})


def _renamed(err: DataError, columns: dict[str, str], line_offset: int = 1) -> DataError:
    """The same problems, with our column names replaced by the file's."""
    def name(c: str | None) -> str | None:
        return ",".join(columns.get(x, x) for x in c.split(",")) if c else c

    return DataError([(f, r, name(c), m) for f, r, c, m in err.problems], line_offset)


def _query_ids(frames: list[tuple[pd.Series, str]]) -> tuple[pd.DataFrame, list[pd.Series]]:
    """Give distinct query texts ids (in order of first use across files; texts that differ only in case are
    one query, spelled as first seen); blank queries are errors. Any other text is a query, `NA` and `null`
    included (the files are read without pandas' missing-value words)."""
    problems = []
    cleaned = []
    for s, file in frames:
        q = s.fillna("").str.strip().str.replace(r"\s+", " ", regex=True)
        for r in np.flatnonzero((q == "").to_numpy())[:5]:
            problems.append((file, int(r) + 1, "query", "empty query"))
        cleaned.append(q)
    if problems:
        raise DataError(problems, 1)
    allq = pd.concat(cleaned, ignore_index=True)
    codes, _ = pd.factorize(allq.str.casefold())  # 'Drill' and 'drill' are one query, spelled as first seen
    first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
    queries = pd.DataFrame({"query_id": np.arange(1, len(first) + 1), "query": allq.to_numpy()[first]})
    out, at = [], 0
    for q in cleaned:
        out.append(pd.Series(codes[at:at + len(q)] + 1, index=q.index))
        at += len(q)
    return queries, out


def csv_tables(files: dict[str, str | Path], columns: dict[str, str] | None = None, encoding: str = "utf-8",
               sep: str = ",", relevance_threshold: float | None = None, on_duplicate: str = "error",
               name: str | None = None, present: tuple[str, ...] = ()) -> Imported:
    """Read CSV files (keys of `files`: products, users, judgments, search_log); `present` lists the
    tables the target workspace already has.

    Judgments and search logs name queries by text in a `query` column. `columns` maps our column
    names to the files' (a key "table.column" applies to one table only). Query texts are trimmed,
    inner whitespace collapsed and compared without case; judgments that then repeat a (query, product)
    pair are an error unless `on_duplicate` is "mean", "max" or "first".
    """
    columns = columns or {}
    sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)  # --sep '\t' as typed in a shell
    if not isinstance(sep, str) or len(sep) != 1 or sep in '"\r\n':
        raise ValueError(f"the field separator (--sep) must be one character other than a quote or a newline, "
                         f"e.g. ',' ';' '|' or '\\t' for a tab; got {sep!r}")
    if relevance_threshold is not None and not math.isfinite(relevance_threshold):
        raise ValueError(f"the relevance threshold must be a finite number, got {relevance_threshold!r}")
    unknown = set(files) - set(CSV_TABLES)
    if unknown:
        raise ValueError(f"cannot import {sorted(unknown)} from CSV; importable tables: {', '.join(CSV_TABLES)}")
    if "products" not in files and "products" not in present:
        raise ValueError("a products file is needed (the workspace has no products table yet)")
    raw, maps = {}, {}
    for table, path in files.items():
        maps[table] = {k.split(".", 1)[-1]: v for k, v in columns.items() if "." not in k or k.startswith(table + ".")}
        need = [c.name for c in TABLES[table].columns if c.required and c.name != "query_id"]
        if table in ("judgments", "search_log"):
            need.append("query")
        raw[table] = read_csv(path, maps[table], encoding, sep, tuple(need))

    frames: dict[str, pd.DataFrame] = {}
    with_q = [t for t in ("judgments", "search_log") if t in raw]
    if with_q:
        frames["queries"], ids = _query_ids([(raw[t]["query"], str(files[t])) for t in with_q])
        for t, qid in zip(with_q, ids):
            raw[t] = raw[t].drop(columns="query").assign(query_id=qid)
            maps[t] = {**maps[t], "query_id": maps[t].get("query", "query")}
    if "judgments" in raw and on_duplicate == "error":
        j = raw["judgments"]
        dup = j.duplicated(["query_id", "product_id"]).to_numpy()
        if dup.any():
            texts = frames["queries"].set_index("query_id")["query"]
            raise DataError([(str(files["judgments"]), int(r) + 1, f"{maps['judgments']['query_id']},{maps['judgments'].get('product_id', 'product_id')}",
                              f"duplicate judgment for query {texts[j['query_id'].iat[r]]!r} and product {j['product_id'].iat[r]!r} "
                              f"(queries are compared with whitespace collapsed and without case; {int(dup.sum())} in all; "
                              "--on-duplicate mean|max|first merges them)") for r in np.flatnonzero(dup)[:5]], 1)
    if "judgments" in raw and on_duplicate != "error":
        j = raw["judgments"]
        rel = pd.to_numeric(j["relevance"], errors="coerce")
        agg = {"mean": "mean", "max": "max", "first": "first"}.get(on_duplicate)
        if agg is None:
            raise ValueError(f"on_duplicate must be error, mean, max or first, got {on_duplicate!r}")
        if rel.notna().all():  # bad numbers are reported by validation, with their rows
            raw["judgments"] = j.assign(relevance=rel).groupby(["query_id", "product_id"], sort=False, as_index=False)["relevance"].agg(agg)
    if "search_log" in raw and "users" not in raw and "users" not in present:
        u = raw["search_log"]["user_id"].dropna().unique()
        if len(u):
            frames["users"] = pd.DataFrame({"user_id": u})
    for t in raw:
        frames[t] = raw[t]

    def explain(e: DataError) -> DataError:
        table = next((t for t in files if any(f == str(files[t]) for f, *_ in e.problems)), None)
        return _renamed(e, maps[table]) if table else e

    sources = {t: str(p) for t, p in files.items()}
    return Imported(frames, sources, dict(source="csv", files=sources, relevance_threshold=relevance_threshold, name=name),
                    explain)


def _read_json(path: str | Path) -> dict:
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError([(str(path), None, None, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}")]) from e
    if not isinstance(data, dict) or not data:
        raise DataError([(str(path), None, None, "expected a non-empty JSON object keyed by id")])
    return data


def _str(v) -> str:
    """An LC-Rec field as a string: missing, null and NaN (Python's json reads a bare NaN) are "", never 'nan'."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def lcrec_tables(items: str | Path, inter: str | Path | None = None, name: str | None = None) -> Imported:
    """Read LC-Rec item metadata (and user sequences) as products, users and interactions."""
    meta = _read_json(items)
    rows, problems = [], []
    for n, (pid, it) in enumerate(meta.items(), 1):
        if not isinstance(it, dict):
            problems.append((str(items), n, None, f"item {pid!r} is not an object"))
            continue
        title = html.unescape(_str(it.get("title"))).strip()
        if not title:  # the schema requires one
            problems.append((str(items), n, "title", f"item {pid!r} has no title"))
        cats = [html.unescape(c).strip() for c in _str(it.get("categories")).split(",") if c.strip()]
        rows.append({"product_id": str(pid), "title": title, "category": " > ".join(cats) or None,
                     "brand": html.unescape(_str(it.get("brand"))).strip() or None,
                     "description": html.unescape(_str(it.get("description"))).strip() or None})
    if problems:
        raise DataError(problems)
    frames = {"products": pd.DataFrame(rows)}
    sources = {"products": str(items)}
    if inter is not None:
        seqs = _read_json(inter)
        us, ps, qs = [], [], []
        for n, (uid, seq) in enumerate(seqs.items(), 1):
            if not isinstance(seq, list) or not seq:
                raise DataError([(str(inter), n, None, f"user {uid!r}: expected a non-empty list of item ids")])
            bad = [(j, x) for j, x in enumerate(seq) if str(x) not in meta]
            if bad:
                j, x = bad[0]
                raise DataError([(str(inter), n, None, f"user {uid!r}, item {j} of the sequence: unknown item {x!r} "
                                  f"(not in {Path(items).name}; {len(bad)} unknown in this user's sequence)")])
            us += [str(uid)] * len(seq)
            ps += [str(x) for x in seq]
            qs += list(range(len(seq)))
        frames["users"] = pd.DataFrame({"user_id": [str(u) for u in seqs]})
        frames["interactions"] = pd.DataFrame({"user_id": us, "product_id": ps, "event": "review", "seq": qs})
        sources.update(users=str(inter), interactions=str(inter))
    return Imported(frames, sources, dict(source="lcrec", files=dict(sources), name=name))
