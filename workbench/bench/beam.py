"""Beam search benchmarks: speed against the peer, and beam width against recall.

- `speed`: our constrained and unconstrained beam search, fp32 and bf16, side by side with Hugging
  Face `generate` on a T5 of the same dimensions with `prefix_allowed_tokens_fn` over a trie, on a
  random model and a random index (speed does not depend on training). Cases are interleaved round by
  round so a noisy neighbour slows them all alike; medians are reported. Also the achieved FLOP/s of
  decoding against a plain matmul of the decoder's MLP shape measured in the same run.
- `mode_workspace`: the demo recipe's SIDs and generator in cluster or unique ID mode, for the width
  sweep (`workbench.eval.width`) of both side by side.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from workbench.embed import get_embedder
from workbench.gen.beam import beam_search
from workbench.gen.config import GenConfig
from workbench.gen.model import Generator
from workbench.gen.stages import train_stages
from workbench.gen.trie import compile_trie
from workbench.pipeline import check, copy_tables
from workbench.recipes import get
from workbench.sid.index import SIDIndex
from workbench.sid.store import train_workspace as train_sids
from workbench.workspace import Workspace


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


def mode_workspace(src, mode: str, embedder: str = "minilm", device: str = "cpu", root=None, recipe: str = "demo"):
    """workspaces/bench-beam-<mode>: `src`'s tables with SIDs of that mode (cluster | unique) and a
    generator trained with `recipe`; steps already done are kept."""
    from dataclasses import replace
    from pathlib import Path

    r = get(recipe)
    ws = Workspace(Path(root or "workspaces") / f"bench-beam-{mode}")
    if not ws.has("products"):
        copy_tables(src, ws)
    if check(ws, "sid"):
        e = get_embedder(embedder, device)
        train_sids(ws, replace(r.sid_for(e.dim), mode=mode), e, device)
    if check(ws, "gen"):
        train_stages(ws, r.gen, device=device)
    return ws
