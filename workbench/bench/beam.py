"""Beam search benchmarks: speed against the peer, and beam width against recall.

- `speed`: our constrained and unconstrained beam search, fp32 and bf16, side by side with Hugging
  Face `generate` on a T5 of the same dimensions with `prefix_allowed_tokens_fn` over a trie, on a
  random model and a random index (speed does not depend on training). Cases are interleaved round by
  round so a noisy neighbour slows them all alike; medians are reported. Also the achieved FLOP/s of
  decoding against a plain matmul of the decoder's MLP shape measured in the same run.
- `sweep`: a trained generator over beam widths and batch sizes: latency p50/p95 per batch (a
  query's latency when it arrives in such a batch), throughput, Recall@K on held-out queries; then
  `pick_width` chooses the smallest width within a tolerance of the widest one's recall.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from workbench.eval.metrics import recall_at_k
from workbench.gen.beam import beam_search
from workbench.gen.model import GenConfig, Generator
from workbench.gen.retrieve import Retriever, ranked_products
from workbench.gen.trie import compile_trie
from workbench.sid.index import SIDIndex


def random_index(n: int, vocab: tuple[int, ...], seed: int = 0) -> SIDIndex:
    """About `n` distinct random SIDs over `vocab` (skewed first level, like real clusters)."""
    r = np.random.default_rng(seed)
    first = r.zipf(1.3, size=4 * n) % vocab[0]
    codes = np.column_stack([first] + [r.integers(0, k, 4 * n) for k in vocab[1:]])
    codes = np.unique(codes, axis=0)
    return SIDIndex.from_codes(codes[r.permutation(len(codes))[:n]], vocab)


def widths_per_step(vocab: tuple[int, ...], width: int) -> list[int]:
    """Beams fed to the decoder at each step: 1 (BOS), then at most `width` prefixes."""
    out, n = [1], 1
    for k in vocab[:-1]:
        n = min(width, n * k)
        out.append(n)
    return out


def decode_flops(cfg: GenConfig, batch: int, width: int, mem_len: int) -> float:
    """Multiply-adds x 2 of one batched beam search (decoder, cross K/V and heads; not the encoder)."""
    d, f = cfg.d_model, cfg.d_ff
    total = batch * cfg.dec_layers * 2 * mem_len * d * 2 * d  # cross-attention K/V, once per query
    for t, w in enumerate(widths_per_step(cfg.sid_vocab, width)):
        tokens = batch * w
        per_layer = 2 * (6 * d * d + 2 * d * f) + 4 * (t + 1) * d + 4 * mem_len * d
        total += tokens * (cfg.dec_layers * per_layer + 2 * d * cfg.sid_vocab[t])
    return float(total)


def matmul_rate(m: int, k: int, n: int, device: str = "cpu", dtype=torch.float32, seconds: float = 0.5) -> float:
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    return 2 * m * k * n / _timed(lambda: a @ b, device, seconds)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def _timed(fn, device, seconds: float = 0.5) -> float:
    """Median seconds per call over at least 5 calls and about `seconds`."""
    fn()
    _sync(device)
    ts = []
    while len(ts) < 5 or sum(ts) < seconds:
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def hf_peer(cfg: GenConfig, index: SIDIndex, device: str = "cpu"):
    """A random T5 of the same dimensions, its SID tokens appended to the text vocabulary, and a
    `generate` call constrained (or not) by prefix_allowed_tokens_fn over a Python trie."""
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.utils import logging

    logging.set_verbosity_error()
    offsets = np.cumsum([cfg.text_vocab, *cfg.sid_vocab[:-1]])
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=cfg.text_vocab + sum(cfg.sid_vocab), d_model=cfg.d_model, d_kv=cfg.d_model // cfg.n_heads,
        num_heads=cfg.n_heads, num_layers=cfg.enc_layers, num_decoder_layers=cfg.dec_layers, d_ff=cfg.d_ff,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).to(device).eval()
    trie: dict[tuple, list[int]] = {}
    for row in index.sids.astype(np.int64) + offsets:
        for t in range(len(row)):
            trie.setdefault(tuple(row[:t].tolist()), set()).add(int(row[t]))
    trie = {k: sorted(v) for k, v in trie.items()}
    L = index.levels

    def run(ids: torch.Tensor, width: int, constrained: bool):
        kw = dict(num_beams=width, num_return_sequences=width, max_new_tokens=L, min_new_tokens=L, do_sample=False,
                  early_stopping=False, length_penalty=0.0)
        if constrained:
            kw["prefix_allowed_tokens_fn"] = lambda b, x: trie.get(tuple(x[1:].tolist()), [1])
        with torch.no_grad():
            return t5.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)

    return t5, run


def speed(batch: int = 32, width: int = 64, n_sids: int = 20_000, vocab: tuple[int, ...] = (64, 64, 64),
          d_model: int = 256, n_heads: int = 4, layers: int = 4, d_ff: int = 1024, text_vocab: int = 8000,
          query_len: int = 12, device: str = "cpu", rounds: int = 5, peer: bool = True, bf16: bool = True,
          seed: int = 0) -> tuple[list[dict], dict]:
    """Per-batch seconds of each case (median of `rounds` interleaved rounds) and a summary."""
    torch.manual_seed(seed)
    index = random_index(n_sids, vocab, seed)
    cfg = GenConfig(sid_vocab=vocab, text_vocab=text_vocab, d_model=d_model, n_heads=n_heads, enc_layers=layers,
                    dec_layers=layers, d_ff=d_ff, max_len=max(query_len, 3), dropout=0.0)
    model = Generator(cfg).to(device).eval()
    trie = compile_trie(index, device)
    ids = torch.randint(4, text_vocab, (batch, query_len), device=device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    models = {"fp32": model}
    if bf16:
        models["bf16"] = Generator(cfg).to(device, torch.bfloat16).eval()
        models["bf16"].load_state_dict(model.state_dict())

    def ours(m, constrained):
        with torch.no_grad():
            b = beam_search(m, m.memory(ids, mask), trie, width, constrained)
            return b.sids.cpu()

    def ours_beam_only(m):
        with torch.no_grad():
            mem = m.memory(ids, mask)
        return lambda: beam_search(m, mem, trie, width).sids.cpu()

    cases = {}
    for name, m in models.items():
        cases[f"ours constrained ({name})"] = lambda m=m: ours(m, True)
        cases[f"ours unconstrained ({name})"] = lambda m=m: ours(m, False)
    if peer:
        _, hf = hf_peer(cfg, index, device)
        cases["HF T5 generate + prefix_allowed_tokens_fn"] = lambda: hf(ids, width, True)
        cases["HF T5 generate, unconstrained"] = lambda: hf(ids, width, False)
    beam_only = ours_beam_only(model)
    times: dict[str, list[float]] = {k: [] for k in [*cases, "beam only (fp32)"]}
    for fn in [*cases.values(), beam_only]:  # warm-up
        fn()
    for _ in range(rounds):
        for name, fn in [*cases.items(), ("beam only (fp32)", beam_only)]:
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    sec = {k: float(np.median(v)) for k, v in times.items()}
    flops = decode_flops(cfg, batch, width, query_len)
    peak = matmul_rate(batch * width, d_model, d_ff, device)
    rows = []
    base = sec.get("HF T5 generate + prefix_allowed_tokens_fn")
    for name in cases:
        rows.append({"case": name, "s_per_batch": sec[name], "queries_per_s": batch / sec[name],
                     "x_vs_hf_constrained": base / sec[name] if base else float("nan")})
    summary = {
        "constrained_overhead_fp32": sec["ours constrained (fp32)"] / sec["ours unconstrained (fp32)"] - 1,
        "speedup_vs_hf_fp32": base / sec["ours constrained (fp32)"] if base else float("nan"),
        "speedup_vs_hf_bf16": base / sec["ours constrained (bf16)"] if base and bf16 else float("nan"),
        "decode_gflops": flops / 1e9, "decode_gflop_per_s": flops / sec["beam only (fp32)"] / 1e9,
        "matmul_gflop_per_s": peak / 1e9, "sids": len(index.sids),
    }
    summary["decode_share_of_matmul"] = summary["decode_gflop_per_s"] / summary["matmul_gflop_per_s"]
    if bf16:
        summary["constrained_overhead_bf16"] = sec["ours constrained (bf16)"] / sec["ours unconstrained (bf16)"] - 1
    return rows, summary


def sweep(retriever: Retriever, evalset: pd.DataFrame, widths: list[int], batch_sizes: list[int], k: int = 50,
          rounds: int = 3, label: str = "") -> list[dict]:
    """One row per (batch size, width): latency p50/p95 per batch, throughput, Recall@k."""
    texts, rel = evalset["query"].tolist(), evalset["relevant"].tolist()
    recall = {}
    for w in widths:
        got = [ranked_products(h) for h in retriever.search(texts, w)]
        recall[w] = (recall_at_k(got, rel, k), float(np.mean([len(g) for g in got])))
    rows = []
    for bs in batch_sizes:
        chunks = [texts[i:i + bs] for i in range(0, len(texts), bs)]
        chunks = [c for c in chunks if len(c) == bs] or chunks[:1]  # equal batches only, unless all are short
        for w in widths:
            retriever.search(chunks[0], w, batch_size=bs)  # warm-up
            lat = []
            for _ in range(rounds):
                for c in chunks:
                    t = time.perf_counter()
                    retriever.search(c, w, batch_size=bs)  # to host lists: synchronises on CUDA too
                    lat.append(time.perf_counter() - t)
            lat = np.array(lat)
            rows.append({"case": f"{label}w{w} b{bs}".strip(), "ids": label, "width": w, "batch": bs,
                         "p50_ms": 1e3 * np.percentile(lat, 50), "p95_ms": 1e3 * np.percentile(lat, 95),
                         "queries_per_s": len(lat) * len(chunks[0]) / lat.sum(),
                         f"recall@{k}": recall[w][0], "products": recall[w][1]})
    return rows


def run_sweep(w, mode: str, widths: list[int], batch_sizes: list[int], k: int, tolerance: float, rounds: int, run,
              device: str = "cpu") -> tuple[list[dict], dict]:
    """The sweep of workspace `w`'s generator, reported as `beam-sweep (<mode> IDs)`; rows and pick_width."""
    from workbench.bench import device_name, report
    from workbench.gen.data import eval_set

    rows = sweep(Retriever.from_workspace(w, device=device), eval_set(w), widths, batch_sizes, k, rounds, f"{mode} ")
    report(f"beam-sweep ({mode} IDs)", rows, run, units={"p50_ms": "ms", "p95_ms": "ms", "queries_per_s": "1/s"},
           params={"widths": widths, "batch_sizes": batch_sizes, "k": k, "rounds": rounds, "workspace": str(w.path)},
           device=device_name(device))
    return rows, pick_width(rows, k, tolerance)


def pick_width(rows: list[dict], k: int, tolerance: float = 0.02) -> dict:
    """Smallest width whose Recall@k is within `tolerance` (relative) of the widest width's; the
    latency saved at the largest batch size measured."""
    df = pd.DataFrame(rows)
    bs = df["batch"].max()
    df = df[df["batch"] == bs].sort_values("width")
    widest = df.iloc[-1]
    ok = df[df[f"recall@{k}"] >= (1 - tolerance) * widest[f"recall@{k}"]]
    best = ok.iloc[0]
    return {"width": int(best["width"]), "recall": float(best[f"recall@{k}"]), "widest": int(widest["width"]),
            "widest_recall": float(widest[f"recall@{k}"]), "batch": int(bs),
            "latency_saving": 1 - best["p50_ms"] / widest["p50_ms"],
            "throughput_gain": best["queries_per_s"] / widest["queries_per_s"]}


def width_for_recall(rows: list[dict], k: int, target: float) -> int | None:
    """Smallest width reaching `target` Recall@k (None if none does)."""
    df = pd.DataFrame(rows).drop_duplicates("width").sort_values("width")
    hit = df[df[f"recall@{k}"] >= target]
    return int(hit.iloc[0]["width"]) if len(hit) else None


def mode_workspace(src, mode: str, embedder: str = "minilm", device: str = "cpu", root=None):
    """workspaces/bench-beam-<mode>: `src`'s tables with SIDs of that mode (cluster | unique) and a
    generator trained with the default recipe; steps already done are kept."""
    from dataclasses import replace
    from pathlib import Path

    from workbench.embed import get_embedder
    from workbench.gen.stages import train_stages
    from workbench.gen.store import gen_dir
    from workbench.pipeline import GEN_EPOCHS, GEN_MODEL, GEN_STAGES, SID_EPOCHS, SID_SIZES, copy_tables
    from workbench.sid.cqsid import CQSIDConfig
    from workbench.sid.rqvae import RQVAEConfig
    from workbench.sid.store import sid_dir
    from workbench.sid.store import train_workspace as train_sids
    from workbench.workspace import Workspace

    ws = Workspace(Path(root or "workspaces") / f"bench-beam-{mode}")
    if not ws.has("products"):
        copy_tables(src, ws)
    if not (sid_dir(ws) / "sids.parquet").exists():
        e = get_embedder(embedder, device)
        cfg = replace(CQSIDConfig(model=RQVAEConfig(input_dim=e.dim, codebook_sizes=SID_SIZES)), epochs=SID_EPOCHS, mode=mode)
        train_sids(ws, cfg, e, device)
    if not (gen_dir(ws) / "generator.safetensors").exists():
        train_stages(ws, GEN_STAGES, "scratch", GEN_MODEL, epochs=GEN_EPOCHS, device=device)
    return ws
