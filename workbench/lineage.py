"""Lineage: every artifact records fingerprints of the files it was built from, and readers check them.

    tables/products ─► SIDs: sid/rqvae.safetensors ─► sid/sids.parquet + index.parquet
    tables/products, users ─► ranker: rl/ranker.safetensors
    SIDs (rqvae) ─► gen/<name>-stage1 ─► -stage2 ─► -stage3 ─► <name> (deployed) ─► -grpo, -eg-grpo, -stage4

A fingerprint is the first 16 hex digits of a file's SHA-256. Tables are written byte-identically for
identical content (`workspace.write_parquet`), so re-importing the same file changes no fingerprint.

Two kinds of parent:
- *hard*: an artifact read against a changed parent answers wrongly (SIDs of another catalog; a ranker
  whose rows index another product table; a generator of another RQ-VAE). Readers raise `StaleError`,
  which names the artifact, what changed and the command that rebuilds it.
- *soft*: an artifact still valid but built from an older version (a stage trained from an earlier
  stage's checkpoint; a generator trained on an older search log). Training retrains stale stages;
  `report` lists the rest as outdated; nothing refuses them.

Fingerprints are of the inputs *as read*, not as they are when the artifact is saved: the training calls
are `reading` scopes in which every table, SID table and checkpoint read is fingerprinted from the bytes
parsed, and `as_read` gives the saver those (an input read in two versions is refused: a mix).

`pipeline.report(ws)` loads every artifact of a workspace and says, per artifact, ok / outdated / stale
/ broken: what `workbench data validate` prints and the fault-injection tests assert on.
"""

from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from pathlib import Path

from workbench.checkpoint import CheckpointError
from workbench.data.splits import SPLIT
from workbench.workspace import digest

_CACHE: dict[tuple, str] = {}


class StaleError(CheckpointError):
    """An artifact built from other inputs than the workspace has now (a CheckpointError: refused alike)."""


def fingerprint(path: str | Path) -> str:
    """SHA-256 of the file's bytes, 16 hex digits (cached per path, size, mtime and inode)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _CACHE:
        with open(path, "rb") as f:
            _CACHE[key] = digest(iter(lambda: f.read(1 << 20), b""))
    return _CACHE[key]


@contextmanager
def reading(ws):
    """Within: the inputs `ws` reads (its tables, the SID table and the RQ-VAE it was made from, generator
    checkpoints) are fingerprinted as read, so `as_read` records what a run was built from even when another
    process replaces an input between the read and the save (a Python caller holds no writer lock)."""
    seen: dict[str, set[str]] = {}
    ws.reads.append(seen)
    try:
        yield seen
    finally:
        ws.reads.remove(seen)


def reads(fn):
    """Decorate a function whose first argument is a workspace: its call is one `reading` scope."""
    @functools.wraps(fn)
    def scoped(ws, *args, **kw):
        with reading(ws):
            return fn(ws, *args, **kw)
    return scoped


def as_read(ws, current: dict[str, str]) -> dict[str, str]:
    """`current` (input -> fingerprint now) with each input the innermost open `reading` scope read
    replaced by the fingerprint it was read with; StaleError when the scope read an input in two versions
    (it changed between two reads: the run was built from a mix)."""
    seen = ws.reads[-1] if ws.reads else {}
    mixed = [k for k in current if len(seen.get(k, ())) > 1]
    if mixed:
        raise StaleError(f"{' and '.join(mixed)} changed while this run read {'them' if len(mixed) > 1 else 'it'} "
                         f"({', '.join(f'{k}: ' + ' then '.join(sorted(seen[k])) for k in mixed)}), so it was built from a mix "
                         "of versions and nothing was saved; run it again (the `workbench` verbs take the workspace's "
                         "writer lock, so no other verb can change inputs meanwhile)")
    return {k: next(iter(seen[k])) if k in seen else v for k, v in current.items()}


def tables(ws, names) -> dict[str, str]:
    """Fingerprints of the named tables the workspace has (absent ones are left out)."""
    return {n: fingerprint(ws.table_path(n)) for n in names if ws.has(n)}


def encode(lineage: dict) -> str:
    return json.dumps(lineage, sort_keys=True)


def decode(value) -> dict:
    """A recorded lineage from checkpoint or Parquet metadata (JSON, possibly JSON-encoded twice)."""
    while isinstance(value, (str, bytes)):
        value = json.loads(value)
    return value or {}


def check(artifact: str, recorded: dict, current: dict, rebuild: str) -> None:
    """Raise StaleError when a parent recorded by `artifact` differs from the current one; `rebuild` says
    how to rebuild it ("rebuild it with `workbench ...`"). Parents the artifact did not record (built
    before lineage existed) or the workspace no longer has are skipped."""
    changed = [k for k in recorded if k in current and recorded[k] != current[k]]
    if changed:
        raise StaleError(f"{artifact} is stale: {' and '.join(changed)} changed since it was built "
                         f"({', '.join(f'{k} {recorded[k]} then, {current[k]} now' for k in changed)}); {rebuild}")


def check_split(recorded: dict, artifact: str, rebuild: str) -> None:
    """Raise StaleError when an artifact trained on queries records another train/validation/test split
    than the current one (`data.splits.SPLIT`), or none (trained before it existed): its validation and
    test queries may then have been training queries."""
    got = recorded.get("split")
    if got != SPLIT:
        raise StaleError(f"{artifact} is stale: it was trained on {'the split ' + got if got else 'the query-id split of before'}, "
                         f"not {SPLIT}, so today's validation and test queries may have been its training queries; {rebuild}")
