"""Teacher-forced training of the generator on (text (+ context) -> SID) pairs.

One function, `fit`, that every stage reuses: AdamW with linear warm-up and cosine decay, per-example
loss weights (purchases count more than clicks), label smoothing, gradient clipping, and a smaller
learning rate for a pretrained encoder (MiniLM) and the tree head's centroids than for the freshly
initialised decoder. Each distinct text is tokenised once up front; each batch is cut to its longest
text. Every epoch's loss (and whatever `evaluate(model)` returns) goes to the logbook run.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench import dist
from workbench.gen.config import TrainConfig
from workbench.gen.data import Pairs
from workbench.gen.model import Generator, loss
from workbench.gen.tokenizer import TextTokenizer


def tokenize(tok: TextTokenizer, texts: list[str], max_len: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each distinct text encoded once: (U, T) ids of the U distinct texts (T = the longest, at most
    max_len; the sentence tokenizer's (U, D) embeddings), their (U,) lengths, and the (N,) row of each
    of the N texts. Stage 2's texts repeat (a query per target SID: 2.2M examples of 0.2M texts on Home
    Depot), and a row per example was most of its memory."""
    row, uniq = pd.factorize(pd.Series(texts, dtype=object))  # (N,) codes, distinct texts in first-seen order
    uniq = uniq.tolist()
    chunk = getattr(tok, "encode_chunk", chunk)
    parts = [tok.encode(uniq[i:i + chunk], max_len)[0] for i in range(0, len(uniq), chunk)]
    T = max(p.shape[1] for p in parts)
    ids = parts[0] if len(parts) == 1 else torch.cat([torch.nn.functional.pad(p, (0, T - p.shape[1]), value=tok.pad_id) for p in parts])
    return ids, (ids != tok.pad_id).sum(1), torch.as_tensor(row, dtype=torch.long)


def batches(lens: torch.Tensor, batch_size: int, gen: torch.Generator, pool: int = 32) -> list[torch.Tensor]:
    """Shuffled batches of similar lengths: shuffle, sort each pool of `pool` batches by length, split,
    shuffle the batches. Padding to each batch's longest text then costs little."""
    perm = torch.randperm(len(lens), generator=gen)
    out = []
    for chunk in perm.split(batch_size * pool):
        out += chunk[lens[chunk].argsort(stable=True)].split(batch_size)
    return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


def check_pairs(model: Generator, pairs: Pairs) -> None:
    vocab = np.asarray(model.cfg.sid_vocab)
    if pairs.sids.ndim != 2 or pairs.sids.shape[1] != len(vocab):
        raise ValueError(f"SIDs have shape {pairs.sids.shape}, the generator decodes {len(vocab)} levels")
    bad = (pairs.sids < 0) | (pairs.sids >= vocab)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"example {i}: code {pairs.sids[i, j]} at level {j + 1} is outside the vocabulary {tuple(vocab)}")
    if pairs.context is not None:
        if model.cfg.context_vocab == 0:
            raise ValueError("examples carry context but the generator has no context tokens (context_vocab = 0)")
        bad = (pairs.context < -1) | (pairs.context >= model.cfg.context_vocab)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise ValueError(f"example {i}: context ids {pairs.context[i].tolist()} outside [-1, {model.cfg.context_vocab})")


def fit(model: Generator, tok: TextTokenizer, pairs: Pairs, cfg: TrainConfig, device: str = "cpu", run=None,
        stage: str | None = None, evaluate=None, progress: bool = True, on_epoch=None,
        resume: dict | None = None) -> list[dict]:
    """Train in place; returns one dict per epoch (loss, seconds, and evaluate(model)'s metrics).

    Resumable: each epoch shuffles with seed + epoch, `on_epoch(epoch, opt)` is called after every
    epoch (to save a checkpoint), and `resume = {"epoch": e, "optimizer": state}` continues after
    epoch e with that optimizer state (the model's weights already loaded by the caller)."""
    if tok.key != model.cfg.tokenizer:
        raise ValueError(f"tokenizer {tok.key!r} is not the one the generator was built for ({model.cfg.tokenizer!r})")
    check_pairs(model, pairs)
    gen = torch.Generator()
    ids, lens, text_of = tokenize(tok, pairs.text, model.cfg.max_len)  # (U, T), (U,), (N,): example i is text text_of[i]
    lens = lens[text_of]  # (N,)
    sids = torch.tensor(pairs.sids, dtype=torch.long)
    weight = torch.tensor(pairs.weight, dtype=torch.float32)
    ctx = None if pairs.context is None else torch.tensor(pairs.context, dtype=torch.long)

    model.to(device).train()
    net = dist.wrap(model)  # DDP under torchrun, the model itself on one process
    enc = list(model.encoder.parameters()) if model.cfg.backbone == "minilm" else []  # pretrained: the smaller lr
    enc += list(model.tree.node.parameters()) if model.tree is not None else []  # the tree's centroids, likewise
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    groups = [{"params": rest, "lr": cfg.lr}] + ([{"params": enc, "lr": cfg.encoder_lr}] if enc else [])
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=True)  # one kernel over all weights: 5x a step here
    per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total, warm = cfg.epochs * per_epoch, max(1, int(cfg.warmup * cfg.epochs * per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))

    start = 0
    if resume:
        opt.load_state_dict(resume["optimizer"])
        start = int(resume["epoch"])
        with warnings.catch_warnings():  # replaying the schedule, not training
            warnings.simplefilter("ignore")
            for _ in range(start * per_epoch):
                sched.step()
    history, step = [], start * per_epoch
    bar = tqdm(range(start, cfg.epochs), desc=f"generator{f' ({stage})' if stage else ''}", disable=not progress,
               initial=start, total=cfg.epochs)
    for epoch in bar:
        model.train()
        gen.manual_seed(cfg.seed + epoch)  # batch order and dropout depend on the epoch only: resumable
        torch.manual_seed(cfg.seed + epoch)
        t0, seen, total_loss = time.perf_counter(), 0, 0.0
        for b in batches(lens, cfg.batch_size, gen):  # the same global batches on every rank
            mine = dist.shard(b)  # this rank's examples (all of them on one process)
            w = weight[mine] if len(mine) else torch.zeros(1)
            mine = mine if len(mine) else b[:1]  # an empty slice trains on one zero-weight example
            T = int(lens[mine].max())
            x = ids[text_of[mine], :T].to(device)
            c = None if ctx is None else ctx[mine].to(device)
            logits = net(x, x != tok.pad_id, sids[mine].to(device), c)
            lo = loss(logits, sids[mine].to(device), w.to(device), cfg.label_smoothing, dist.local_total(weight[b]).to(device))
            opt.zero_grad(set_to_none=True)
            lo.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            step += 1
            seen += len(b)
            total_loss += float(lo.detach()) * len(b)
        total_loss = dist.all_sum(total_loss) / dist.world()  # each rank's loss is its share of the global batch's
        secs = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "loss": total_loss / seen, "seconds": secs, "examples_per_s": seen / secs}
        if evaluate is not None and dist.is_main():
            model.eval()
            row.update(evaluate(model))
        history.append(row)
        bar.set_postfix({k: round(v, 3) for k, v in row.items() if k not in ("epoch", "seconds", "examples_per_s")})
        if run is not None:
            run.log(step, stage=stage, **{k: v for k, v in row.items() if k != "epoch"}, lr=sched.get_last_lr()[0])
        if on_epoch is not None:
            on_epoch(epoch + 1, opt)
    model.eval()
    return history
