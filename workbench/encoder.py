"""The bi-encoder a team would run as its dense channel: all-MiniLM-L6-v2 fine-tuned on the workspace's
own training queries and pseudo-queries with sentence-transformers' MultipleNegativesRankingLoss.

    pairs(ws, cfg)          (query, product text) pairs: every training query with each relevant product,
                            then `cfg.pseudo` pseudo-queries per product (none equal to a validation or
                            test query: `data.pseudo`, `gen.data.unseen` filter them)
    train(ws, cfg, ...)     fine-tune from the packaged weights: each step a batch of pairs, the other
                            products of the batch its negatives (in-batch softmax at scale 20); the model
                            written to <workspace>/dense/encoder/ (safetensors and its JSON configs), its
                            run, examples/s and seconds in the logbook
    embed.Tuned(path)       the fine-tuned model as an embedder (`embed.get_embedder("tuned", root=ws.path)`):
                            its key names the weights' fingerprint, so its cached vectors are its own;
                            SIDs can be built on it (`workbench sid train --embedder tuned`)

Invariants: no validation or test query is a training pair (the split is recorded in the model's
lineage, `lineage.check_split`, and a model of another split is refused); the packaged MiniLM's
weights are never changed (the fine-tuned copy is the workspace's).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from workbench.config import positive, to_dict
from workbench.data import splits
from workbench.data.pseudo import PseudoConfig, pseudo_queries, words
from workbench.data.relevance import relevance
from workbench.embed import TUNED, MiniLM, product_texts


@dataclass(frozen=True)
class EncoderConfig:
    epochs: int = 1  # passes over the pairs
    batch_size: int = 64  # pairs per step: each pair's product is every other query's negative
    lr: float = 2e-5  # AdamW learning rate (peak, after a 10% warm-up)
    pseudo: int = 1  # pseudo-queries per product beside the training queries (0: queries only)
    max_pairs: int = 0  # at most this many pairs, drawn at random (0: all)
    scale: float = 20.0  # MultipleNegativesRankingLoss's similarity scale
    seed: int = 0  # random seed

    def __post_init__(self):
        positive(self, "epochs", "lr", "scale")
        if self.batch_size < 2 or self.pseudo < 0 or self.max_pairs < 0:
            raise ValueError(f"batch_size >= 2 (in-batch negatives), pseudo >= 0 and max_pairs >= 0 needed, got {self}")


def encoder_dir(ws) -> Path:
    return ws.path / TUNED


def pairs(ws, cfg: EncoderConfig) -> list[tuple[str, str]]:
    """Training (query, product text) pairs: the training queries' relevant products, then pseudo-queries."""
    products = ws.table("products")
    text = dict(zip(products["product_id"].astype(str), product_texts(products)))
    out = []
    if ws.has("queries"):
        rel = relevance(ws)
        rel = rel[splits.mask(ws, rel["query_id"], "train")].merge(ws.table("queries"), on="query_id")
        out += [(q, text[p]) for q, p in zip(rel["query"].astype(str), rel["product_id"].astype(str)) if p in text]
    if cfg.pseudo:
        q = ws.table("queries") if ws.has("queries") else None
        held = [] if q is None else q.loc[splits.mask(ws, q["query_id"], "validation", "test"), "query"].astype(str).tolist()
        pq = pseudo_queries(products, PseudoConfig(per_product=cfg.pseudo, seed=cfg.seed), exclude=held)
        banned = {" ".join(words(t)) for t in held}
        out += [(t, text[p]) for t, p in zip(pq["query"], pq["product_id"].astype(str)) if " ".join(words(t)) not in banned]
    if not out:
        raise ValueError(f"workspace {ws.path} has no training queries with relevant products and no pseudo-queries "
                         "to fine-tune on (give --pseudo 1 or more)")
    if cfg.max_pairs and len(out) > cfg.max_pairs:
        keep = np.random.default_rng(cfg.seed).choice(len(out), cfg.max_pairs, replace=False)
        out = [out[i] for i in sorted(keep)]
    return out


def train(ws, cfg: EncoderConfig | None = None, device: str = "cpu", progress: bool = True) -> dict:
    """Fine-tune MiniLM on `pairs(ws, cfg)`; write it to `encoder_dir(ws)`; its run's figures."""
    import torch  # heavy: only when training
    from sentence_transformers.sentence_transformer import losses

    cfg = cfg or EncoderConfig()
    data = pairs(ws, cfg)
    model = MiniLM(device).model
    loss = losses.MultipleNegativesRankingLoss(model, scale=cfg.scale)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, int(0.1 * steps))))
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    with ws.logbook().run("encoder", {"encoder": cfg, "pairs": len(data), "device": device}, seed=cfg.seed, name="encoder") as run:
        t0, step = time.perf_counter(), 0
        model.train()
        for epoch in range(cfg.epochs):
            order = rng.permutation(len(data))
            bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"encoder (epoch {epoch + 1})", disable=not progress)
            total = 0.0
            for s in bar:
                batch = [data[i] for i in order[s:s + cfg.batch_size]]
                if len(batch) < 2:
                    continue
                feats = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in model.preprocess([b[j] for b in batch]).items()}
                         for j in (0, 1)]  # queries, then their products
                lo = loss(feats, None)
                opt.zero_grad(set_to_none=True)
                lo.backward()
                opt.step()
                sched.step()
                step += 1
                value = float(lo.detach())
                total += value
                bar.set_postfix(loss=f"{value:.3f}")
            run.log(epoch + 1, stage="encoder", loss=total / max(1, math.ceil(len(order) / cfg.batch_size)))
        secs = time.perf_counter() - t0
        model.eval()
        out = encoder_dir(ws)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        model.save(str(tmp), create_model_card=False, safe_serialization=True)
        (tmp / "workbench.json").write_text(json.dumps({"config": to_dict(cfg), "lineage": {"split": splits.SPLIT},
                                                        "run_id": run.run_id, "pairs": len(data)}))
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        if out.exists():
            os.replace(out, old)  # the new model takes its place at once; the old one goes after
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        figures = {"pairs": len(data), "steps": step, "seconds": secs, "examples_per_s": len(data) * cfg.epochs / secs}
        run.log(cfg.epochs, stage="encoder", **figures)
    return figures
