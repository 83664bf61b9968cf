"""A workspace: one directory holding one pipeline's artifacts.

    <workspace>/
      workspace.json        name, source, relevance scale, created
      tables/<name>.parquet the data model (workbench.data.schema), validated on every write
      logbook.duckdb        every run, curve, eval, benchmark and served query (workbench.logbook)
      cache/                content-addressed caches (embeddings)
      ...                   later artifacts (SID tokenizer, generator checkpoints) in their own folders

Writes go to a temporary file that is renamed into place, so a crash never leaves half a file. Files
that belong together (the tables of one import with workspace.json; the SID model, table and index) are
written in one `Transaction`: staged under temporary names, then renamed together under a journal that
the next `Workspace` opened on the directory rolls forward, so a reader never sees half a set. Temporary
files carry their writer's pid and are removed once that process is gone (`clean_temps`).

Replacing a table that trained artifacts (sid/, gen/, rl/) were built from needs `replace=True`: the
artifacts' own lineage (workbench.lineage) then refuses them until they are rebuilt.

One writer at a time: every verb that writes a workspace holds its writer lock (`Workspace.writer`, an
OS advisory lock on `.writer.lock`, which the OS releases when the process dies, however it dies), and
a second writer is refused at once with the holder's verb, pid and start time. Readers never take it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.data.loaders import csv_tables, lcrec_tables
from workbench.data.schema import TABLES, DataError, validate
from workbench.logbook import Logbook

DEFAULT_WORKSPACE = Path("workspaces/default")
ARTIFACT_DIRS = {"sid": "SIDs", "gen": "generator checkpoints", "rl": "ranker"}  # what is built from the tables
DERIVED_TABLES = ("pseudo_queries",)  # drawn from the catalog by workbench itself: rewriting one replaces no user data
_ARROW = {
    "str": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "time": pa.timestamp("ms", tz="UTC"),
}


def default_path() -> Path:
    return Path(os.environ.get("WORKBENCH_WORKSPACE", DEFAULT_WORKSPACE))


def digest(chunks) -> str:
    """A content fingerprint: the first 16 hex digits of the SHA-256 of the byte chunks, in order."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def _temp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write(path: Path, write, tx: Transaction | None = None) -> None:
    """Call write(tmp_path) and rename the result over `path` (same directory, so the rename is atomic);
    inside a transaction `tx`, stage it there instead (renamed when the transaction commits)."""
    if tx is not None:
        tx.stage(Path(path), write)
        return
    tmp = _temp(Path(path))
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _writer_pid(name: str) -> int | None:
    """The pid in `.<file>.<pid>.<random>.tmp` or `.commit-<pid>.json` (None for other names)."""
    if name.startswith(".commit-") and name.endswith(".json"):
        pid = name[len(".commit-"):-len(".json")]
    else:
        parts = name.split(".")
        pid = parts[-3] if len(parts) >= 4 else ""
    return int(pid) if pid.isdigit() else None


def clean_temps(root: Path, pattern: str = ".*.tmp", recursive: bool = True) -> list[Path]:
    """Remove temporary files under `root` (matching `pattern`) whose writer process is gone (a killed
    job's); returns them."""
    gone = []
    if Path(root).is_dir():
        for tmp in (Path(root).rglob if recursive else Path(root).glob)(pattern):
            pid = _writer_pid(tmp.name)
            if pid is not None and pid != os.getpid() and not _alive(pid):
                tmp.unlink(missing_ok=True)
                gone.append(tmp)
    return gone


class Transaction:
    """Files written together or not at all.

    `stage(path, write)` writes to a temporary file beside `path`, `remove(path)` marks one for deletion.
    `commit()` writes a journal of the (temporary, final) pairs atomically, renames every temporary file into place, then removes the
    journal. A crash before the journal leaves only temporary files (removed by `clean_temps`), a crash
    after it is rolled forward by `recover`: either way no reader sees part of the set.
    """

    def __init__(self, root: Path):
        self.root, self.staged = Path(root), []

    def stage(self, path: Path, write) -> Path:
        tmp = _temp(Path(path))
        self.staged.append((tmp, Path(path)))
        write(tmp)
        os.chmod(tmp, 0o644)
        return tmp

    def remove(self, path: Path) -> None:
        """Delete `path` when the transaction commits."""
        self.staged.append((None, Path(path)))

    def commit(self) -> None:
        if not self.staged:
            return
        journal = self.root / f".commit-{os.getpid()}.json"
        pairs = [[t and os.path.relpath(t, self.root), os.path.relpath(f, self.root)] for t, f in self.staged]
        atomic_write(journal, lambda tmp: tmp.write_text(json.dumps(pairs)))
        roll_forward(journal)
        self.staged = []

    def abort(self) -> None:
        for tmp, _ in self.staged:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        self.staged = []


def roll_forward(journal: Path) -> None:
    """Rename each staged file into place (a null temporary: delete the file), then drop the journal."""
    root = journal.parent
    for tmp, final in json.loads(journal.read_text()):
        if tmp is None:
            (root / final).unlink(missing_ok=True)
        elif (root / tmp).exists():
            os.replace(root / tmp, root / final)
    journal.unlink()


def recover(root: Path) -> list[Path]:
    """Finish the commits of writers that died mid-commit (their journals), then remove dead temps."""
    done = []
    for journal in Path(root).glob(".commit-*.json"):
        pid = _writer_pid(journal.name)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            roll_forward(journal)
            done.append(journal)
    return done


def write_parquet(df: pd.DataFrame, table: str, path: Path, tx: Transaction | None = None) -> None:
    """Write a validated frame with the table's Arrow schema; byte-identical for identical input."""
    t = TABLES[table]
    schema = pa.schema([pa.field(c.name, _ARROW[c.kind], nullable=c.nullable or not c.required) for c in t.columns])
    arrow = pa.Table.from_pandas(df[t.names], schema=schema, preserve_index=False).replace_schema_metadata(None)
    atomic_write(path, lambda tmp: pq.write_table(arrow, tmp, compression="zstd"), tx)


class WorkspaceBusy(RuntimeError):
    """Another process holds the workspace's writer lock."""


WRITER_ENV = "WORKBENCH_WRITER"  # the lock file a process holds, so its child processes (and torchrun ranks) pass


class ReplaceError(ValueError):
    """Writing would replace tables that trained artifacts were built from, without replace=True."""


class Workspace:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.reads: list[dict[str, set[str]]] = []  # open `lineage.reading` scopes: input -> fingerprints read
        if self.path.is_dir():
            recover(self.path)  # a writer killed mid-commit: finish its set of files

    def note(self, name: str, fp: str) -> None:
        """Record that input `name` was read with fingerprint `fp`, in every open `lineage.reading` scope."""
        for seen in self.reads:
            seen.setdefault(name, set()).add(fp)

    def wrote(self, name: str, fp: str) -> None:
        """Record that this process wrote input `name` with fingerprint `fp`: later reads are of that version."""
        for seen in self.reads:
            seen[name] = {fp}

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

    def init(self, tx: Transaction | None = None, **meta) -> Workspace:
        """Create (or update) workspace.json; `relevance_threshold` says which grades count as relevant."""
        cur = self.meta
        cur.update({k: v for k, v in meta.items() if v is not None})
        text = json.dumps(cur, indent=2, sort_keys=True) + "\n"
        atomic_write(self.meta_path, lambda tmp: tmp.write_text(text), tx)
        return self

    @contextmanager
    def transaction(self):
        """`with ws.transaction() as tx: ...stage files...`: all of them land, or none (see Transaction)."""
        self.path.mkdir(parents=True, exist_ok=True)
        clean_temps(self.path)
        tx = Transaction(self.path)
        try:
            yield tx
        except BaseException:
            tx.abort()
            raise
        tx.commit()

    @contextmanager
    def writer(self, what: str):
        """Hold the workspace's writer lock while `what` (a verb) writes; WorkspaceBusy at once when another
        process holds it, naming it. A child of the holder (it inherits WRITER_ENV) and torchrun ranks
        other than 0 (which never write) pass without it."""
        lock = (self.path / ".writer.lock").resolve() if self.path.exists() else self.path.resolve() / ".writer.lock"
        if os.environ.get(WRITER_ENV) == str(lock) or os.environ.get("RANK", "0") != "0":
            yield
            return
        made = not lock.parent.exists()  # a new workspace: removed again if the verb writes nothing into it
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise WorkspaceBusy(f"workspace {self.path} is busy: {holder} is writing it; try again when it is done "
                                "(reading it, e.g. search, eval or the app, is fine meanwhile)") from None
        f.seek(0)
        f.truncate()
        f.write(f"`{what}` (pid {os.getpid()}) since {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
        f.flush()
        os.environ[WRITER_ENV] = str(lock)
        try:
            yield
        finally:
            os.environ.pop(WRITER_ENV, None)
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
            if made and [q.name for q in lock.parent.iterdir()] == [lock.name]:
                lock.unlink(missing_ok=True)
                lock.parent.rmdir()

    def artifacts(self) -> dict[str, list[str]]:
        """Trained artifacts present, by folder (sid, gen, rl): the files built from the tables."""
        out = {}
        for d in ARTIFACT_DIRS:
            files = sorted(p.name for p in (self.path / d).glob("*") if p.is_file() and not p.name.startswith("."))
            if files:
                out[d] = files
        return out

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
            data = p.read_bytes()  # one read: what is parsed is what is fingerprinted, whatever replaces the file meanwhile
            if self.reads:
                self.note(name, digest([data]))
            return pq.read_table(pa.BufferReader(data)).to_pandas()
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError([(str(p), None, None, f"not a readable Parquet file: {e}")]) from e

    def write_tables(self, frames: dict[str, pd.DataFrame], sources: dict[str, str] | None = None, replace: bool = False,
                     meta: dict | None = None) -> dict[str, pd.DataFrame]:
        """Validate all frames together (references across them and tables already here), then write them
        and `meta` (workspace.json entries) in one transaction. Returns the canonical frames.

        Nothing is written unless every frame is valid and the tables already here that refer to changed
        ones still fit them; a derived table (pseudo-queries) of a changed table is dropped with it. A table
        whose content changes while trained artifacts exist needs `replace=True` (ReplaceError otherwise;
        rewriting identical content is always allowed).
        """
        sources = sources or {}
        order = [n for n in TABLES if n in frames]  # referenced tables come first in TABLES
        done: dict[str, pd.DataFrame] = {}
        here = {m: self.table(m) for m in self.tables()}  # read once: the reference checks below all use them
        for n in order:
            others = {**{m: t for m, t in here.items() if m not in frames}, **done}
            done[n] = validate(frames[n], n, file=sources.get(n), others=others)
        with self.transaction() as tx:
            staged = {}
            for n in order:
                write_parquet(done[n], n, self.table_path(n), tx)
                staged[n] = tx.staged[-1][0]
            changed = [n for n, tmp in staged.items() if self.has(n) and tmp.read_bytes() != self.table_path(n).read_bytes()]
            for n in here:  # tables left in place must still refer to rows that exist
                if n in frames or not any(other in changed for _, other, _ in TABLES[n].refs):
                    continue
                if n in DERIVED_TABLES:  # drawn from the old rows: dropped with them (`workbench data pseudo` redraws)
                    tx.remove(self.table_path(n))
                    continue
                try:
                    validate(here[n], n, file=str(self.table_path(n)), others={**here, **done})
                except DataError as e:
                    raise DataError([*e.problems, (str(self.table_path(n)), None, None, "already in the workspace, it no longer "
                                     "fits the tables being written: write it together with them, or use a new workspace (-w)")]) from None
            changed = [n for n in changed if n not in DERIVED_TABLES]
            if changed and not replace and (built := self.artifacts()):
                raise ReplaceError(
                    f"workspace {self.path} has artifacts built from its current {', '.join(changed)} "
                    f"({'; '.join(f'{d}/: {ARTIFACT_DIRS[d]}' for d in built)}); writing different {', '.join(changed)} "
                    "would leave them stale. Pass --replace (replace=True) to write anyway: readers then refuse each stale "
                    "artifact until it is rebuilt (`workbench data validate` lists them); or write into a new workspace (-w)")
            if meta:
                self.init(tx=tx, **meta)
        return done

    def write_import(self, imported, replace: bool = False) -> dict[str, int]:
        """Validate and write the tables a loader read (`workbench.data.loaders.Imported`) and where they came
        from (workspace.json), together. Returns row counts."""
        try:
            done = self.write_tables(imported.frames, imported.sources, replace=replace, meta=imported.meta)
        except DataError as e:
            raise imported.explain(e) from None
        return {t: len(d) for t, d in done.items()}

    def import_csv(self, files: dict, columns: dict[str, str] | None = None, **kw) -> dict[str, int]:
        """`data.loaders.csv_tables(files, columns, **kw)` written into this workspace."""
        replace = kw.pop("replace", False)
        return self.write_import(csv_tables(files, columns, present=tuple(self.tables()), **kw), replace)

    def import_lcrec(self, items, inter=None, name: str | None = None, replace: bool = False) -> dict[str, int]:
        """`data.loaders.lcrec_tables(items, inter)` written into this workspace."""
        return self.write_import(lcrec_tables(items, inter, name), replace)

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
        return Logbook(self.logbook_path, **kw)

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    def __repr__(self) -> str:
        return f"Workspace({str(self.path)!r})"
