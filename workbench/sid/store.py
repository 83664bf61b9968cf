"""SID artifacts in a workspace, and the training data CQ-SID reads from one.

    <workspace>/sid/
      rqvae.safetensors   weights; metadata: kind, CQSIDConfig JSON, embedder, run id
      sids.parquet        product_id, sid_1..sid_L (+ dedup in unique mode): the SID table
      index.parquet       the SID index: each valid SID once, with its product count (see index.py)
      labels.parquet      a human label per SID prefix: dominant category and distinctive title words (labels.py)
      map.parquet         the Codebooks page's 2-D map of a product sample (map.py), drawn by `sid map`

The first four files are written in one workspace transaction, so a reader sees either the old SIDs or the
new ones, never a mix. Lineage (workbench.lineage): the SID table records the fingerprints of the
products table and the RQ-VAE it was made from, the index the fingerprint of the SID table; `load_sids`
refuses a table of another catalog (run `sid assign`) or one that lost rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workbench import checkpoint, dist, lineage
from workbench.data import splits
from workbench.data.relevance import relevance
from workbench.embed import TUNED, embed, embed_workspace, get_embedder, product_texts
from workbench.sid import labels, metrics
from workbench.sid import map as smap
from workbench.sid.config import CQSIDConfig
from workbench.sid.cqsid import SIDData, dedup, evaluate, flat_stats, train
from workbench.sid.cqsid import assign as assign_codes
from workbench.sid.index import SIDIndex
from workbench.sid.rqvae import RQVAE
from workbench.workspace import Workspace, atomic_write, digest


def sid_dir(ws: Workspace) -> Path:
    return ws.path / "sid"


def relevance_pairs(ws: Workspace, product_ids: pd.Index, query_ids: pd.Index, split: str = "train") -> pd.DataFrame:
    """(query row, product row, weight) of the workspace's relevance (see workbench.data.relevance), on
    `split`'s queries: training ones shape the SIDs (validation and test queries choose and evaluate, so
    they must not), validation ones measure them (`workspace_stats`)."""
    df = relevance(ws)
    df = df[splits.mask(ws, df["query_id"], split)]
    df["query"], df["product"] = query_ids.get_indexer(df["query_id"]), product_ids.get_indexer(df["product_id"])
    return df[(df["query"] >= 0) & (df["product"] >= 0)][["query", "product", "weight"]].reset_index(drop=True)


def workspace_data(ws: Workspace, embedder, progress: bool = True, products: pd.DataFrame | None = None) -> SIDData:
    """SIDData for the workspace's products (or `products`), with categories and query pairs when present."""
    ws.require()
    if products is None:
        vecs = embed_workspace(ws, embedder, progress=progress)
        products, x = ws.table("products"), vecs["products"]
        qx = vecs.get("queries")
    else:
        x = embed(product_texts(products), embedder, ws.cache_dir / "embeddings", progress=progress)
        qx = None
    pids = pd.Index(products["product_id"])
    cat = products["category"] if products["category"].notna().any() else None
    pairs = None
    if qx is not None:
        pairs = relevance_pairs(ws, pids, pd.Index(ws.table("queries")["query_id"]))
    return SIDData(x=x, product_ids=pids.to_numpy(), category=cat, qx=qx, pairs=pairs)


def sid_columns(levels: int, mode: str) -> list[str]:
    return [f"sid_{i + 1}" for i in range(levels)] + (["dedup"] if mode == "unique" else [])


def write_sids(ws: Workspace, model: RQVAE, cfg: CQSIDConfig, product_ids: np.ndarray, sids: np.ndarray,
               **meta) -> dict[str, float]:
    """Write weights, SID table, index and labels, together (one transaction); the labels' quality."""
    with ws.transaction() as tx:
        checkpoint.save(sid_dir(ws) / "rqvae.safetensors", model, cfg, kind="cq-sid", tx=tx, **meta)
        return write_table(ws, cfg, product_ids, sids, rqvae=lineage.fingerprint(tx.staged[-1][0]), tx=tx)


def write_table(ws: Workspace, cfg: CQSIDConfig, product_ids, sids: np.ndarray, rqvae: str | None = None,
                tx=None) -> dict[str, float]:
    """The SID table, then the index and the cluster labels made from it, together; each records what it
    was made from. Returns the labels' quality (`labels.label_quality`) for the caller's run."""
    if tx is None:
        with ws.transaction() as tx:
            return write_table(ws, cfg, product_ids, sids, rqvae, tx)
    rqvae = rqvae or lineage.fingerprint(sid_dir(ws) / "rqvae.safetensors")
    made_from = lineage.encode({**lineage.as_read(ws, lineage.tables(ws, ["products"])), "rqvae": rqvae})
    cols = sid_columns(cfg.model.levels, cfg.mode)
    sids = np.asarray(sids, np.int32)
    table = pa.table({"product_id": pa.array(product_ids, pa.string()), **{c: pa.array(sids[:, i]) for i, c in enumerate(cols)}})
    table = table.replace_schema_metadata({"lineage": made_from})
    atomic_write(sid_dir(ws) / "sids.parquet", lambda tmp: pq.write_table(table, tmp, compression="zstd"), tx)
    sids_fp = lineage.fingerprint(tx.staged[-1][0])
    SIDIndex.from_codes(sids, cfg.model.codebook_sizes).save(sid_dir(ws) / "index.parquet", tx,
                                                             lineage=lineage.encode({"sids": sids_fp}))
    made = labels.compute(ws.table("products"), table.to_pandas(), cfg.model.levels)
    arrow = pa.Table.from_pandas(made, preserve_index=False).replace_schema_metadata({"lineage": lineage.encode({"sids": sids_fp})})
    atomic_write(sid_dir(ws) / "labels.parquet", lambda tmp: pq.write_table(arrow, tmp, compression="zstd"), tx)
    return labels.label_quality(made)


def load_labels(ws: Workspace) -> pd.DataFrame:
    """The cluster labels of the current SID table (`workbench.sid.labels`), indexed by prefix ("49",
    "49-0", "49-0-4"). Stored with the SIDs; computed here, not stored, for a workspace whose SIDs
    predate them."""
    path = sid_dir(ws) / "labels.parquet"
    sids_fp = lineage.fingerprint(sid_dir(ws) / "sids.parquet")
    if path.exists():
        t = pq.read_table(path)
        if lineage.decode((t.schema.metadata or {}).get(b"lineage")).get("sids") == sids_fp:
            return t.to_pandas().set_index("prefix")
    sids = load_sids(ws)
    levels = len([c for c in sids.columns if c.startswith("sid_")])
    return labels.compute(ws.table("products"), sids, levels).set_index("prefix")


def write_map(ws: Workspace, embedder, points: int = smap.POINTS, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Fit and store the Codebooks map of the current SID table (`workbench.sid.map`)."""
    load_sids(ws)  # the map is of these SIDs: refuse to draw one for a stale table
    fp = lineage.fingerprint(sid_dir(ws) / "sids.parquet")
    products = ws.table("products")
    vecs = embed_workspace(ws, embedder, ("products",), progress=progress)["products"]
    rows = smap.sample(len(products), points, seed)
    xy = smap.umap_2d(vecs[rows], seed)
    df = pd.DataFrame({"product_id": products["product_id"].to_numpy()[rows], "x": xy[:, 0], "y": xy[:, 1]})
    arrow = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(
        {"lineage": lineage.encode({"sids": fp}), "embedder": embedder.key, "seed": str(seed)})
    atomic_write(sid_dir(ws) / "map.parquet", lambda tmp: pq.write_table(arrow, tmp), None)
    return df


def load_map(ws: Workspace) -> pd.DataFrame:
    """The stored map (product_id, x, y); FileNotFoundError without one, StaleError when the SIDs changed since."""
    path = sid_dir(ws) / "map.parquet"
    if not path.exists():
        raise FileNotFoundError(f"workspace {ws.path} has no Codebooks map ({path}); draw one with `workbench sid map`")
    t = pq.read_table(path)
    lineage.check(str(path), lineage.decode((t.schema.metadata or {}).get(b"lineage")),
                  {"sids": lineage.fingerprint(sid_dir(ws) / "sids.parquet")}, "draw it again with `workbench sid map`")
    return t.to_pandas()


def load_model(ws: Workspace, device: str = "cpu") -> tuple[RQVAE, CQSIDConfig, dict]:
    path = sid_dir(ws) / "rqvae.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"workspace {ws.path} has no SID model ({path}); train one with `workbench sid train`")
    state, cfg, meta = checkpoint.load(path, CQSIDConfig, kind="cq-sid", device=device)
    lineage.check_split(lineage.decode(meta.get("lineage")), str(path), "train the SIDs again with `workbench sid train` "
                        "(then the generator: `workbench train --fresh`), or rebuild the workspace with `workbench demo`")
    model = RQVAE(cfg.model).to(device)
    checkpoint.load_into(model, state, path)
    model.eval()
    return model, cfg, meta


def load_sids(ws: Workspace, check: bool = True) -> pd.DataFrame:
    """The SID table. `check` (default): refuse one made for another catalog or RQ-VAE, one that does not
    cover every product exactly once, or an index made from another SID table (`sid assign` reads the
    table unchecked: bringing it up to date with the catalog is its job)."""
    path = sid_dir(ws) / "sids.parquet"
    if not path.exists():
        raise FileNotFoundError(f"workspace {ws.path} has no SID table ({path}); train one with `workbench sid train`")
    try:
        data = path.read_bytes()  # one read: the table parsed is the one fingerprinted (`lineage.reading`)
        t = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise checkpoint.CheckpointError(f"{path}: not a readable SID table ({e}); rebuild it with `workbench sid train`") from e
    df = t.to_pandas()
    recorded = lineage.decode((t.schema.metadata or {}).get(b"lineage"))
    if ws.reads:
        ws.note("sids", digest([data]))
        if "rqvae" in recorded:
            ws.note("rqvae", recorded["rqvae"])
    if not check:
        return df
    current = {**lineage.tables(ws, ["products"]), "rqvae": lineage.fingerprint(sid_dir(ws) / "rqvae.safetensors")}
    lineage.check(str(path), {k: v for k, v in recorded.items() if k == "rqvae"}, current,
                  "the SID model was replaced without its table: rebuild both with `workbench sid train`")
    lineage.check(str(path), {k: v for k, v in recorded.items() if k == "products"}, current,
                  "the catalog changed since: give new products SIDs with `workbench sid assign`, or retrain with `workbench sid train`")
    products = ws.table("products")["product_id"]
    dup = df["product_id"].duplicated()
    missing = ~products.isin(df["product_id"])
    extra = ~df["product_id"].isin(products)
    if dup.any() or missing.any() or extra.any():
        raise lineage.StaleError(
            f"{path}: the SID table does not cover the catalog once per product ({int(missing.sum()):,} of {len(products):,} "
            f"products without a SID{', e.g. ' + repr(products[missing].iloc[0]) if missing.any() else ''}; {int(extra.sum()):,} "
            f"unknown products; {int(dup.sum()):,} duplicates); rebuild it with `workbench sid assign` or `workbench sid train`")
    ipath = sid_dir(ws) / "index.parquet"
    if ipath.exists():
        made_from = lineage.decode((pq.read_schema(ipath).metadata or {}).get(b"lineage"))
        lineage.check(str(ipath), made_from, {"sids": lineage.fingerprint(path)}, "rebuild it with `workbench sid assign`")
    return df


# workspace-level operations (the `workbench sid ...` verbs) -------------------------------------------
@lineage.reads
def train_workspace(ws: Workspace, cfg: CQSIDConfig, embedder, device: str = "cpu", progress: bool = True) -> dict:
    """Train CQ-SID on the workspace, write weights, SID table and index; log the run. Returns stats.

    Under torchrun every rank trains (data-parallel, see `cqsid.train`); rank 0 embeds first (the
    others then read its cache), and alone logs and writes. Other ranks return {} once it has."""
    with dist.main_first():
        data = workspace_data(ws, embedder, progress and dist.is_main())
    if not dist.is_main():
        train(data, cfg, device, progress=False)
        dist.barrier()
        return {}
    with ws.logbook().run("sid-train", {"cqsid": cfg, "embedder": embedder.key, "device": device, "processes": dist.world()},
                          seed=cfg.seed, name=f"sid-train {cfg.variant} {cfg.mode}") as run:
        model = train(data, cfg, device, run=run, progress=progress)
        codes = assign_codes(model, data.x, device)
        sids = np.column_stack([codes, dedup(codes)]) if cfg.mode == "unique" else codes
        quality = write_sids(ws, model, cfg, data.product_ids, sids, embedder=embedder.key, run_id=run.run_id,
                             lineage={"split": splits.SPLIT})
        stats = {**evaluate(model, data, cfg, device, codes=codes), "labels": quality}
        log_stats(run, stats, cfg)
    dist.barrier()
    return stats


def log_stats(run, stats: dict, cfg: CQSIDConfig, dataset: str = "catalog") -> None:
    for name, value in flat_stats(stats).items():
        run.log_eval(name, value, dataset=dataset, method=f"{cfg.variant}/{cfg.mode}", stage="sid")


@lineage.reads
def assign_new(ws: Workspace, embedder, device: str = "cpu", progress: bool = True) -> dict:
    """SIDs for products that have none yet, and afresh for products whose content changed (none for
    products gone from the catalog), no retraining.

    Every kept product's current text is encoded again (the embedding cache makes unchanged texts free):
    a product whose text now maps to another cluster than its stored SID is assigned again, like a new
    one, so an import that changed titles under the same ids (`data import --replace`) never leaves a
    stale SID looking current. Returns counts: new products, changed ones (assigned again), how many of
    both landed in an existing cluster, removed products, SIDs before and after.
    """
    model, cfg, meta = load_model(ws, device)
    if meta.get("embedder") != embedder.key:
        raise ValueError(f"the SID model was trained on {meta.get('embedder')!r} embeddings, not {embedder.key!r}; "
                         f"pass --embedder accordingly")
    old = load_sids(ws, check=False)
    products = ws.table("products")
    levels = sid_columns(cfg.model.levels, "cluster")
    keep = old[old["product_id"].isin(products["product_id"])].reset_index(drop=True)
    changed = np.zeros(len(keep), bool)
    if len(keep):  # what the model says of each kept product's text today
        now = products.set_index("product_id").loc[keep["product_id"]].reset_index()
        x = workspace_data(ws, embedder, progress, products=now).x
        changed = (assign_codes(model, x, device, progress=progress) != keep[levels].to_numpy()).any(1)
    removed, before = len(old) - len(keep), len(keep.drop_duplicates(levels))
    keep = keep[~changed]
    new = products[~products["product_id"].isin(keep["product_id"])]
    counts = {"new": len(new) - int(changed.sum()), "changed": int(changed.sum()), "removed": removed, "sids_before": before}
    if len(new):
        data = workspace_data(ws, embedder, progress, products=new.reset_index(drop=True))
        codes = assign_codes(model, data.x, device, progress=progress)
        known = SIDIndex.from_codes(keep[levels].to_numpy(), cfg.model.codebook_sizes).contains(codes) if len(keep) else np.zeros(len(codes), bool)
        counts["into_existing"] = int(known.sum())
        if cfg.mode == "unique":  # continue numbering after the cluster's current members
            have = keep.groupby(levels)["dedup"].max() + 1
            start = pd.MultiIndex.from_arrays(codes.T).map(lambda k: have.get(k, 0)).to_numpy()
            codes = np.column_stack([codes, dedup(codes, start)])
        new_rows = pd.DataFrame({"product_id": data.product_ids, **dict(zip(sid_columns(cfg.model.levels, cfg.mode), codes.T))})
        keep = pd.concat([keep, new_rows], ignore_index=True)
    else:
        counts["into_existing"] = 0
    counts["sids_after"] = len(keep.drop_duplicates(levels))
    with ws.logbook().run("sid-assign", {"embedder": embedder.key, "device": device}) as run:  # the write is part of the run
        quality = write_table(ws, cfg, keep["product_id"].to_numpy(), keep[sid_columns(cfg.model.levels, cfg.mode)].to_numpy())
        run.log(0, stage="sid", **counts, **quality)
    return counts


def workspace_stats(ws: Workspace) -> dict:
    """Usage, cluster sizes, purity and coherence of the workspace's current SID table."""
    _, cfg, _ = checkpoint.load(sid_dir(ws) / "rqvae.safetensors", CQSIDConfig, kind="cq-sid")
    sids = load_sids(ws)
    products = ws.table("products").merge(sids[["product_id"]], on="product_id")
    sids = sids.set_index("product_id").loc[products["product_id"]].reset_index()
    codes = sids[sid_columns(cfg.model.levels, "cluster")].to_numpy()
    out = {"config": cfg, "usage": metrics.usage(codes, cfg.model.codebook_sizes), "clusters": metrics.cluster_sizes(codes)}
    if cfg.mode == "unique":
        out["unique_ids"] = metrics.cluster_sizes(sids[sid_columns(cfg.model.levels, "unique")].to_numpy())
    if products["category"].notna().any():
        out["purity"] = metrics.category_purity(codes, products["category"])
    if ws.has("queries"):
        pids, qids = pd.Index(products["product_id"]), pd.Index(ws.table("queries")["query_id"])
        pairs = relevance_pairs(ws, pids, qids)
        if len(pairs):
            out["coherence"] = metrics.query_coherence(codes, pairs)
            held = relevance_pairs(ws, pids, qids, "validation")
            out["reach"] = metrics.answer_reach(codes, pairs["product"].to_numpy(), held["product"].to_numpy())
    out["labels"] = labels.label_quality(load_labels(ws).reset_index())
    return out


def workspace_embedder(ws) -> str:
    """The embedder name (`minilm`, `hashing-64`, `tuned:<its dir>`) the workspace's SIDs were built
    with. SIDs built on the fine-tuned encoder are refused once it has been fine-tuned again: the
    vectors they quantised are no longer the ones the encoder gives."""
    path = ws.path / "sid" / "rqvae.safetensors"
    key = str(checkpoint.metadata(path).get("embedder", "")).strip('"')
    if key.startswith("hashing-"):
        return "-".join(key.split("-")[:2])
    if key.startswith("tuned-"):
        now = get_embedder("tuned", root=ws.path).key
        if now != key:
            raise lineage.StaleError(f"{path} was built on the fine-tuned encoder {key}, and {ws.path / TUNED} is now "
                                     f"{now}: rebuild the SIDs with `workbench sid train --embedder tuned`")
        return f"tuned:{ws.path / TUNED}"
    return "minilm"
