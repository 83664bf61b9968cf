"""Generator artifacts in a workspace.

    <workspace>/gen/
      tokenizer-<key>.json        text tokenizers by key (WordPiece trained here, or MiniLM's): each
                                  generator's config names its own, so generators never share one
      <name>.safetensors          weights; metadata: kind "generator", GenConfig JSON, the SID
                                  fingerprint, the training run id

The SID fingerprint is a hash of the CQ-SID weights file: codes mean something only for the RQ-VAE
that produced them, so a generator trained on other SIDs is refused rather than decoding nonsense.
Adding products to existing SIDs (`workbench sid assign`) keeps the fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from workbench import checkpoint
from workbench.gen.model import GenConfig, Generator
from workbench.gen.tokenizer import TextTokenizer, load_tokenizer
from workbench.sid.store import sid_dir
from workbench.workspace import Workspace


def gen_dir(ws: Workspace) -> Path:
    return ws.path / "gen"


def sid_fingerprint(ws: Workspace) -> str:
    path = sid_dir(ws) / "rqvae.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"workspace {ws.path} has no SID model ({path}); train one with `workbench sid train`")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def tokenizer_path(ws: Workspace, key: str) -> Path:
    return gen_dir(ws) / f"tokenizer-{key}.json"


def save(ws: Workspace, model: Generator, tok: TextTokenizer, name: str = "generator", extra: dict | None = None,
         **meta) -> Path:
    tok.save(tokenizer_path(ws, tok.key))
    path = gen_dir(ws) / f"{name}.safetensors"
    checkpoint.save(path, model, model.cfg, kind="generator", extra=extra, sid_fingerprint=sid_fingerprint(ws), **meta)
    return path


def load(ws: Workspace, name: str = "generator", device: str = "cpu") -> tuple[Generator, TextTokenizer, dict]:
    path = gen_dir(ws) / f"{name}.safetensors"
    if not path.exists():
        have = sorted(p.stem for p in gen_dir(ws).glob("*.safetensors"))
        raise FileNotFoundError(f"workspace {ws.path} has no generator {name!r} ({path}); "
                                f"{'it has ' + ', '.join(have) if have else 'train one with `workbench train`'}")
    state, cfg, meta = checkpoint.load(path, GenConfig, kind="generator", device=device)
    if meta.get("sid_fingerprint") != sid_fingerprint(ws):
        raise checkpoint.CheckpointError(f"{path}: trained on other SIDs than the workspace's current ones "
                                         "(the CQ-SID model changed since); retrain with `workbench train`")
    tok = load_tokenizer(tokenizer_path(ws, cfg.tokenizer), device, ws.cache_dir / "embeddings")
    if tok.key != cfg.tokenizer:
        raise checkpoint.CheckpointError(f"{path}: built for tokenizer {cfg.tokenizer!r}, the workspace has {tok.key!r}")
    model = Generator(cfg, pretrained=False)
    checkpoint.load_into(model, state, path)
    return model.to(device).eval(), tok, meta
