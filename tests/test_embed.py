import numpy as np
import pytest

from workbench.embed import EmbeddingCache, Hashing, MiniLM, embed, embed_workspace, get_embedder


class Counting:
    """Wraps an embedder and counts the texts it was asked to encode."""

    def __init__(self, inner):
        self.inner, self.key, self.dim, self.seen = inner, inner.key, inner.dim, []

    def encode(self, texts, **kw):
        self.seen.extend(texts)
        return self.inner.encode(texts)


def cos(a, b):
    return float(a @ b)


def test_hashing_is_deterministic_unit_norm_and_lexical():
    e = Hashing(128)
    v = e.encode(["red mug", "red mug", "red cup", "garden hose", ""])
    assert v.shape == (5, 128) and v.dtype == np.float32
    np.testing.assert_array_equal(v[0], v[1])
    np.testing.assert_allclose(np.linalg.norm(v[:4], axis=1), 1, rtol=1e-5)
    assert not v[4].any()  # empty text: zero vector
    assert cos(v[0], v[2]) > cos(v[0], v[3])
    np.testing.assert_array_equal(Hashing(128).encode(["red mug"])[0], v[0])  # stable across instances


def test_cache_encodes_each_text_once_and_survives_restart(tmp_path):
    texts = ["a red mug", "a blue mug", "a red mug", "tea pot"]
    c1 = Counting(Hashing(64))
    v1 = embed(texts, c1, tmp_path, progress=False)
    assert sorted(c1.seen) == ["a blue mug", "a red mug", "tea pot"]  # duplicates encoded once
    c2 = Counting(Hashing(64))  # a new process, same cache directory
    v2 = embed(texts + ["new text"], c2, tmp_path, progress=False)
    assert c2.seen == ["new text"]
    np.testing.assert_array_equal(v1, v2[:4])
    np.testing.assert_array_equal(v1[0], v1[2])
    assert len(EmbeddingCache(tmp_path, c1.key, 64)) == 4


def test_cache_is_per_model_and_chunks_are_kept(tmp_path):
    embed(["x", "y", "z"], Hashing(64), tmp_path, chunk=1, progress=False)
    assert len(list((tmp_path / "hashing-64-v1").glob("shard-*.parquet"))) == 3  # an interrupted run keeps chunks
    c = Counting(Hashing(32))
    embed(["x"], c, tmp_path, progress=False)
    assert c.seen == ["x"]  # another model's vectors are never reused


def test_cache_dimension_mismatch_is_an_error(tmp_path):
    embed(["x"], Hashing(64), tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds 64-d vectors, expected 32"):
        EmbeddingCache(tmp_path, "hashing-64-v1", 32).lookup([b"0" * 16])


def test_hashing_takes_the_query_dtype_and_computes_it_exactly():
    h = Hashing(64)
    np.testing.assert_array_equal(h.encode(["cordless drill"], dtype="bfloat16"), h.encode(["cordless drill"]))
    with pytest.raises(ValueError, match="query dtype must be one of"):
        h.encode(["x"], dtype="int8")


def test_get_embedder():
    assert get_embedder("hashing-32").dim == 32 and get_embedder("hashing").dim == 256
    with pytest.raises(ValueError, match="unknown embedder"):
        get_embedder("bert")
    with pytest.raises(ValueError, match="dim >= 8"):
        Hashing(2)


def test_embed_workspace_aligns_with_tables(sample_ws):
    vecs = embed_workspace(sample_ws, Hashing(64), progress=False)
    assert vecs["products"].shape == (3000, 64) and vecs["queries"].shape[0] == len(sample_ws.table("queries"))
    np.testing.assert_array_equal(vecs["products"][5], Hashing(64).encode([sample_ws.table("products")["title"][5]])[0])


def test_minilm_offline_real_weights():
    e = MiniLM("cpu")
    v = e.encode(["wireless headphones", "bluetooth headset", "dry dog food"])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1, rtol=1e-4)
    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2  # it knows language, not just letters
    assert e.encode([]).shape == (0, 384)
    low = e.encode(["wireless headphones", "bluetooth headset", "dry dog food"], dtype="bfloat16")  # queries at serving time
    assert low.dtype == np.float32 and (low * v).sum(1).min() > 0.999 and not np.array_equal(low, v)  # computed in bf16, near fp32
    with pytest.raises(ValueError, match="query dtype must be one of"):
        e.encode(["x"], dtype="float16")
