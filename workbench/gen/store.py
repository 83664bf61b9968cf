"""Generator artifacts in a workspace.

    <workspace>/gen/
      tokenizer-<key>.json        text tokenizers by key (WordPiece trained here, or MiniLM's): each
                                  generator's config names its own, so generators never share one
      <name>.safetensors          weights; metadata: kind "generator", GenConfig JSON, the SID
                                  fingerprint, the training run id, lineage

The SID fingerprint is a hash of the CQ-SID weights file: codes mean something only for the RQ-VAE
that produced them, so a generator trained on other SIDs is refused rather than decoding nonsense
(a hard parent, workbench.lineage). Adding products to existing SIDs (`workbench sid assign`) keeps it.
The lineage records the soft parents: the checkpoint it was trained or copied from (`parent`, by name
and fingerprint) and the tables it read; `outdated` says which of them changed since.

`deploy` is the only way a checkpoint becomes `<name>` (what search, eval and the app load): a copy
made inside a logbook run, so the deployed model never changes without a run saying so.
"""

from __future__ import annotations

from pathlib import Path

from workbench import checkpoint, lineage
from workbench.data.splits import SPLIT
from workbench.gen import names
from workbench.gen.config import GenConfig
from workbench.gen.model import Generator
from workbench.gen.tokenizer import TextTokenizer, load_tokenizer
from workbench.sid.store import sid_dir
from workbench.workspace import Workspace


def gen_dir(ws: Workspace) -> Path:
    return ws.path / "gen"


def sid_fingerprint(ws: Workspace) -> str:
    path = sid_dir(ws) / "rqvae.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"workspace {ws.path} has no SID model ({path}); train one with `workbench sid train`")
    return lineage.fingerprint(path)


def tokenizer_path(ws: Workspace, key: str) -> Path:
    return gen_dir(ws) / f"tokenizer-{key}.json"


TABLES_READ = ("products", "queries", "search_log", "judgments", "pseudo_queries")  # what training reads besides the SIDs (stage 1: titles)
RETRAIN = "retrain it with `workbench train --fresh` (stage 4: `workbench rl`), or rebuild the workspace with `workbench demo`"


def checkpoint_path(ws: Workspace, name: str) -> Path:
    """gen/<name>.safetensors; a name that is not one (a path, `..`) is refused (`names.check`)."""
    return gen_dir(ws) / f"{names.check(name)}.safetensors"


def save(ws: Workspace, model: Generator, tok: TextTokenizer, name: str = names.DEPLOYED, extra: dict | None = None,
         parent: str | None = None, **meta) -> Path:
    """Write `<name>`; `parent`: the checkpoint it was trained from (recorded with its fingerprint)."""
    tok.save(tokenizer_path(ws, tok.key))
    path = checkpoint_path(ws, name)
    made_from = {"tables": lineage.as_read(ws, lineage.tables(ws, TABLES_READ)), "split": SPLIT}
    if parent is not None:
        key = f"gen/{parent}"
        made_from["parent"] = {"name": parent, "fingerprint": lineage.as_read(ws, {key: lineage.fingerprint(checkpoint_path(ws, parent))})[key]}
    sids = lineage.as_read(ws, {"rqvae": sid_fingerprint(ws), "sids": lineage.fingerprint(sid_dir(ws) / "sids.parquet")})
    checkpoint.save(path, model, model.cfg, kind="generator", extra=extra, sid_fingerprint=sids["rqvae"],
                    lineage=made_from, **meta)
    if ws.reads:
        ws.wrote(f"gen/{name}", lineage.fingerprint(path))
    return path


def parent_changed(meta: dict, ws: Workspace) -> str:
    """Why the checkpoint with this metadata is older than its parent ("" when it is not)."""
    par = lineage.decode(meta.get("lineage")).get("parent")
    if not par:
        return ""
    path = checkpoint_path(ws, par["name"])
    if not path.exists():
        return f"its parent {par['name']} is gone"
    return "" if lineage.fingerprint(path) == par["fingerprint"] else f"{par['name']} was retrained since"


def outdated(ws: Workspace, name: str) -> str:
    """Load `<name>` (every check of `load`), then say which soft parents changed since ("" if none)."""
    _, _, meta = load(ws, name)
    tables = lineage.decode(meta.get("lineage")).get("tables", {})
    now = lineage.tables(ws, TABLES_READ)
    why = [parent_changed(meta, ws)] + [f"table {t} changed" for t in tables if t in now and now[t] != tables[t]]
    return "; ".join(w for w in why if w)


def load_partial(ws: Workspace, name: str, device: str = "cpu") -> tuple[dict, dict]:
    """An interrupted stage's `<name>` (weights + optimizer state, not loadable as a model by itself):
    its tensors and metadata; StaleError when it was trained on other SIDs or from an older parent."""
    path = checkpoint_path(ws, name)
    state, _, meta = checkpoint.load(path, GenConfig, kind="generator", device=device)
    if meta.get("sid_fingerprint") != sid_fingerprint(ws):
        raise lineage.StaleError(f"{path} is stale: an interrupted stage on other SIDs")
    lineage.check_split(lineage.decode(meta.get("lineage")), str(path), RETRAIN)
    if why := parent_changed(meta, ws):
        raise lineage.StaleError(f"{path} is stale: {why}")
    return state, meta


REPAIR = "repair it with `workbench deploy --repair` (or deploy a checkpoint: `workbench deploy NAME`)"


def deploy_problem(ws: Workspace, source: str, name: str = names.DEPLOYED) -> str:
    """Why `name` is not `source` as deployed ("" when it is): missing, not loadable, or deployed from
    `source` before `source` was trained again (a deploy killed halfway). A `name` deployed from another
    checkpoint on purpose (`workbench deploy`, stage 4) is not a problem."""
    if not checkpoint_path(ws, name).exists():
        return f"{name} is missing"
    try:
        _, _, meta = load(ws, name)
    except (checkpoint.CheckpointError, lineage.StaleError) as e:
        return f"{name} does not load ({e})"
    par = lineage.decode(meta.get("lineage")).get("parent") or {}
    if par.get("name") == source and (why := parent_changed(meta, ws)):
        return f"{name} is older than {source}: {why}"
    return ""


def last_deployed(ws: Workspace, name: str = names.DEPLOYED) -> str | None:
    """The checkpoint `name` was last deployed from, by the logbook's finished `gen-deploy` runs."""
    if not ws.logbook_path.exists():
        return None
    got = ws.logbook().query("SELECT config->>'$.source' AS source FROM runs WHERE kind = 'gen-deploy' AND status = 'finished' "
                             "AND config->>'$.name' = ? ORDER BY started_at DESC LIMIT 1", [name])
    return None if got.empty else str(got["source"][0])


def repair(ws: Workspace, name: str = names.DEPLOYED) -> str:
    """Deploy `name` again from the checkpoint it was deployed from when it is missing, damaged or older than
    it; returns what was done ("" when nothing was needed)."""
    source = None
    try:
        _, _, meta = load(ws, name)
        source = (lineage.decode(meta.get("lineage")).get("parent") or {}).get("name")
    except (FileNotFoundError, checkpoint.CheckpointError, lineage.StaleError):
        pass
    source = source or last_deployed(ws, name)
    if source is None:
        raise FileNotFoundError(f"{checkpoint_path(ws, name)} cannot be repaired: the logbook records no deploy of {name}; "
                                "deploy a checkpoint with `workbench deploy NAME` or train with `workbench train`")
    if not (why := deploy_problem(ws, source, name)):
        return ""
    deploy(ws, source, name, why=f"repair: {why}")
    return f"{name} deployed again from {source} ({why})"


@lineage.reads
def deploy(ws: Workspace, source: str, name: str = names.DEPLOYED, why: str = "") -> Path:
    """Copy checkpoint `source` to `<name>` (the deployed generator) inside a logbook run."""
    model, tok, meta = load(ws, source)
    with ws.logbook().run("gen-deploy", {"source": source, "name": name, "why": why}, name=f"deploy {source} as {name}") as run:
        keep = {k: v for k, v in meta.items() if k not in ("sid_fingerprint", "lineage", "run_id")}
        path = save(ws, model, tok, name, parent=source, run_id=run.run_id, trained_by=meta.get("run_id"), **keep)
        run.log(0, stage="deploy", deployed=1.0)
    return path


def load(ws: Workspace, name: str = names.DEPLOYED, device: str = "cpu") -> tuple[Generator, TextTokenizer, dict]:
    path = checkpoint_path(ws, name)
    if not path.exists():
        have = sorted(p.stem for p in gen_dir(ws).glob("*.safetensors"))
        raise FileNotFoundError(f"workspace {ws.path} has no generator {name!r} ({path}); "
                                f"{'it has ' + ', '.join(have) if have else 'train one with `workbench train`'}")
    if ws.reads:
        ws.note(f"gen/{name}", lineage.fingerprint(path))
    try:
        state, cfg, meta = checkpoint.load(path, GenConfig, kind="generator", device=device)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"{e}; {REPAIR}" if name == names.DEPLOYED else str(e)) from e
    if meta.get("sid_fingerprint") != sid_fingerprint(ws):
        raise lineage.StaleError(f"{path} is stale: trained on other SIDs than the workspace's current ones "
                                 "(the CQ-SID model changed since); retrain it with `workbench train`")
    lineage.check_split(lineage.decode(meta.get("lineage")), str(path), RETRAIN)
    tok = load_tokenizer(tokenizer_path(ws, cfg.tokenizer), device, ws.cache_dir / "embeddings")
    if tok.key != cfg.tokenizer:
        raise checkpoint.CheckpointError(f"{path}: built for tokenizer {cfg.tokenizer!r}, the workspace has {tok.key!r}")
    model = Generator(cfg, pretrained=False)
    checkpoint.load_into(model, state, path)
    return model.to(device).eval(), tok, meta
