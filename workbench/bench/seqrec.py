"""Next-item prediction with the same generator on different SIDs (Amazon Scientific, LC-Rec format).

Which SIDs are easier for one generator to predict and retrieve with: ours (CQ-SID) or a published
TIGER-style index? Leave-last-item-out per user, the protocol of TIGER and LC-Rec: for a user's items
i_1..i_n in order, i_n is the test target, i_{n-1} the validation target and i_2..i_{n-2} the
training targets. The input for target i_t (our design; TIGER feeds only the history's SID tokens):

    text      the title of i_{t-1} (`titles` > 1: the latest ones, newest first, joined by " | ")
    context   the SIDs of the `history` items before i_t, one token per level (offset by level), in
              the index under test: TIGER's input, as a bag (the context slots carry no position)

The recipe is the search curriculum's: stage 1 item text -> its SID, stage 2 history -> next SID with
20% of stage 1 replayed, the same model size, epochs and seed for every index; only the SIDs differ.
Retrieved products: decoded SIDs in beam order, within a SID by training popularity, then id.
Recall@K (= hit@K, one target) and NDCG@K over the whole catalog.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from workbench.gen.config import GenConfig, TrainConfig
from workbench.gen.data import Pairs, item_text, sid_matrix
from workbench.gen.model import Generator
from workbench.gen.retrieve import ProductLookup, Retriever, ranked_products
from workbench.gen.stages import replay, with_context
from workbench.gen.tokenizer import TextTokenizer
from workbench.gen.train import fit
from workbench.metrics import per_query
from workbench.sid.index import SIDIndex


def sequences(interactions: pd.DataFrame, min_len: int = 3) -> pd.Series:
    """user_id -> list of product ids in order (`seq`, else `time`), users with >= min_len items."""
    order = "seq" if "seq" in interactions and interactions["seq"].notna().all() else "time"
    if order not in interactions or interactions[order].isna().any():
        raise ValueError("interactions need a 'seq' or 'time' column without gaps to order each user's items")
    df = interactions.sort_values(["user_id", order], kind="stable")
    seqs = df.groupby("user_id", sort=True)["product_id"].agg(list)
    seqs = seqs[seqs.map(len) >= min_len]
    if seqs.empty:
        raise ValueError(f"no user has {min_len} or more interactions: nothing to hold out")
    return seqs


def sid_table(product_ids, codes: np.ndarray) -> pd.DataFrame:
    """A SID table (product_id, sid_1..sid_L) for any (N, L) codes array, e.g. a published index."""
    return pd.DataFrame({"product_id": np.asarray(product_ids).astype(str),
                         **{f"sid_{j + 1}": codes[:, j] for j in range(codes.shape[1])}})


def history_tokens(hist: list[np.ndarray], offsets: np.ndarray, history: int) -> np.ndarray:
    """The last `history` items' codes (each (L,)), newest first -> (history * L,) ids, -1 = empty."""
    out = np.full(history * len(offsets), -1, np.int64)
    for h, codes in enumerate(hist[::-1][:history]):
        out[h * len(offsets): (h + 1) * len(offsets)] = codes + offsets
    return out


def examples(seqs: pd.Series, split: str, titles: pd.Series, code_of: dict, offsets: np.ndarray,
             history: int, n_titles: int = 1, queries: pd.Series | None = None) -> tuple[Pairs, list[str]]:
    """Pairs for 'train' (targets i_2..i_{n-2}), 'valid' (i_{n-1}) or 'test' (i_n); and the targets.
    With `queries` (product id -> query text) the text is the target's query instead of the history's
    titles (personalised search, `bench.psearch`), and a target without a query is skipped."""
    text, target_codes, ctx, targets = [], [], [], []
    for items in seqs:
        n = len(items)
        positions = {"train": range(1, n - 2), "valid": [n - 2], "test": [n - 1]}[split]
        for t in positions:
            hist = items[:t]
            if queries is not None and not queries.get(items[t]):
                continue
            text.append(queries[items[t]] if queries is not None else " | ".join(titles[p] for p in hist[::-1][:n_titles]))
            target_codes.append(code_of[items[t]])
            ctx.append(history_tokens([code_of[p] for p in hist], offsets, history))
            targets.append(items[t])
    L = len(offsets)
    return (Pairs(text, np.array(target_codes, np.int64).reshape(-1, L), np.ones(len(text)),
                  np.array(ctx, np.int64).reshape(-1, history * L), source=split), targets)


def evaluate(retriever: Retriever, pairs: Pairs, targets: list[str], width: int, ks=(5, 10)) -> dict[str, float]:
    got = [ranked_products(h) for h in retriever.search(pairs.text, width, torch.as_tensor(pairs.context))]
    rel = [[t] for t in targets]
    out = {}
    for k in ks:
        m = per_query(got, rel, k)
        out[f"recall@{k}"], out[f"ndcg@{k}"] = float(np.mean(m["recall"])), float(np.mean(m["ndcg"]))
    return out


def run_case(products: pd.DataFrame, seqs: pd.Series, sids: pd.DataFrame, model: dict, train: TrainConfig,
             epochs: tuple[int, int], history: int = 5, width: int = 32, device: str = "cpu", run=None,
             label: str = "", valid_users: int = 1000, progress: bool = True, titles: int = 1) -> dict:
    """Train the generator on one SID table (stage 1 items, stage 2 next item) and evaluate the test
    targets. `run`: a logbook run for the per-epoch curves (validation Recall@10 on `valid_users`)."""
    codes = sid_matrix(sids)
    vocab = tuple(int(c) + 1 for c in codes.max(0))
    index = SIDIndex.from_codes(codes, vocab)
    offsets = np.r_[0, np.cumsum(vocab)[:-1]]
    code_of = dict(zip(sids["product_id"], codes))
    missing = set(products["product_id"]) - set(code_of)
    if missing:
        raise ValueError(f"{label or 'SID table'}: no SID for {len(missing)} products, e.g. {sorted(missing)[:3]}")
    text = pd.Series(products["title"].astype(str).to_numpy(), index=products["product_id"])
    items = Pairs(item_text(products), np.stack([code_of[p] for p in products["product_id"]]), np.ones(len(products)),
                  source="items")
    train_pairs, _ = examples(seqs, "train", text, code_of, offsets, history, titles)
    valid_seqs = seqs.sample(min(valid_users, len(seqs)), random_state=train.seed)
    valid, valid_t = examples(valid_seqs, "valid", text, code_of, offsets, history, titles)
    test, test_t = examples(seqs, "test", text, code_of, offsets, history, titles)

    pop = pd.Series([p for s in seqs for p in s[:-2]]).value_counts()  # training interactions only
    tok = TextTokenizer.train(item_text(products) + train_pairs.text[:20_000])
    cfg = GenConfig(sid_vocab=vocab, text_vocab=tok.vocab_size, tokenizer=tok.key, context_vocab=int(sum(vocab)),
                    **{"max_len": 32 * titles, **model})
    torch.manual_seed(train.seed)
    gen = Generator(cfg)
    retriever = Retriever(gen, tok, index, ProductLookup(index, sids, pop), device)
    width_ctx = history * len(vocab)
    stage1 = with_context(items, width_ctx)
    stage2 = replay(train_pairs, [stage1], 0.2, train.seed + 2)
    curves = []
    for stage, pairs, n in (("1-items", stage1, epochs[0]), ("2-next-item", stage2, epochs[1])):
        curves += fit(gen, tok, pairs, replace(train, epochs=n), device, run=run, stage=f"{label} {stage}".strip(),
                      progress=progress, evaluate=lambda m: evaluate(retriever, valid, valid_t, width, ks=(10,)))
    result = evaluate(retriever, test, test_t, width)
    return {"case": label, "levels": len(vocab), "sids": len(index.sids), "products_per_sid": len(products) / len(index.sids),
            "train_examples": len(train_pairs), "test_users": len(test_t), **result,
            "examples_per_s": float(np.median([c["examples_per_s"] for c in curves]))}
