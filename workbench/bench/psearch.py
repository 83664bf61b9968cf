"""Personalised product search on a real log (Amazon Scientific): does the user's history pay?

The LC-Rec data holds each user's purchases (reviews) in order but no queries. The protocol of
personalised product search on Amazon data (HEM, Ai et al., SIGIR 2017) makes a purchase's query from
its product's category path: here the path below the root, lower-cased, each word once ("fasteners
collated staples"). Many products share a query (one category holds up to 294), so the query alone
names a shelf and the history has to say which product on it. Leave-last-out per user as in
`bench.seqrec`: i_n is the test target, i_{n-1} the validation target, i_2..i_{n-2} training targets;
a target whose product has no category has no query and is skipped (it stays in later histories).

    text      the target's query
    context   the SIDs of the `history` products bought before the target (seqrec's bag of tokens)

One curriculum, the workspace's: stage 1 product text -> SID, stage 2 query -> SID (no context),
stage 3 query + history -> SID with 20% of stages 1-2 replayed with empty context. On the test
targets, hit@K (one target, = recall@K) and NDCG@K of

    anonymous    the model after stage 2 (a separate model that never saw a user)
    stage 3 without user   stage 3's model with empty context (the same model, anonymous)
    stage 3 with user      stage 3's model with the history
    gated        with the history, the user term weighed by the gate (`beam_search`) that scores best
                 on the validation targets

and each one's paired hit@K difference from the anonymous model and from stage 3 without the user
(95% bootstrap intervals over users, one target each).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from workbench.bench.seqrec import examples
from workbench.gen.config import GenConfig, TrainConfig
from workbench.gen.data import Pairs, item_text, sid_matrix
from workbench.gen.model import Generator
from workbench.gen.retrieve import ProductLookup, Retriever, ranked_products
from workbench.gen.stages import replay, with_context
from workbench.gen.tokenizer import TextTokenizer
from workbench.gen.train import fit
from workbench.metrics import paired_difference, per_query
from workbench.sid.index import SIDIndex

GATES = (0.0, 0.25, 0.5, 0.75, 1.0)  # the user term's weights tried on the validation targets


def category_queries(products: pd.DataFrame, sep: str = " > ") -> pd.Series:
    """product id -> its query: the category path below the root, lower-cased, each word once ('' without one)."""
    def query(path) -> str:
        if not isinstance(path, str) or not path.strip():
            return ""
        words = " ".join(path.split(sep)[1:]).lower().replace(",", " ").split()
        return " ".join(dict.fromkeys(w for w in words if w != "&"))
    if "category" not in products:
        raise ValueError("personalised search needs products.category to make each purchase's query")
    return pd.Series([query(c) for c in products["category"]], index=products["product_id"].astype(str))


def hits(retriever: Retriever, pairs: Pairs, targets: list[str], width: int, k: int, context=True, gate: float = 1.0
         ) -> dict[str, np.ndarray]:
    """Per target: hit@k and NDCG@k, with the user's context (`context`), without, or gated."""
    c = torch.as_tensor(pairs.context)
    got = retriever.search(pairs.text, width, c if context else torch.full_like(c, -1), gate=gate)
    m = per_query([ranked_products(h) for h in got], [[t] for t in targets], k)
    return {"hit": np.asarray(m["recall"], float), "ndcg": np.asarray(m["ndcg"], float)}


def run(products: pd.DataFrame, seqs: pd.Series, sids: pd.DataFrame, model: dict, train: TrainConfig,
        epochs: tuple[int, int, int], history: int = 5, width: int = 32, k: int = 10, device: str = "cpu", run=None,
        progress: bool = True) -> tuple[list[dict], dict]:
    """Train the curriculum on `sids` and evaluate the test targets: one row per way of searching, and the
    facts of the run (queries, examples, the chosen gate and its validation scores)."""
    codes = sid_matrix(sids)
    vocab = tuple(int(c) + 1 for c in codes.max(0))
    index = SIDIndex.from_codes(codes, vocab)
    offsets = np.r_[0, np.cumsum(vocab)[:-1]]
    code_of = dict(zip(sids["product_id"], codes))
    if set(products["product_id"]) - set(code_of):
        raise ValueError("the SID table lacks products of the catalog; run `workbench sid assign`")
    queries = category_queries(products)
    titles = pd.Series(products["title"].astype(str).to_numpy(), index=products["product_id"])
    split = {s: examples(seqs, s, titles, code_of, offsets, history, queries=queries) for s in ("train", "valid", "test")}
    items = Pairs(item_text(products), np.stack([code_of[p] for p in products["product_id"]]), np.ones(len(products)),
                  source="items")
    pop = pd.Series([p for s in seqs for p in s[:-2]]).value_counts()  # training purchases only
    tok = TextTokenizer.train(item_text(products) + sorted(set(queries)))
    cfg = GenConfig(sid_vocab=vocab, text_vocab=tok.vocab_size, tokenizer=tok.key, context_vocab=int(sum(vocab)), **model)
    torch.manual_seed(train.seed)
    gen = Generator(cfg)
    retriever = Retriever(gen, tok, index, ProductLookup(index, sids, pop), device)
    width_ctx = history * len(vocab)
    (train_pairs, _), (valid, valid_t), (test, test_t) = split["train"], split["valid"], split["test"]
    stage1 = with_context(items, width_ctx)
    anonymous = Pairs(train_pairs.text, train_pairs.sids, train_pairs.weight, np.full_like(train_pairs.context, -1), "queries")
    stage2 = replay(anonymous, [stage1], 0.2, train.seed + 2)
    stage3 = replay(replace(train_pairs, source="personal"), [stage1, anonymous], 0.2, train.seed + 3)

    def val(context=True):
        return lambda m: {f"hit@{k}": float(hits(retriever, valid, valid_t, width, k, context)["hit"].mean())}

    anon_model = None
    for s, (name, pairs, n) in enumerate((("1-items", stage1, epochs[0]), ("2-queries", stage2, epochs[1]),
                                          ("3-personal", stage3, epochs[2])), 1):
        fit(gen, tok, pairs, replace(train, epochs=n), device, run=run, stage=name, progress=progress,
            evaluate=val(s == 3))
        if s == 2:
            anon_model = copy.deepcopy(gen.state_dict())
    gen.eval()
    scores = {g: float(hits(retriever, valid, valid_t, width, k, True, g)["hit"].mean()) for g in GATES}
    gate = max(GATES, key=lambda g: (scores[g], -g))  # best on validation; ties to the smaller user term

    ways = {"stage 3 with user": hits(retriever, test, test_t, width, k, True),
            "stage 3 without user": hits(retriever, test, test_t, width, k, False),
            f"gated (gate {gate:g})": hits(retriever, test, test_t, width, k, True, gate)}
    personal = gen.state_dict()
    gen.load_state_dict(anon_model)
    ways = {"anonymous (stage 2)": hits(retriever, test, test_t, width, k, False), **ways}
    gen.load_state_dict(personal)
    base, same = ways["anonymous (stage 2)"], ways["stage 3 without user"]
    rows = []
    for way, m in ways.items():
        d, lo, hi = paired_difference(m["hit"], base["hit"])
        ds, los, his = paired_difference(m["hit"], same["hit"])
        rows.append({"search": way, f"hit@{k}": float(m["hit"].mean()), f"ndcg@{k}": float(m["ndcg"].mean()),
                     "vs anonymous model": d, "low": lo, "high": hi, "vs same model without user": ds,
                     "low ": los, "high ": his, "x anonymous model": float(m["hit"].mean() / base["hit"].mean())})
    facts = {"queries": int(len(set(queries) - {""})), "train_examples": len(train_pairs), "valid_targets": len(valid_t),
             "test_targets": len(test_t), "gate": gate, "valid_hit_by_gate": scores}
    return rows, facts
