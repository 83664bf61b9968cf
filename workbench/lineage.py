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

`pipeline.report(ws)` loads every artifact of a workspace and says, per artifact, ok / outdated / stale
/ broken: what `workbench data validate` prints and the fault-injection tests assert on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from workbench.checkpoint import CheckpointError
from workbench.data.splits import SPLIT

_CACHE: dict[tuple, str] = {}


class StaleError(CheckpointError):
    """An artifact built from other inputs than the workspace has now (a CheckpointError: refused alike)."""


def fingerprint(path: str | Path) -> str:
    """SHA-256 of the file's bytes, 16 hex digits (cached per path, size, mtime and inode)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()[:16]
    return _CACHE[key]


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
