"""Stage 4's settings: the loss (`LossConfig`, `rl/grpo.py`), the reward's weights (`RewardConfig`,
`rl/rewards.py`), the ranker that judges (`RankerConfig`, `rl/ranker.py`) and the run (`RLConfig`,
`rl/train.py`). Frozen dataclasses without torch, so a recipe or a CLI option can name them without
loading a model; saved into every checkpoint and run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from workbench.config import positive

ALGOS = ("grpo", "eg-grpo")
SHAPINGS = ("luffy", "none")  # how a reference member's importance ratio is shaped
JUDGES = ("ranker", "oracle")  # who scores a SID's cluster
REWARD_TERMS = ("click", "purchase", "exposure", "valid", "gt")  # the reward's terms (`rl/rewards.py`), weighted by RewardConfig


@dataclass(frozen=True)
class LossConfig:
    clip: float = 0.2  # PPO clip range of the sampled members' ratio
    kl: float = 0.02  # weight of the KL to the stage-3 model
    ref_weight: float = 1.0  # weight of the reference members' surrogate
    shaping: str = "luffy"  # reference members' weight: LUFFY's pi / (pi + gamma), or none (ratio 1)
    gamma: float = 0.1  # LUFFY's gamma
    ref_floor: float | None = None  # EG-GRPO: a reference member's advantage is at least this (0: never pushed down; 1: always pulled up)

    def __post_init__(self):
        if self.shaping not in SHAPINGS:
            raise ValueError(f"shaping must be one of {SHAPINGS}, got {self.shaping!r}")
        if not (0 < self.clip < math.inf and 0 <= self.kl < math.inf and 0 < self.gamma < math.inf and 0 <= self.ref_weight < math.inf):
            raise ValueError(f"clip > 0, kl >= 0, gamma > 0 and ref_weight >= 0 needed (finite), got {self.clip}, {self.kl}, "
                             f"{self.gamma}, {self.ref_weight}")
        if self.ref_floor is not None and not 0 <= self.ref_floor <= 1:  # also refuses NaN
            raise ValueError(f"ref_floor is an advantage floor between 0 (never pushed down) and 1 (always pulled up), "
                             f"got {self.ref_floor}")


@dataclass(frozen=True)
class RewardConfig:
    click: float = 1.0
    purchase: float = 4.0
    exposure: float = 0.2
    valid: float = 1.0
    gt: float = 1.0
    slots: int = 3
    cap: int = 8
    max_products: int = 32  # products of a cluster the ranker scores (popular first)

    def weights(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in REWARD_TERMS}


@dataclass(frozen=True)
class RankerConfig:
    text_dim: int
    users: int
    products: int
    categories: int
    age_bands: int = 1
    regions: int = 1
    positions: int = 50
    d: int = 32
    hidden: int = 128
    embedder: str = "minilm"
    epochs: int = 4
    batch_size: int = 2048
    lr: float = 3e-3
    weight_decay: float = 1e-5
    seed: int = 0
    id_dropout: float = 0.0  # share of training impressions scored as a product never shown (0: every product has its own embedding only)

    def __post_init__(self):
        positive(self, "epochs", "batch_size", "lr")
        if not 0 <= self.id_dropout < 1:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")


@dataclass(frozen=True)
class RLConfig:
    algo: str = "eg-grpo"  # grpo, or eg-grpo (ground-truth reference members in every group)
    steps: int = 100  # optimisation steps
    prompts: int = 32  # searches per step (the global number under torchrun)
    group: int = 8  # SIDs sampled per search (G)
    refs: int = 1  # EG-GRPO: ground-truth members per group (R)
    temperature: float = 1.0  # sampling temperature of the groups
    inner: int = 2  # clipped updates per step on the same samples
    lr: float = 1e-4  # AdamW learning rate
    eval_every: int = 20  # steps between validation evaluations
    eval_width: int = 32  # beam width of the validation evaluations
    seed: int = 0  # random seed
    judge: str = "ranker"  # who scores a SID's cluster: the workspace's ranker, or (synthetic workspaces) the simulator's truth (oracle)
    loss: LossConfig = field(default_factory=LossConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.judge not in JUDGES:
            raise ValueError(f"judge must be one of {JUDGES}, got {self.judge!r}")
        if min(self.steps, self.prompts, self.group, self.inner, self.eval_every, self.eval_width) < 1 or self.refs < 0:
            raise ValueError("steps, prompts, group, inner, eval_every and eval_width must be >= 1 and refs >= 0, got "
                             f"{self.steps}, {self.prompts}, {self.group}, {self.inner}, {self.eval_every}, {self.eval_width}, {self.refs}")
        if self.group + (self.refs if self.algo == "eg-grpo" else 0) < 2:
            raise ValueError(f"a group of {self.group} sample(s){' and ' + str(self.refs) + ' reference(s)' if self.algo == 'eg-grpo' else ''} "
                             "has no advantage to learn from (each member is compared with the group's mean): --group 2 or more")
        positive(self, "lr", "temperature")
