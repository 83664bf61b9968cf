"""The SID tokenizer's settings: the RQ-VAE's shape (`RQVAEConfig`, the model in `sid/rqvae.py`) and how
CQ-SID trains it (`CQSIDConfig`, the constraints in `sid/cqsid.py`). Frozen dataclasses without torch,
so a recipe or a CLI option can name them without loading a model; saved into every SID checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.config import positive

MODES = ("cluster", "unique")  # cluster IDs (the paper's) or unique IDs with a dedup level (TIGER's)


@dataclass(frozen=True)
class RQVAEConfig:
    input_dim: int = 384
    hidden: tuple[int, ...] = (512, 256)
    latent_dim: int = 64  # width of the latent the codebooks quantise
    codebook_sizes: tuple[int, ...] = (256, 256, 256)  # K per level; L = len
    beta: float = 0.25  # commitment weight
    rotation_trick: bool = False  # rotation trick instead of straight-through gradients

    def __post_init__(self):
        if not 1 <= self.levels <= 8:
            raise ValueError(f"levels (L) must be in 1..8, got {self.levels}")
        if not all(2 <= k <= 65536 for k in self.codebook_sizes):
            raise ValueError(f"codebook sizes (K) must be in 2..65536, got {self.codebook_sizes}")
        if self.input_dim < 1 or self.latent_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(f"dimensions must be >= 1: input_dim={self.input_dim}, hidden={self.hidden}, latent_dim={self.latent_dim}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)


@dataclass(frozen=True)
class CQSIDConfig:
    model: RQVAEConfig = field(default_factory=RQVAEConfig)
    epochs: int = 80  # passes over the products
    batch_size: int = 512  # products per step (the global batch under torchrun)
    lr: float = 1e-3  # Adam learning rate
    category_weight: float = 1.0  # 0 turns the category constraint off
    category_levels: tuple[int, ...] = (1, 2)  # prefix lengths the constraint applies to
    category_depth: int | None = None  # categories cut at this depth (None: the full path)
    query_weight: float = 1.0  # 0 turns the query constraint off
    query_batch: int = 256
    tau_code: float = 0.1
    tau_query: float = 0.1
    restart_until: float = 0.8  # restart dead codes after each epoch until this share of epochs
    eval_every: int = 1  # epochs between full evaluations (unique rate, purity, coherence) in the logbook
    mode: str = "cluster"  # cluster IDs (the paper's), or unique IDs with a dedup token (TIGER's)
    seed: int = 0  # random seed

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        positive(self, "lr", "tau_code", "tau_query")
        if self.epochs < 1 or self.batch_size < 2 or self.query_batch < 2:
            raise ValueError(f"epochs >= 1, batch_size >= 2 and query_batch >= 2 needed, got {self.epochs}, "
                             f"{self.batch_size}, {self.query_batch}")
        if self.category_weight < 0 or self.query_weight < 0:
            raise ValueError("constraint weights must be >= 0")
        bad = [lvl for lvl in self.category_levels if not 1 <= lvl <= self.model.levels]
        if bad:
            raise ValueError(f"category_levels {bad} outside 1..{self.model.levels}")

    @property
    def variant(self) -> str:
        c, q = self.category_weight > 0, self.query_weight > 0
        return {(False, False): "plain", (True, False): "+category", (False, True): "+query", (True, True): "cq-sid"}[(c, q)]
