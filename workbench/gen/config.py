"""The generator's settings: the model (`GenConfig`, `gen/model.py`), one stage's optimisation
(`TrainConfig`, `gen/train.py`), the curriculum (`StagesConfig`, `gen/stages.py`) and the channel it
serves (`ChannelConfig`, `gen/retrieve.py`). Frozen dataclasses without torch, so a recipe or a CLI
option can name them without loading a model; saved into every generator checkpoint and run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from workbench.config import positive
from workbench.data.relevance import WEIGHTS
from workbench.embed import check_dtype

BACKBONES = ("scratch", "minilm", "sentence")  # the generator's encoders (gen/model.py)
TEACHERS = ("bm25", "dense", "hybrid")  # retrievers whose rankings stage 2 can distil (gen/distill.py)
STAGES = {1: "items", 2: "queries", 3: "personal"}  # the curriculum's supervised stages (stage 4 is rl/)
ORDERS = ("cosine", "popularity")  # how the channel orders its candidates (gen/retrieve.py)


@dataclass(frozen=True)
class GenConfig:
    sid_vocab: tuple[int, ...]  # codes per SID position (the SID index's vocab)
    text_vocab: int  # tokenizer size
    tokenizer: str = ""  # tokenizer key, checked when the model meets a tokenizer
    backbone: str = "scratch"  # scratch | minilm | sentence
    d_model: int = 128  # model width (1.4M parameters at the demo's vocabularies, most in embeddings)
    n_heads: int = 4  # attention heads
    enc_layers: int = 2  # encoder layers (scratch only; minilm brings its own 6)
    dec_layers: int = 2  # decoder layers
    d_ff: int = 512  # feed-forward width
    dropout: float = 0.1  # on residual branches (attention weights are not dropped: slow on CPU, little gain)
    max_len: int = 32  # text tokens kept per input
    context_vocab: int = 0  # ids of optional context tokens (users, history); 0 = none
    context_brands: bool = False  # context: each history product's brand as a token too (StagesConfig.history_brands)
    embed_dim: int = 384  # sentence backbone: width of the frozen sentence embedding
    slots: int = 4  # sentence backbone: memory vectors the embedding is projected into
    tree: tuple[int, ...] = ()  # sentence backbone: nodes per SID level of the tree head (gen/tree.py); empty: none

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if min(self.embed_dim, self.slots, self.d_model, self.n_heads, self.enc_layers, self.dec_layers, self.d_ff, self.max_len) < 1:
            raise ValueError(f"embed_dim, slots, d_model, n_heads, enc_layers, dec_layers, d_ff and max_len must be >= 1, got "
                             f"{self.embed_dim}, {self.slots}, {self.d_model}, {self.n_heads}, {self.enc_layers}, {self.dec_layers}, "
                             f"{self.d_ff}, {self.max_len}")
        if not 0 <= self.dropout < 1:  # also refuses NaN
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.sid_vocab or min(self.sid_vocab) < 1:
            raise ValueError(f"sid_vocab must list codes per level (all >= 1), got {self.sid_vocab}")
        if self.tree and (self.backbone != "sentence" or len(self.tree) != len(self.sid_vocab) or min(self.tree) < 1):
            raise ValueError(f"the tree head needs the sentence backbone and a node count per SID level, got "
                             f"{self.backbone!r}, {self.tree} for {len(self.sid_vocab)} levels")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")

    @property
    def levels(self) -> int:
        return len(self.sid_vocab)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256  # examples per step (the global batch under torchrun)
    lr: float = 1e-3  # AdamW learning rate (peak, after warm-up)
    encoder_lr: float = 1e-4  # for a pretrained encoder (and the tree head's centroids); a scratch encoder uses lr
    weight_decay: float = 0.01
    warmup: float = 0.05  # share of all steps
    label_smoothing: float = 0.1
    clip: float = 1.0
    seed: int = 0  # random seed

    def __post_init__(self):
        positive(self, "epochs", "batch_size", "lr", "encoder_lr", "clip")
        if not (0 <= self.warmup < 1 and 0 <= self.label_smoothing < 1 and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"TrainConfig: warmup and label_smoothing must be in [0, 1) and weight_decay a finite number >= 0, "
                             f"got {self.warmup!r}, {self.label_smoothing!r}, {self.weight_decay!r}")


@dataclass(frozen=True)
class TargetWeights:
    """The weight of each source that makes a training query's target SIDs (stage 2: summed per product;
    stage 3: each logged purchase's and click's example; 0 drops the source): what the generator is
    taught to retrieve."""

    purchased: float = WEIGHTS["purchased"]  # stages 2 and 3: a logged purchase's weight as a target of its query
    clicked: float = WEIGHTS["clicked"]  # stages 2 and 3: a logged click's weight (click-bait draws clicks without purchases)
    judged: float = WEIGHTS["judged"]  # stage 2: the weight of a judgment at or above the relevance threshold

    def __post_init__(self):
        w = self.weights()
        if any(not math.isfinite(v) or v < 0 for v in w.values()) or not any(w.values()):
            raise ValueError(f"target weights must be finite, >= 0 and not all 0, got {w}")

    def weights(self) -> dict[str, float]:
        """Source -> weight, as `data.relevance` takes them."""
        return asdict(self)


@dataclass(frozen=True)
class StagesConfig:
    """A curriculum: which stages, how long each, the model they train and how they train it."""

    stages: tuple[int, ...] = (1, 2, 3)  # 1 items, 2 queries, 3 personal (user + history + query); each starts from the previous one
    epochs: tuple[int, ...] = (20, 12, 6)  # epochs per stage planned, or per stage 1-3, or one number for all; the small items stage needs more passes
    backbone: str = "scratch"  # encoder: scratch, all-MiniLM-L6-v2's BERT fine-tuned (minilm), or its frozen sentence embedding (sentence)
    tree: bool = False  # sentence backbone: level heads start as a search of the SID tree by cosine to each cluster's mean embedding (gen/tree.py)
    model: dict = field(default_factory=dict)  # GenConfig fields to override (d_model, n_heads, enc_layers, ...); empty: its defaults
    train: TrainConfig = field(default_factory=TrainConfig)
    replay: float = 0.2  # examples replayed from earlier stages, as a share of the stage's own
    pseudo: int = 0  # stage 1 also learns this many pseudo-queries per product -> its SID (0: none)
    targets: TargetWeights = field(default_factory=TargetWeights)  # stage 2: the sources of a training query's target SIDs, weighted
    distill: str = ""  # stage 2 also learns a teacher's ranking (bm25, dense or hybrid) of the training queries and pseudo-queries
    distill_k: int = 10  # the teacher's top products per pseudo-query
    distill_query_k: int = 10  # the teacher's top products per training query (the text test queries resemble; deeper lists teach the beam's tail)
    history: int = 5  # a user's latest clicks before the search, given to stage 3 as context
    history_brands: bool = False  # stage 3: also each of those products' brand as a context token (needs products.brand)
    eval_width: int = 32  # beam width of the per-epoch validation Recall@K

    def __post_init__(self):
        st = tuple(self.stages)
        if not st or any(s not in STAGES for s in st) or list(st) != sorted(set(st)):
            raise ValueError(f"stages must be increasing and among {sorted(STAGES)} (stage 4 is `workbench rl`), got {st}")
        ep = tuple(self.epochs)
        if len(ep) == 1:
            ep = ep * len(st)
        elif len(ep) == len(STAGES) and len(st) < len(STAGES):  # one per stage 1-3: take the planned stages'
            ep = tuple(ep[s - 1] for s in st)
        if len(ep) != len(st):
            raise ValueError(f"{len(ep)} epoch counts for {len(st)} stages")
        if self.distill not in ("", *TEACHERS) or min(self.distill_k, self.distill_query_k) < 1:
            raise ValueError(f"distill must be one of {TEACHERS} (or empty: none) with distill_k and distill_query_k >= 1, got "
                             f"{self.distill!r}, {self.distill_k}, {self.distill_query_k}")
        if self.tree and self.backbone != "sentence":
            raise ValueError(f"the tree head needs the sentence backbone, got {self.backbone!r}")
        if min(ep) < 1 or self.pseudo < 0 or self.replay < 0 or self.history < 1 or self.eval_width < 1:
            raise ValueError(f"epochs >= 1, pseudo >= 0, replay >= 0, history >= 1 and eval_width >= 1 needed, got {ep}, "
                             f"{self.pseudo}, {self.replay}, {self.history}, {self.eval_width}")
        object.__setattr__(self, "stages", st)
        object.__setattr__(self, "epochs", ep)


@dataclass(frozen=True)
class ChannelConfig:
    """The generator as a recall channel: the product list it hands the ranker."""

    budget: int = 300  # candidate set: the decoded SIDs' products in beam order, cut at this many
    order: str = "cosine"  # products of the candidate set: cosine (to the query) or popularity (within each SID)
    logp_weight: float = 0.0  # cosine order: + this x the SID's log-probability
    popularity_weight: float = 0.0  # cosine order: + this x log(1 + the product's purchases x 2 + clicks on training queries)
    pool: int = 16  # cosine order: score the beam's first pool x budget products and keep the best budget (1: the first budget, in beam order)
    query_dtype: str = "float32"  # cosine order: the query encoder computes in this (bfloat16: faster on CPUs with AVX512-BF16)
    compact: int = 0  # cosine order: product-quantise the product vectors into this many one-byte codes each (gen/compact.py; 0: float32, 4 x d bytes)
    user_gate: float = 1.0  # a user's search: the user term's weight, 0 (decode as anonymous) to 1 (as trained); choose it on validation

    def __post_init__(self):
        if not 0.0 <= self.user_gate <= 1.0:  # also refuses NaN
            raise ValueError(f"the user gate must lie in [0, 1], got {self.user_gate!r}")
        if self.budget < 1:
            raise ValueError(f"the channel's budget must be >= 1 product, got {self.budget}")
        if self.pool < 1:
            raise ValueError(f"the channel's pool must be >= 1 (x budget), got {self.pool}")
        if self.compact < 0:
            raise ValueError(f"compact is a number of one-byte codes per product (0: float32 vectors), got {self.compact}")
        for name in ("logp_weight", "popularity_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        check_dtype(self.query_dtype)
