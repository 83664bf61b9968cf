"""Weights as safetensors with their config inside: never pickle, never `torch.load`.

    save(path, module, cfg, kind="rqvae", **meta)   # atomic: temp file, then rename
    state, cfg, meta = load(path, Cfg, kind="rqvae")

The file's metadata holds `kind`, the config as JSON, a SHA-256 of the tensors' bytes (`digest`) and any
extra entries (JSON-encoded). `load` refuses a file that is missing, not safetensors, of another kind,
whose config does not parse, whose tensor bytes no longer match the digest (a damaged file) or that
holds a NaN or infinite weight: a damaged model is an error, never a model that decodes nonsense.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from workbench.config import from_json, to_json
from workbench.workspace import Transaction, atomic_write


class CheckpointError(ValueError):
    pass


def digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save(path: str | Path, module: torch.nn.Module, cfg, kind: str, extra: dict | None = None, tx: Transaction | None = None,
         **meta) -> None:
    """`extra`: more tensors to store beside the module's (e.g. optimizer state, under their own prefix);
    `tx`: stage the file in that workspace transaction instead of renaming it into place now."""
    state = {k: v.detach().cpu().contiguous() for k, v in {**module.state_dict(), **(extra or {})}.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: not saved, NaN or infinite values in {', '.join(bad[:5])} (training diverged: "
                              "lower the learning rate)")
    md = {"kind": kind, "config": to_json(cfg), "digest": digest(state), **{k: json.dumps(v, default=str) for k, v in meta.items()}}
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=md), tx)


def metadata(path: str | Path) -> dict[str, str]:
    """A checkpoint's metadata as written (JSON-encoded values), without reading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e


def load(path: str | Path, cfg_cls, kind: str, device: str | torch.device = "cpu") -> tuple[dict, object, dict]:
    md = metadata(path)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    if md.get("kind") != kind:
        raise CheckpointError(f"{path}: a {md.get('kind') or 'unknown'!r} checkpoint, expected {kind!r}")
    if "digest" in md and digest(state) != md["digest"]:
        raise CheckpointError(f"{path}: damaged, its tensor bytes no longer match the checksum written with them; rebuild it")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: NaN or infinite weights in {', '.join(bad[:5])}; rebuild it")
    try:
        cfg = from_json(cfg_cls, md["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: config does not fit {cfg_cls.__name__} ({e})") from e
    extra = {k: json.loads(v) for k, v in md.items() if k not in ("kind", "config", "digest")}
    return state, cfg, extra


def load_into(module: torch.nn.Module, state: dict, path: str | Path) -> None:
    """Load `state` strictly; a missing, extra or mis-shaped tensor is a CheckpointError naming it."""
    own = module.state_dict()
    problems = [f"missing {k}" for k in own if k not in state] + [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in own.items()
                 if k in state and state[k].shape != v.shape]
    if problems:
        raise CheckpointError(f"{path}: tensors do not match the config: " + "; ".join(problems[:5]))
    module.load_state_dict(state)
