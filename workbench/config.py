"""Frozen dataclass configs to and from JSON: what checkpoints and the logbook store.

`to_dict(cfg)` is `dataclasses.asdict`; `from_dict(Cls, d)` rebuilds nested configs and tuples and
rejects keys the class does not have (a checkpoint from another version or another component).
"""

from __future__ import annotations

import dataclasses
import json
import typing


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def from_dict(cls, d: dict):
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kw = {}
    for k, v in d.items():
        t = hints[k]
        if dataclasses.is_dataclass(t):
            v = from_dict(t, v)
        elif typing.get_origin(t) is tuple or (typing.get_origin(t) is typing.Union and isinstance(v, list)):
            v = tuple(v)
        kw[k] = v
    return cls(**kw)


def from_json(cls, text: str):
    return from_dict(cls, json.loads(text))
