"""Evaluation's settings: the harness (`EvalConfig`, `eval/harness.py`), the beam-width sweep
(`SweepConfig`, `eval/width.py`) and the simulated A/B (`ABConfig`, `eval/ab.py`). Frozen dataclasses
without torch, so a recipe or a CLI option can name them without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.ann import ANNConfig
from workbench.gen import names
from workbench.gen.config import ChannelConfig

METHODS = ("generative", "generative-tree", "generative-decoder", "oracle-sids", "oracle-sids+beam", "bm25", "dense", "dense-ann",
           "dense-tuned", "hybrid", "bm25+gen", "dense+gen", "hybrid+gen", "bm25-sids", "dense-sids", "hybrid-sids")  # what eval can compare
ON_REQUEST = ("generative-tree", "generative-decoder", "oracle-sids+beam", "dense-tuned", "bm25-sids", "dense-sids",
              "hybrid-sids")  # asked for by name: a tree head, a fine-tuned encoder, or studies of the SIDs' ceilings
PAGE_ORDERS = ("ctcvr", "ctr")  # the A/B ranker's page order
RANKERS = ("model", "oracle", "oracle-query")  # who orders the A/B's pages (oracle-query: the truth without the user)
FUSABLE = ("bm25", "dense", "dense-ann", "dense-tuned", "hybrid", "generative")  # the channels a fusion set may hold (eval/fusion.py)
SPLITS = ("validation", "test")  # what an evaluation may run on (workbench.data.splits; never train)


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 50)  # cut-offs
    width: int = 32  # beam width of the generator
    channel: ChannelConfig = field(default_factory=ChannelConfig)  # the generator's candidate set and its order
    budgets: tuple[int, ...] = (100, 300, 1000)  # channel and unique recall at these candidate budgets
    share: float = 0.3  # share of the k slots a supplement gives to generation
    methods: tuple[str, ...] = tuple(m for m in METHODS if m not in ON_REQUEST)  # every channel but those asked for by name
    split: str = "test"  # the queries evaluated: test reports, validation chooses settings
    ann: ANNConfig = field(default_factory=ANNConfig)  # the dense-ann channel's FAISS index
    fusions: tuple[str, ...] = ()  # sets of channels a learned ranker merges, e.g. bm25+dense,bm25+dense+generative (eval/fusion.py)
    fusion_budget: int = 300  # candidates each fusion set hands its ranker in all, an equal share per channel
    fusion_reference: str = "bm25+dense"  # the fusion set every other one is compared with
    seed: int = 0  # bootstrap seed of the fusion intervals
    generator: str = names.DEPLOYED  # which generator checkpoint
    embedder: str = "minilm"
    device: str = "cpu"

    def __post_init__(self):
        names.check(self.generator)
        bad = set(self.methods) - set(METHODS)
        if bad:
            raise ValueError(f"unknown methods {sorted(bad)}; choose from {', '.join(METHODS)}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive, got {self.ks}")
        if self.width < 1 or not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"width and budgets must be >= 1, got {self.width}, {self.budgets}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.fusion_budget < 2:
            raise ValueError(f"fusion_budget must be >= 2, got {self.fusion_budget}")
        if self.fusions:
            sets = fusion_sets(self.fusions)
            if tuple(self.fusion_reference.split("+")) not in sets:
                raise ValueError(f"the fusion reference {self.fusion_reference!r} is not among the fusion sets {self.fusions}")


@dataclass(frozen=True)
class SweepConfig:
    widths: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # beam widths to measure
    batch_sizes: tuple[int, ...] = (1, 32)  # queries decoded together
    k: int = 50  # Recall@K over the retrieved products
    tolerance: float = 0.02  # pick the smallest width whose Recall@K is within this share of the widest width's
    rounds: int = 3  # timed passes over the queries per (batch size, width)

    def __post_init__(self):
        if not self.widths or not self.batch_sizes or min(*self.widths, *self.batch_sizes, self.k, self.rounds) < 1:
            raise ValueError("widths, batch sizes, k and rounds must be >= 1")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")


@dataclass(frozen=True)
class ABConfig:
    arms: tuple[str, ...] = (names.DEPLOYED,)  # channels added to the legacy recall set: generator checkpoints (by name), bm25 or dense; a+b: several in one arm
    baseline: str = "control"  # the arm every other one is compared with: control, or an arm such as +dense
    recall: int = 100  # the legacy engine's recall set: its top this many products per query
    supplement: int = 100  # each channel's top this many products, merged into the recall set
    width: int = 32  # beam width of generator channels
    channel: ChannelConfig = field(default_factory=ChannelConfig)  # generator channels' candidate order (their budget is `supplement`)
    order: str = "ctcvr"  # the ranker's page order: pCTR x pCVR (ctcvr) or pCTR (ctr)
    ranker: str = "model"  # who orders the pages: the workspace's ranker (model), the simulator's truth (oracle: an upper bound), or the truth averaged over users (oracle-query: knows the query, not who asks)
    draws: int = 16  # oracle-query: users its truth is averaged over, drawn as sessions draw them
    by_activity: bool = False  # also report each arm for cold, warm and heavy users (see heavy)
    heavy: int = 10  # by user activity (headroom, --by-activity): cold users have no earlier click or purchase in the log, warm fewer than this, heavy at least this
    personal: bool = True  # decode with the session's user when the generator was trained with users (stage 3)
    split: str = "test"  # the sessions replayed: those of this split's queries (test reports; validation chooses)
    aa_splits: int = 2000  # A/A: random halves of the queries, control against control, to count false positives (0: skip)
    seed: int = 0  # seed of the A/A splits

    def __post_init__(self):
        if not self.arms or len(set(self.arms)) != len(self.arms) or {"logged", "control"} & set(self.arms):
            raise ValueError(f"arms must be distinct channel names (logged and control are always run), got {self.arms}")
        if any(not part for arm in self.arms for part in arm.split("+")):
            raise ValueError(f"an arm is channel names joined by +, e.g. dense+generator; got {self.arms}")
        for arm in self.arms:
            for part in arm.split("+"):
                names.check(part.partition("@")[0], f"arm {arm!r}: channel")
        if self.baseline not in ("control", "logged", *(f"+{a}" for a in self.arms)):
            raise ValueError(f"baseline must be control, logged or an arm (+{', +'.join(self.arms)}), got {self.baseline!r}")
        if self.draws < 1 or self.heavy < 2:
            raise ValueError(f"draws must be >= 1 and heavy >= 2 (warm users have 1 to heavy - 1 events), got {self.draws}, {self.heavy}")
        if self.aa_splits < 0:
            raise ValueError(f"aa_splits must be >= 0, got {self.aa_splits}")
        if min(self.recall, self.supplement, self.width) < 1:
            raise ValueError(f"recall, supplement and width must be >= 1, got {self.recall}, {self.supplement}, {self.width}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.order not in PAGE_ORDERS or self.ranker not in RANKERS:
            raise ValueError(f"order must be one of {PAGE_ORDERS} and ranker one of {RANKERS}, got {self.order!r}, {self.ranker!r}")


def fusion_sets(sets) -> list[tuple[str, ...]]:
    """"bm25+dense" -> ("bm25", "dense"); a clear error for an unknown channel, a repeat or fewer than two sets."""
    out = []
    for s in sets:
        names = tuple(s.split("+")) if isinstance(s, str) else tuple(s)
        bad = [n for n in names if n not in FUSABLE]
        if not names or bad or len(set(names)) != len(names):
            raise ValueError(f"fusion set {s!r}: channels must be distinct names among {', '.join(FUSABLE)}")
        out.append(names)
    if len(out) < 2:
        raise ValueError(f"a fusion compares sets of channels: give two or more (e.g. bm25+dense,bm25+dense+generative), got {sets}")
    return out
