"""Training a generator on a workspace: tokenizer, examples, fit, held-out Recall@K, save, log.

    train_workspace(ws, backbone="scratch", model=dict(d_model=256, ...), train=TrainConfig(...))

The examples are the catalog (title + category -> SID) and the training queries (query -> SIDs of
the products relevant to it), trained jointly. Every epoch the held-out queries are decoded with a
beam of `eval_width` and Recall@K of the retrieved products is logged to the same run.
"""

from __future__ import annotations

import torch

from workbench.eval.metrics import recall_at_k
from workbench.gen import store
from workbench.gen.data import Pairs, eval_set, item_pairs, item_text, query_pairs
from workbench.gen.model import GenConfig, Generator
from workbench.gen.retrieve import ProductLookup, Retriever, popularity, ranked_products
from workbench.gen.tokenizer import TextTokenizer
from workbench.gen.train import TrainConfig, fit
from workbench.sid.index import SIDIndex
from workbench.sid.store import load_sids, sid_dir

EVAL_KS = (10, 50)


def make_tokenizer(ws, backbone: str, vocab_size: int = 8000) -> TextTokenizer:
    if backbone == "minilm":
        return TextTokenizer.minilm()
    texts = item_text(ws.table("products")) + ws.table("queries")["query"].astype(str).tolist()
    return TextTokenizer.train(texts, vocab_size=vocab_size)


def recall_eval(retriever: Retriever, evalset, width: int, ks=EVAL_KS) -> dict[str, float]:
    """Recall@K of the products retrieved for the held-out queries (best SIDs' products first)."""
    hits = retriever.search(evalset["query"].tolist(), width)
    got = [ranked_products(h) for h in hits]
    rel = evalset["relevant"].tolist()
    return {f"recall@{k}": recall_at_k(got, rel, k) for k in ks}


def train_workspace(ws, backbone: str = "scratch", model: dict | None = None, train: TrainConfig | None = None,
                    name: str = "generator", device: str = "cpu", eval_width: int = 32, progress: bool = True) -> dict:
    """Train, evaluate and save a generator; returns the last epoch's row (loss, recall@K...)."""
    train = train or TrainConfig()
    sids = load_sids(ws)
    index = SIDIndex.load(sid_dir(ws) / "index.parquet")
    tok = make_tokenizer(ws, backbone)
    cfg = GenConfig(sid_vocab=tuple(index.vocab), text_vocab=tok.vocab_size, tokenizer=tok.key, backbone=backbone,
                    **(model or {}))
    torch.manual_seed(train.seed)
    gen = Generator(cfg)
    pairs = Pairs.concat([item_pairs(ws, sids), query_pairs(ws, sids)])
    evalset = eval_set(ws)
    retriever = Retriever(gen, tok, index, ProductLookup(index, sids, popularity(ws)), device)
    with ws.logbook().run("gen-train", {"generator": cfg, "train": train, "device": device, "examples": pairs.source},
                          seed=train.seed, name=f"gen-train {backbone} {name}") as run:
        history = fit(gen, tok, pairs, train, device, run=run, stage="joint", progress=progress,
                      evaluate=lambda m: recall_eval(retriever, evalset, eval_width))
        for key, value in history[-1].items():
            if key.startswith("recall@"):
                run.log_eval("recall", value, k=int(key.split("@")[1]), dataset="held-out queries",
                             method=f"generator/{backbone}/w{eval_width}", stage="joint")
        store.save(ws, gen.cpu(), tok, name, run_id=run.run_id, examples=len(pairs))
    return {**history[-1], "examples": len(pairs), "eval_queries": len(evalset), "params": sum(p.numel() for p in gen.parameters())}
