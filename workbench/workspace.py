"""A workspace: one directory holding one pipeline's artifacts.

    <workspace>/
      workspace.json        name, source, relevance scale, created
      tables/<name>.parquet the data model (workbench.data.schema), validated on every write
      logbook.duckdb        every run, curve, eval, benchmark and served query (workbench.logbook)
      cache/                content-addressed caches (embeddings)
      ...                   later artifacts (SID tokenizer, generator checkpoints) in their own folders

Writes go to a temporary file that is renamed into place, so a crash never leaves half a table.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.data.schema import TABLES, DataError, validate

DEFAULT_WORKSPACE = Path("workspaces/default")
_ARROW = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "time": pa.timestamp("ms", tz="UTC"),
}


def default_path() -> Path:
    return Path(os.environ.get("WORKBENCH_WORKSPACE", DEFAULT_WORKSPACE))


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) and rename the result over `path` (same directory, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, table: str, path: Path) -> None:
    """Write a validated frame with the table's Arrow schema; byte-identical for identical input."""
    t = TABLES[table]
    schema = pa.schema([pa.field(c.name, _ARROW[c.kind], nullable=c.nullable or not c.required) for c in t.columns])
    arrow = pa.Table.from_pandas(df[t.names], schema=schema, preserve_index=False).replace_schema_metadata(None)
    atomic_write(path, lambda tmp: pq.write_table(arrow, tmp, compression="zstd"))


class Workspace:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # metadata -----------------------------------------------------------------------------
    @property
    def meta_path(self) -> Path:
        return self.path / "workspace.json"

    @property
    def meta(self) -> dict:
        if not self.meta_path.exists():
            return {}
        return json.loads(self.meta_path.read_text())

    def exists(self) -> bool:
        return self.meta_path.exists()

    def require(self) -> Workspace:
        if not self.exists():
            raise FileNotFoundError(
                f"no workspace at {self.path} (no workspace.json); build one with `workbench demo`, "
                "`workbench data synth` or `workbench data import`"
            )
        return self

    def init(self, **meta) -> Workspace:
        """Create (or update) workspace.json; `relevance_threshold` says which grades count as relevant."""
        cur = self.meta
        cur.update({k: v for k, v in meta.items() if v is not None})
        text = json.dumps(cur, indent=2, sort_keys=True) + "\n"
        atomic_write(self.meta_path, lambda tmp: tmp.write_text(text))
        return self

    # tables -------------------------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        if name not in TABLES:
            raise KeyError(f"unknown table {name!r}; tables are {', '.join(TABLES)}")
        return self.path / "tables" / f"{name}.parquet"

    def has(self, name: str) -> bool:
        return self.table_path(name).exists()

    def tables(self) -> list[str]:
        return [n for n in TABLES if self.has(n)]

    def table(self, name: str) -> pd.DataFrame:
        p = self.table_path(name)
        if not p.exists():
            raise FileNotFoundError(f"workspace {self.path} has no table '{name}' ({p} is missing)")
        try:
            return pq.read_table(p).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError([(str(p), None, None, f"not a readable Parquet file: {e}")]) from e

    def write_tables(self, frames: dict[str, pd.DataFrame], sources: dict[str, str] | None = None) -> dict[str, pd.DataFrame]:
        """Validate all frames together (references across them and tables already here), then write.

        Nothing is written unless every frame is valid. Returns the canonical frames.
        """
        sources = sources or {}
        order = [n for n in TABLES if n in frames]  # referenced tables come first in TABLES
        done: dict[str, pd.DataFrame] = {}
        for n in order:
            others = {**{m: self.table(m) for m in self.tables() if m not in frames}, **done}
            done[n] = validate(frames[n], n, file=sources.get(n), others=others)
        for n in order:
            write_parquet(done[n], n, self.table_path(n))
        return done

    def write_import(self, imported) -> dict[str, int]:
        """Validate and write the tables a loader read (`workbench.data.loaders.Imported`), then record
        where they came from in workspace.json. Returns row counts."""
        try:
            done = self.write_tables(imported.frames, imported.sources)
        except DataError as e:
            raise imported.explain(e) from None
        self.init(**imported.meta)
        return {t: len(d) for t, d in done.items()}

    def import_csv(self, files: dict, columns: dict[str, str] | None = None, **kw) -> dict[str, int]:
        """`data.loaders.csv_tables(files, columns, **kw)` written into this workspace."""
        from workbench.data.loaders import csv_tables

        return self.write_import(csv_tables(files, columns, present=tuple(self.tables()), **kw))

    def import_lcrec(self, items, inter=None, name: str | None = None) -> dict[str, int]:
        """`data.loaders.lcrec_tables(items, inter)` written into this workspace."""
        from workbench.data.loaders import lcrec_tables

        return self.write_import(lcrec_tables(items, inter, name))

    def validate_all(self) -> dict[str, int]:
        """Re-validate every table against the others; returns row counts."""
        done: dict[str, pd.DataFrame] = {}
        for n in self.tables():
            done[n] = validate(self.table(n), n, file=str(self.table_path(n)), others=done)
        return {n: len(d) for n, d in done.items()}

    # other artifacts ------------------------------------------------------------------------
    @property
    def logbook_path(self) -> Path:
        return self.path / "logbook.duckdb"

    def logbook(self, **kw):
        from workbench.logbook import Logbook

        return Logbook(self.logbook_path, **kw)

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"
