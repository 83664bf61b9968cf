"""Named recipes: every setting of a workspace's pipeline as one frozen config, chosen by name.

A recipe fixes what the component configs leave open for a whole catalog: the SIDs (CQ-SID), the
generator's curriculum and size, stage 4 and the beam-width sweep. `workbench demo` builds with
`demo`; `workbench sid train | train | rl --recipe NAME` start from a recipe and every option given on
the command line overrides it; every run a command starts records the recipe (`runs.config`'s
`recipe` key), so a curve in the logbook can always be traced to its settings.

    default     the component configs' own defaults (256,256,256 SIDs for a catalog of tens of
                thousands of products and more; 80 SID epochs; stages 1-3 for 20,12,6 epochs)
    demo        the 3,000-product sample marketplace: SIDs 64,16,8 (median cluster ~2 products,
                max ~70), 40 SID epochs, 40 RL steps per algorithm, 2 rounds per width
    market      a 30,000-product synthetic marketplace (`data synth --products 30000 --users 5000
                --sessions 40000`), the simulated A/B's larger case: SIDs 128,32,8, otherwise demo's
    homedepot   the Home Depot measurement of docs/results/homedepot.md (54,667 products, titles only,
                judged queries and no search log): SIDs 128,32,8, 40 SID epochs, stages 1,2 for 6,12 epochs
    few-logs    a catalog with few logged queries (the usual case before launch): the same SIDs, the
                frozen sentence backbone (MiniLM's embedding, cached) with the tree head (level
                heads that start as a cosine search of the SID tree), 4 pseudo-queries per product
                in stage 1, and in stage 2 the training queries and pseudo-queries labelled by the
                hybrid (BM25 + dense) teacher's top 10 (top 100 for the training queries, chosen on a
                validation slice of them); stages 1,2 for 3,1 epochs

The two Home Depot recipes evaluate every channel at equal budgets, the decomposition and ceiling rows,
FAISS beside the exact scan, the fine-tuned encoder (`encoder`, trained first) and the learned fusion
of BM25 with dense, fine-tuned dense and generative (`HOMEDEPOT_EVAL`).

Add a recipe by adding an entry to RECIPES; `workbench recipes` prints them all, diffable as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from workbench.config import to_dict
from workbench.encoder import EncoderConfig
from workbench.eval.config import METHODS, EvalConfig, SweepConfig
from workbench.gen.config import StagesConfig
from workbench.rl.config import RLConfig
from workbench.sid.config import CQSIDConfig, RQVAEConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    about: str
    sid: CQSIDConfig = field(default_factory=CQSIDConfig)  # model.input_dim is the embedder's, set when it trains
    gen: StagesConfig = field(default_factory=StagesConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # the fine-tuned dense channel, when eval asks for dense-tuned

    def sid_for(self, input_dim: int) -> CQSIDConfig:
        """The SID config for an embedder of `input_dim` dimensions."""
        return replace(self.sid, model=replace(self.sid.model, input_dim=input_dim))

    def to_dict(self) -> dict:
        return to_dict(self)


HOMEDEPOT_SIDS = CQSIDConfig(model=RQVAEConfig(codebook_sizes=(128, 32, 8)), epochs=40)  # ~55k products
HOMEDEPOT_EVAL = EvalConfig(  # ~3 products per SID: width 128 fills the 300-product budget
    ks=(10, 100), width=128,
    methods=METHODS,  # every channel, the ones asked for by name included
    fusions=("bm25", "bm25+dense", "bm25+generative", "bm25+dense+generative", "bm25+dense-tuned", "bm25+dense-tuned+generative"))

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("default", "the component configs' own defaults"),
    Recipe("demo", "the 3,000-product sample marketplace (workbench demo)",
           sid=CQSIDConfig(model=RQVAEConfig(codebook_sizes=(64, 16, 8)), epochs=40),
           rl=RLConfig(steps=40), sweep=SweepConfig(rounds=2)),
    Recipe("market", "a 30,000-product synthetic marketplace (the simulated A/B's larger case)",
           sid=CQSIDConfig(model=RQVAEConfig(codebook_sizes=(128, 32, 8)), epochs=40),
           rl=RLConfig(steps=40), sweep=SweepConfig(rounds=2)),
    Recipe("homedepot", "Home Depot: 54,667 products with titles, judged queries, no search log",
           sid=HOMEDEPOT_SIDS, gen=StagesConfig(stages=(1, 2), epochs=(6, 12)), eval=HOMEDEPOT_EVAL),
    Recipe("few-logs", "a catalog with few logged queries: frozen sentence encoder, tree head, pseudo-queries, a hybrid teacher",
           sid=HOMEDEPOT_SIDS, eval=HOMEDEPOT_EVAL,
           gen=StagesConfig(stages=(1, 2), epochs=(3, 1), backbone="sentence", tree=True, pseudo=4, distill="hybrid",
                            distill_query_k=100)),
]}


def get(name: str) -> Recipe:
    """The recipe called `name`; an unknown name is an error listing the known ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
