"""Training throughput of the generator's encoders on one workspace, measured in one run.

For each backbone (scratch, minilm: fine-tuned BERT, sentence: frozen cached embedding), a generator
of the same decoder is trained on the same `n` title -> SID pairs for `epochs` epochs; examples per
second are reported for the first epoch and for the later ones. The sentence backbone embeds its
texts once (the first epoch's cost, through the workspace's embedding cache, which a previous run may
already hold), so its later epochs cost decoder steps only.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from workbench.gen.config import GenConfig, TrainConfig
from workbench.gen.data import Pairs, item_pairs
from workbench.gen.model import Generator
from workbench.gen.stages import make_tokenizer
from workbench.gen.train import fit, tokenize
from workbench.sid.index import SIDIndex
from workbench.sid.store import load_sids, sid_dir


def throughput(ws, backbones: list[str], n: int = 2000, epochs: int = 2, device: str = "cpu", seed: int = 0) -> list[dict]:
    if n < 1 or epochs < 2:
        raise ValueError(f"need n >= 1 examples and epochs >= 2 (the first and the later ones), got {n}, {epochs}")
    index = SIDIndex.load(sid_dir(ws) / "index.parquet")
    rows = []
    for backbone in backbones:
        items = item_pairs(ws, load_sids(ws), embedded_text=backbone == "sentence")
        idx = np.random.default_rng(seed).choice(len(items), min(n, len(items)), replace=False)
        pairs = Pairs([items.text[i] for i in idx], items.sids[idx], items.weight[idx], source="items")
        tok = make_tokenizer(ws, backbone, device=device)
        dims = {"embed_dim": tok.dim} if backbone == "sentence" else {}
        torch.manual_seed(seed)
        model = Generator(GenConfig(sid_vocab=tuple(index.vocab), text_vocab=tok.vocab_size, tokenizer=tok.key,
                                    backbone=backbone, **dims))
        t0 = time.perf_counter()
        tokenize(tok, pairs.text, model.cfg.max_len)  # the sentence backbone embeds here (or reads its cache)
        t1 = time.perf_counter()
        hist = fit(model, tok, pairs, TrainConfig(epochs=epochs, seed=seed), device, progress=False)
        rows.append({"case": backbone, "examples": len(pairs), "tokenize_s": t1 - t0, "wall_s": time.perf_counter() - t0,
                     "first_epoch_per_s": hist[0]["examples_per_s"],
                     "later_epochs_per_s": float(np.median([h["examples_per_s"] for h in hist[1:]])),
                     "parameters_trained": sum(p.numel() for p in model.parameters() if p.requires_grad)})
    base = next((r["later_epochs_per_s"] for r in rows if r["case"] == "minilm"), None)
    for r in rows:
        r["x_vs_minilm"] = r["later_epochs_per_s"] / base if base else float("nan")
    return rows
