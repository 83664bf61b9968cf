"""Progressive training on a workspace, the paper's curriculum (stage 4, EG-GRPO, is workbench.rl):

    stage 1  items     product text (title, brand, category) -> its SID: the catalog's language; with
                       `pseudo`, also pseudo-queries drawn from that text (query-like text for every
                       product, where the log has few queries: `workbench.data.pseudo`)
    stage 2  queries   training queries -> SIDs of products clicked (1), bought (2), judged relevant (1)
    stage 3  personal  user + history + query -> SID of the product that user clicked or bought

Each stage starts from the previous stage's weights and replays `replay` x (its own size) examples
drawn from the earlier stages, against forgetting. The generator has context slots from the start
when stage 3 is planned; examples without a user leave them empty, which is exactly the
non-personalised path.

Checkpoints in <workspace>/gen/: `<name>-stage<N>.safetensors` after each stage, `<name>.safetensors`
(the last stage: what search and eval load), and `<name>-stage<N>.partial.safetensors` after every
epoch (weights + optimizer state), so a killed run resumes losing at most one epoch. A finished stage
is kept only while it is current (its SIDs and the stage before it unchanged: workbench.lineage), else
it is trained again; a partial file that cannot be resumed (other SIDs, damaged, `fresh`) is removed
with a message. `<name>` is written (`store.deploy`, a logbook run) only when this call trained a
stage or there is none: rerunning finished stages never changes the deployed model. After each
stage the validation queries are evaluated (Recall@K; for stage 3 also the personalised hit rate), and
stage 1's task (title -> own SID) to show forgetting; all logged to the logbook with the stage, so
stage-by-stage curves are one SQL query.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from workbench import checkpoint, dist, lineage
from workbench.data import splits
from workbench.embed import embed_workspace, get_embedder
from workbench.gen import names, store
from workbench.gen.config import STAGES, GenConfig, StagesConfig, TargetWeights
from workbench.gen.context import UserContext
from workbench.gen.data import Pairs, eval_set, item_pairs, item_text, pseudo_pairs, query_pairs, sid_matrix
from workbench.gen.distill import distill_pairs, teacher
from workbench.gen.model import Generator
from workbench.gen.retrieve import ProductLookup, Retriever, popularity, ranked_products
from workbench.gen.tokenizer import SentenceTokenizer, TextTokenizer
from workbench.gen.train import fit
from workbench.gen.tree import tree_nodes
from workbench.metrics import recall_at_k
from workbench.sid.index import SIDIndex
from workbench.sid.store import load_sids, sid_dir, workspace_embedder

EVAL_KS = (10, 50)


def make_tokenizer(ws, backbone: str, vocab_size: int = 8000, device: str = "cpu"):
    if backbone == "minilm":
        return TextTokenizer.minilm()
    if backbone == "sentence":  # the embedder the workspace's SIDs were built on, frozen
        return SentenceTokenizer(workspace_embedder(ws), device, ws.cache_dir / "embeddings")
    q = ws.table("queries")  # the training queries' words: a validation or test query must not shape the vocabulary
    texts = item_text(ws.table("products")) + q.loc[splits.mask(ws, q["query_id"], "train"), "query"].astype(str).tolist()
    return TextTokenizer.train(texts, vocab_size=vocab_size)


def init_tree(gen: Generator, ws, sids: pd.DataFrame, device: str = "cpu") -> None:
    """The tree head's centroids from the products' embeddings (the workspace's embedder, cached)."""
    products = ws.table("products")
    vecs = embed_workspace(ws, get_embedder(workspace_embedder(ws), device), ("products",), progress=False)["products"]
    row = pd.Series(np.arange(len(products)), index=products["product_id"].to_numpy())
    gen.tree.init_from(sid_matrix(sids), vecs[row.loc[sids["product_id"].to_numpy()].to_numpy()])


def personal_pairs(ws, sids: pd.DataFrame, ctx: UserContext, targets: TargetWeights | None = None) -> Pairs:
    """Stage 3: one example per click or purchase on a training query, with the user's context then,
    weighted as `targets` weighs a purchase (a bought product was also clicked) and a click; a source of
    weight 0 gives no examples."""
    targets = targets or TargetWeights()
    log = ws.table("search_log")
    log = log.assign(weight=np.where(log["purchased"], targets.purchased, np.where(log["clicked"], targets.clicked, 0.0)))
    ev = log[(log["weight"] > 0) & splits.mask(ws, log["query_id"], "train")]
    if ev.empty:
        raise ValueError(f"stage 3 has no examples: no training query's {'purchase' if targets.purchased else 'click'} "
                         f"in the search log (target weights purchased {targets.purchased}, clicked {targets.clicked})")
    ev = ev.merge(ws.table("queries"), on="query_id").merge(sids, on="product_id")
    return Pairs(ev["query"].astype(str).tolist(), sid_matrix(ev), ev["weight"].to_numpy(float),
                 ctx.ids(ev["user_id"], ev["time"]), source="personal")


def personal_events(ws, split: str = "validation") -> pd.DataFrame:
    """The clicks and purchases of `split`'s queries: user_id, time, query, product_id."""
    log = ws.table("search_log")
    ev = log[(log["clicked"] | log["purchased"]) & splits.mask(ws, log["query_id"], split)]
    return ev.merge(ws.table("queries"), on="query_id")[["user_id", "time", "query", "product_id"]]


def with_context(p: Pairs, width: int) -> Pairs:
    """The same examples with empty context slots (for mixing with stage-3 examples)."""
    return p if p.context is not None else Pairs(p.text, p.sids, p.weight, np.full((len(p), width), -1, np.int64), p.source)


def replay(current: Pairs, earlier: list[Pairs], share: float, seed: int) -> Pairs:
    """`current` plus share x len(current) examples drawn uniformly from the earlier stages' examples."""
    if share <= 0 or not earlier:
        return current
    pool = Pairs.concat(earlier)
    n = min(len(pool), int(round(share * len(current))))
    idx = np.random.default_rng(seed).choice(len(pool), n, replace=False)
    ctx = None if pool.context is None else pool.context[idx]
    old = Pairs([pool.text[i] for i in idx], pool.sids[idx], pool.weight[idx], ctx, f"replay({pool.source})")
    return Pairs.concat([current, old])


def recall_eval(retriever: Retriever, evalset, width: int, ks=EVAL_KS) -> dict[str, float]:
    """Recall@K of the products retrieved for `evalset`'s queries (best SIDs' products first)."""
    got = [ranked_products(h) for h in retriever.search(evalset["query"].tolist(), width)]
    rel = evalset["relevant"].tolist()
    return {f"recall@{k}": recall_at_k(got, rel, k) for k in ks}


def item_eval(retriever: Retriever, items: Pairs, width: int = 10, n: int = 500, seed: int = 0) -> dict[str, float]:
    """Stage 1's task, to see forgetting: for n products, is their own SID the first (item_hit@1) or
    among the `width` SIDs decoded from their title (item_hit@width)?"""
    idx = np.random.default_rng(seed).choice(len(items), min(n, len(items)), replace=False)
    texts, target = [items.text[i] for i in idx], torch.as_tensor(items.sids[idx])
    got = torch.cat([retriever.decode(texts[i:i + 128], width).sids.cpu() for i in range(0, len(texts), 128)])  # (n, W, L)
    same = (got == target[:, None, :]).all(-1)  # (n, W)
    return {"item_hit@1": float(same[:, 0].float().mean()), f"item_hit@{width}": float(same.any(1).float().mean())}


def personal_eval(retriever: Retriever, events: pd.DataFrame, ctx: UserContext, width: int, ks=(10,)) -> dict:
    """Hit@k of the product each user clicked or bought on an evaluation query (`events`), decoded with that user's
    context (personal_hit) and without (anonymous_hit), on the same events; `.._history@k` the same over the
    events whose user had a history before them (`history_share` of all: a cold user's two lists are one)."""
    texts, target = events["query"].tolist(), events["product_id"].tolist()
    c = torch.as_tensor(ctx.ids(events["user_id"], events["time"]))
    known = (c[:, 1:] >= 0).any(1).numpy()  # (n,) a history before the event
    out = {"history_share": float(known.mean()) if len(known) else float("nan")}
    for key, context in (("personal_hit", c), ("anonymous_hit", torch.full_like(c, -1))):
        ranked = [ranked_products(h) for h in retriever.search(texts, width, context=context)]
        for k in ks:
            hit = np.array([t in r[:k] for r, t in zip(ranked, target)], dtype=float)
            out[f"{key}@{k}"] = float(hit.mean())
            out[f"{key}_history@{k}"] = float(hit[known].mean()) if known.any() else float("nan")
    return out


def _partial(ws, name: str, stage: int):
    return store.checkpoint_path(ws, names.partial(names.stage(name, stage)))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, str]:
    sd = opt.state_dict()
    tensors = {f"optimizer.{i}.{k}": torch.as_tensor(v) for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, json.dumps(sd["param_groups"])


def _optimizer_state(state: dict, groups: str) -> dict:
    out: dict[int, dict] = {}
    for key, v in state.items():
        _, i, k = key.split(".", 2)
        out.setdefault(int(i), {})[k] = v
    return {"state": out, "param_groups": json.loads(groups)}


@dataclass(frozen=True)
class Curriculum:
    """What every stage of one `train_stages` call shares: its SIDs and inputs, built once."""

    sids: pd.DataFrame  # the SID table: product_id, sid_1..sid_L
    index: SIDIndex  # every valid SID: the decoder's trie
    ctx: UserContext | None  # users' context slots, when stage 3 is planned
    evalset: pd.DataFrame  # the validation queries and their relevant products (each epoch's figures)
    events: pd.DataFrame | None  # the validation queries' clicks and purchases (stage 3's personal hit rate)
    items: Pairs  # stage 1's titles (and the forgetting check's)
    examples: dict[int, Callable[[], Pairs]]  # stage -> its own examples, built when asked for


def curriculum(ws, cfg: StagesConfig, device: str = "cpu") -> Curriculum:
    """The SIDs, the users' context, the validation sets and each stage's examples of `cfg`."""
    sids = load_sids(ws)
    index = SIDIndex.load(sid_dir(ws) / "index.parquet")
    personal = 3 in cfg.stages
    ctx = UserContext.from_workspace(ws, sids, index.vocab, cfg.history, cfg.history_brands) if personal else None
    items = item_pairs(ws, sids, embedded_text=cfg.backbone == "sentence")
    pseudo = (lambda: [pseudo_pairs(ws, sids, cfg.pseudo, cfg.train.seed)]) if cfg.pseudo else list
    examples = {1: lambda: Pairs.concat([items, *pseudo()]), 2: lambda: query_examples(ws, sids, cfg, pseudo, device),
                3: lambda: personal_pairs(ws, sids, ctx, cfg.targets)}
    return Curriculum(sids, index, ctx, eval_set(ws, "validation"), personal_events(ws) if personal else None, items, examples)


def query_examples(ws, sids: pd.DataFrame, cfg: StagesConfig, pseudo: Callable[[], list[Pairs]], device: str) -> Pairs:
    """Stage 2: the training queries' logged and judged products, and with `cfg.distill` a teacher's ranking
    of the training queries and of stage 1's pseudo-queries (one teacher index for both)."""
    own = query_pairs(ws, sids, cfg.targets.weights())
    if not cfg.distill:
        return own
    q = ws.table("queries")
    queries = list(dict.fromkeys(q.loc[splits.mask(ws, q["query_id"], "train"), "query"].astype(str)))
    seen = set(queries)
    texts = [t for t in dict.fromkeys(p for x in pseudo() for p in x.text) if t not in seen]
    search = teacher(ws, cfg.distill, device)
    return Pairs.concat([own, distill_pairs(ws, sids, queries, cfg.distill, cfg.distill_query_k, search=search),
                         *([distill_pairs(ws, sids, texts, cfg.distill, cfg.distill_k, search=search)] if texts else [])])


def first_model(ws, cfg: StagesConfig, cur: Curriculum, name: str, device: str) -> tuple[Generator, TextTokenizer]:
    """The model the first planned stage starts from: the checkpoint of the stage before it, or a new one
    (with context slots when stage 3 is planned, and the tree head's centroids with `cfg.tree`)."""
    if cfg.stages[0] > 1:
        prev = names.stage(name, cfg.stages[0] - 1)
        gen, tok, _ = store.load(ws, prev, device)
        if cur.ctx is not None and gen.cfg.context_vocab != cur.ctx.vocab_size:
            raise ValueError(f"checkpoint {prev} was built without (or with other) context slots; start again from stage 1 "
                             "with stage 3 in the plan: --stages 1,2,3")
        return gen, tok
    tok = make_tokenizer(ws, cfg.backbone, device=device)
    dims = {"embed_dim": tok.dim} if cfg.backbone == "sentence" else {}
    dims.update({"tree": tree_nodes(sid_matrix(cur.sids))} if cfg.tree else {})
    gen_cfg = GenConfig(sid_vocab=tuple(cur.index.vocab), text_vocab=tok.vocab_size, tokenizer=tok.key, backbone=cfg.backbone,
                        context_vocab=cur.ctx.vocab_size if cur.ctx is not None else 0,
                        context_brands=cur.ctx is not None and cur.ctx.brands, **{**(cfg.model or {}), **dims})
    torch.manual_seed(cfg.train.seed)
    gen = Generator(gen_cfg)
    if cfg.tree:
        init_tree(gen, ws, cur.sids, device)
    return gen, tok


def training_set(cur: Curriculum, own: Pairs, earlier: list[Pairs], cfg: StagesConfig, s: int) -> Pairs:
    """Stage `s`'s examples with the earlier stages' replayed (empty context slots beside stage 3's)."""
    if cur.ctx is not None:
        own, earlier = with_context(own, cur.ctx.width), [with_context(p, cur.ctx.width) for p in earlier]
    return replay(own, earlier, cfg.replay, cfg.train.seed + s)


def resume_state(ws, gen: Generator, name: str, s: int, resume: bool, device: str, echo) -> dict | None:
    """The interrupted run of stage `s` to continue (its weights loaded into `gen`): {"epoch", "optimizer"};
    None to start the stage afresh, removing a partial checkpoint that cannot be resumed (`resume` off,
    damaged, or stale)."""
    part = _partial(ws, name, s)
    if not part.exists():
        return None
    if not resume:
        _remove(part, "--fresh", echo)
        return None
    try:
        st, meta = store.load_partial(ws, names.partial(names.stage(name, s)), device)
    except checkpoint.CheckpointError as e:  # damaged, or stale (a StaleError)
        _remove(part, str(e), echo)
        return None
    checkpoint.load_into(gen, {k: v for k, v in st.items() if not k.startswith("optimizer.")}, part)
    echo(f"resuming stage {s}-{STAGES[s]} after epoch {meta['epoch']} from {part.name}")
    return {"epoch": meta["epoch"], "optimizer": _optimizer_state({k: v for k, v in st.items() if k.startswith("optimizer.")},
                                                                  meta["param_groups"])}


def train_stage(ws, cur: Curriculum, retriever: Retriever, pairs: Pairs, s: int, cfg: StagesConfig, name: str, device: str,
                state: dict | None, progress: bool) -> dict:
    """Train stage `s` on `pairs` (continuing `state`), a resumable checkpoint after every epoch; then
    evaluate it on the validation queries (and stage 1's task, and the personal hit rate after stage 3), log
    the figures and save `<name>-stage<s>`. Its result row. Under torchrun only rank 0 evaluates and writes."""
    gen, tok, stage, main = retriever.model, retriever.tok, f"{s}-{STAGES[s]}", dist.is_main()
    parent = names.stage(name, s - 1) if s > 1 else None

    def save_partial(epoch: int, opt) -> None:
        tensors, groups = _optimizer_tensors(opt)
        store.save(ws, gen, tok, names.partial(names.stage(name, s)), extra=tensors, parent=parent, epoch=epoch, param_groups=groups)

    logged = ws.logbook().run("gen-train", {"generator": gen.cfg, "train": cfg.train, "stage": stage, "replay": cfg.replay,
                                            "examples": pairs.source, "device": device, "processes": dist.world()},
                              seed=cfg.train.seed, name=f"gen-train {name} stage {stage}") if main else nullcontext(None)
    with logged as run:
        history = fit(gen, tok, pairs, replace(cfg.train, epochs=dict(zip(cfg.stages, cfg.epochs))[s]), device, run=run,
                      stage=stage, progress=progress and main, evaluate=lambda m: recall_eval(retriever, cur.evalset, cfg.eval_width),
                      on_epoch=save_partial if main else None, resume=state)
        if not main:
            return {"stage": stage, "examples": len(pairs), **(history[-1] if history else {})}
        last = history[-1] if history else recall_eval(retriever, cur.evalset, cfg.eval_width)  # killed after its last epoch
        row = {"stage": stage, "examples": len(pairs), **last, **item_eval(retriever, cur.items)}
        if cur.ctx is not None and s >= 3:
            row.update(personal_eval(retriever, cur.events, cur.ctx, cfg.eval_width))
        for key, value in row.items():
            if "@" in key:
                metric, _, k = key.partition("@")
                run.log_eval(metric, value, k=int(k), dataset="validation queries", method=f"generator/{gen.cfg.backbone}", stage=stage)
        store.save(ws, gen.cpu(), tok, names.stage(name, s), parent=parent, run_id=run.run_id, stage=stage, examples=len(pairs))
        gen.to(device)
    _partial(ws, name, s).unlink(missing_ok=True)
    return row


@lineage.reads
def train_stages(ws, cfg: StagesConfig | None = None, name: str = names.DEPLOYED, device: str = "cpu", resume: bool = True,
                 progress: bool = True, echo=print) -> list[dict]:
    """Run `cfg.stages` in order, each `curriculum -> first_model -> (keep | training_set -> resume_state ->
    train_stage)`, then deploy the last stage as `name` when this call trained one (or none is deployed).
    One result row per stage (loss, recall@K, ...); `echo` gets what happened to earlier checkpoints
    (kept, trained again, removed)."""
    cfg = cfg or StagesConfig()
    echo = echo if dist.is_main() else (lambda *_: None)
    cur = curriculum(ws, cfg, device)
    gen, tok = first_model(ws, cfg, cur, name, device)
    retriever = Retriever(gen, tok, cur.index, ProductLookup(cur.index, cur.sids, popularity(ws)), device)
    done = [cur.examples[s]() for s in range(1, cfg.stages[0])]  # the earlier stages' examples, for replay
    results, trained = [], False
    for s in cfg.stages:
        own = cur.examples[s]()
        if resume and (got := _finished(ws, names.stage(name, s), device, echo)):
            retriever.model, retriever.tok, _ = got
            results.append({"stage": f"{s}-{STAGES[s]}", "resumed": "done"})
        else:
            state = resume_state(ws, retriever.model, name, s, resume, device, echo)
            results.append(train_stage(ws, cur, retriever, training_set(cur, own, done, cfg, s), s, cfg, name, device, state,
                                       progress))
            trained = True
        done.append(own)
    if dist.is_main():
        last = names.stage(name, cfg.stages[-1])
        if trained:
            store.deploy(ws, last, name, why=f"train stages {','.join(map(str, cfg.stages))}")
        elif why := store.deploy_problem(ws, last, name):  # missing, damaged, or a deploy killed halfway
            echo(f"deploying {last} as {name}: {why}")
            store.deploy(ws, last, name, why=why)
        else:
            echo(f"stages {','.join(map(str, cfg.stages))} were already trained: {name} left as it is (--fresh trains them again)")
    dist.barrier()  # every rank returns once rank 0 has written
    return results


def _finished(ws, name: str, device: str, echo) -> tuple | None:
    """The finished checkpoint `name`, or None (with a message) when it is missing, damaged or stale."""
    if not store.checkpoint_path(ws, name).exists():
        return None
    try:
        got = store.load(ws, name, device)
        if why := store.parent_changed(got[2], ws):
            raise lineage.StaleError(why)
        return got
    except (checkpoint.CheckpointError, lineage.StaleError) as e:
        echo(f"training {name} again: {e}")
        return None


def _remove(path, why: str, echo) -> None:
    path.unlink(missing_ok=True)
    echo(f"removed {path.name} ({why}): its stage starts again")
