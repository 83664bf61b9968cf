"""Batch jobs over catalogs larger than memory: embed, assign SIDs, decode offline, chunk by chunk.

Each job reads its input Parquet file in chunks of rows (`pyarrow` record batches), processes a chunk,
appends it to the output and drops it, so memory is bounded by the chunk size and the models, not by
the catalog: a 1,000,000-product job holds one chunk at a time. The output is written to a temporary
file and renamed when complete: a killed job leaves no half-written output (and the next job on the same
output removes the killed one's temporary file).

Under torchrun (`workbench.dist`) the chunks are dealt out round-robin: rank r processes chunks r,
r + N, ... into a part file of its own (one row group per chunk), and rank 0 then merges the parts in
chunk order into the output, one chunk at a time. The output is the one-process output; every rank
reads the whole input (reading is cheap next to embedding or decoding) but processes only its share.

- `embed`: products (product_id + text columns) -> product_id, vector (float32 list).
- `sids`: products or embeddings -> product_id, sid_1..sid_L (the workspace's SID model; cluster codes).
- `decode`: any table with a text column (product titles, a query log) -> the generator's top SIDs per
  row with their log-probabilities, through the trie-constrained beam search.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from workbench import dist
from workbench.embed import product_texts
from workbench.sid.cqsid import assign
from workbench.workspace import atomic_write, clean_temps


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB: the kernel's high-water mark of this program (VmHWM,
    KiB). getrusage's ru_maxrss is the fallback where /proc is absent: it carries the parent's RSS at the fork
    into a process started by fork + exec (a bench's child process would report at least its parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """The input file, with a clear error when it is missing or not Parquet."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no input file {path}")
    try:
        return pq.ParquetFile(path, pre_buffer=False)  # pre-buffering keeps read-ahead memory that grows with the file
    except Exception as e:  # pyarrow raises ArrowInvalid for a file that is not Parquet
        raise ValueError(f"{path}: not a Parquet file ({e})") from e


def read_chunks(path: str | Path, columns: list[str], chunk: int) -> Iterator[pa.RecordBatch]:
    """The input in Arrow batches of `chunk` rows, only `columns`; a clear error for a missing file or column."""
    pf = open_parquet(path)
    missing = [c for c in columns if c not in pf.schema_arrow.names]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; it has {pf.schema_arrow.names}")
    yield from pf.iter_batches(batch_size=chunk, columns=columns)


def stream(src: str | Path, dst: str | Path, columns: list[str], fn: Callable[[pa.RecordBatch], pa.Table],
           chunk: int = 65_536, desc: str = "batch", progress: bool = True) -> dict:
    """Apply `fn` to every chunk of `src` and write the results to `dst` (atomically); returns rows,
    seconds, rows_per_s and the peak memory of the process (under torchrun: the largest of any rank)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    total = open_parquet(src).metadata.num_rows
    if total == 0:
        raise ValueError(f"{src}: no rows")
    n, me, dst = dist.world(), dist.rank(), Path(dst)
    chunks, rows, t0 = -(-total // chunk), 0, time.perf_counter()
    if dist.is_main():  # a killed earlier job's temporary output
        clean_temps(dst.parent, f".{dst.name}.*.tmp", recursive=False)

    def write(tmp: Path) -> None:
        nonlocal rows
        writer = None
        try:
            with tqdm(total=-(-total // n), desc=desc, unit="row", unit_scale=True, disable=not progress or not dist.is_main()) as bar:
                for i, rb in enumerate(read_chunks(src, columns, chunk)):
                    if i % n != me:  # another rank's chunk
                        continue
                    table = fn(rb)
                    writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
                    writer.write_table(table, row_group_size=max(len(table), 1))  # one row group per chunk
                    rows += rb.num_rows
                    bar.update(rb.num_rows)
        finally:
            if writer is not None:
                writer.close()

    if n == 1 or me < chunks:  # a rank with no chunk writes no part
        atomic_write(dst if n == 1 else part_path(dst, me, n), write)
    if n > 1:
        dist.barrier()
        if dist.is_main():
            merge_parts(dst, n, chunks)
        dist.barrier()
        rows = int(dist.all_sum(float(rows)))
    secs = time.perf_counter() - t0
    peak = max(dist.gather_objects(peak_rss_mib()))
    return {"rows": rows, "seconds": secs, "rows_per_s": rows / max(secs, 1e-9), "peak_rss_mib": peak}


def part_path(dst: Path, r: int, n: int) -> Path:
    """Where rank r of n writes its chunks of `dst` (a hidden file beside it)."""
    return dst.with_name(f".{dst.name}.part{r}-of-{n}")


def merge_parts(dst: Path, n: int, chunks: int) -> None:
    """The N ranks' part files of `dst` joined in chunk order (chunk i is row group i // N of part i % N),
    written atomically; the parts are removed."""
    parts = [part_path(dst, r, n) for r in range(n)]
    files = [pq.ParquetFile(p) if r < chunks else None for r, p in enumerate(parts)]

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, files[0].schema_arrow, compression="zstd") as writer:
            for i in range(chunks):
                writer.write_table(files[i % n].read_row_group(i // n))

    atomic_write(dst, write)
    for p in parts:
        p.unlink(missing_ok=True)


TEXT_COLUMNS = ["product_id", "title", "brand", "category", "description"]


def product_columns(path: str | Path) -> list[str]:
    """The product text columns the input has (product_id and title are required)."""
    have = open_parquet(path).schema_arrow.names
    return [c for c in TEXT_COLUMNS if c in have or c in ("product_id", "title")]


def embed_fn(embedder) -> Callable[[pa.RecordBatch], pa.Table]:
    def fn(rb: pa.RecordBatch) -> pa.Table:
        df = rb.to_pandas()
        x = np.ascontiguousarray(embedder.encode(product_texts(df)), dtype=np.float32)  # (B, D)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
        return pa.table({"product_id": pa.array(df["product_id"].astype(str)), "vector": vec})

    return fn


def vectors_of(rb: pa.RecordBatch | pa.Table) -> np.ndarray:
    """(B, D) float32 from a `vector` column (a fixed-size list), without a Python object per row."""
    col = rb.column("vector")
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return np.array(col.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(len(col), -1)  # (B, D), writable


def sids_fn(model, embedder=None, device: str = "cpu") -> Callable[[pa.RecordBatch], pa.Table]:
    """Codes of each chunk: from its `vector` column, or from its text when an embedder is given."""
    def fn(rb: pa.RecordBatch) -> pa.Table:
        if embedder is None:
            x = vectors_of(rb)
        else:
            x = np.asarray(embedder.encode(product_texts(rb.to_pandas())), np.float32)
        codes = assign(model, x, device)  # (B, L)
        return pa.table({"product_id": rb.column("product_id").cast(pa.string()),
                         **{f"sid_{i + 1}": pa.array(codes[:, i]) for i in range(codes.shape[1])}})

    return fn


def decode_fn(retriever, column: str, width: int, top: int = 5, batch_size: int = 256, channel=None,
              products: int = 0) -> Callable[[pa.RecordBatch], pa.Table]:
    """The top `top` SIDs (as 'a-b-c' strings) and log-probabilities the generator decodes for each row's
    text; with `products` > 0 also the channel's first `products` products (`gen.retrieve.Channel`:
    the decoded SIDs' products cut at its budget, ranked inside)."""
    if products > 0 and channel is None:
        raise ValueError("products > 0 needs the channel that ranks them")

    def fn(rb: pa.RecordBatch) -> pa.Table:
        df = rb.to_pandas()
        texts = df[column].fillna("").astype(str).tolist()
        texts = [t if t.strip() else "[empty]" for t in texts]  # an empty text still gets a row
        hits = retriever.search(texts, width, batch_size=batch_size)
        sids = [["-".join(map(str, h.sid)) for h in hs[:top]] for hs in hits]
        logp = [[float(h.logp) for h in hs[:top]] for hs in hits]
        keep = {c: pa.array(df[c].astype(str)) for c in df.columns if c != column}
        out = {**keep, column: pa.array(df[column].astype(str)), "sids": pa.array(sids, pa.list_(pa.string())),
               "logp": pa.array(logp, pa.list_(pa.float32()))}
        if products > 0:
            out["products"] = pa.array([g[:products] for g in channel(texts, hits)], pa.list_(pa.string()))
        return pa.table(out)

    return fn


def tile_catalog(products: pd.DataFrame, n: int, dst: str | Path, chunk: int = 100_000) -> Path:
    """A synthetic catalog of `n` products written chunk by chunk: the given products repeated, each copy
    with its own id and a variant suffix in the title (so texts differ). For scale benchmarks."""
    cols = [c for c in TEXT_COLUMNS if c in products.columns]
    base = products[cols].reset_index(drop=True)

    def write(tmp: Path) -> None:
        writer = None
        for s in range(0, n, chunk):
            idx = np.arange(s, min(s + chunk, n))
            df = base.iloc[idx % len(base)].reset_index(drop=True)
            df["product_id"] = [f"T{i:08d}" for i in idx]
            df["title"] = df["title"].astype(str) + [f", variant {i // len(base)}" for i in idx]
            table = pa.Table.from_pandas(df, preserve_index=False)
            writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
        writer.close()

    atomic_write(Path(dst), write)
    return Path(dst)
