"""Frozen dataclass configs to and from JSON: what checkpoints and the logbook store.

`to_dict(cfg)` is `dataclasses.asdict`; `from_dict(Cls, d)` rebuilds nested configs and tuples and
rejects keys the class does not have (a checkpoint from another version or another component).
`field_help(Cls)` reads each field's documentation from the comment beside it (`lr: float = 1e-3  #
...`), so a default and its meaning are written once, next to the field, and the CLI's options and
`--help` are derived from them. `get_path` / `replace_path` reach nested configs by dotted name. `positive(cfg, "lr", ...)` is the
check a config's `__post_init__` makes of its learning rates, batch sizes and epochs.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import io
import json
import math
import textwrap
import tokenize
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


@functools.cache
def field_help(cls) -> dict[str, str]:
    """{field: the comment on its line (or the comment lines right above it)} for a dataclass."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (e.g. a frozen install): options go without help
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out, above, line_of = {}, [], {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if tok.line.strip().startswith("#"):
                above.append(text)
            elif tok.start[0] in line_of:
                out[line_of[tok.start[0]]] = text
        elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
            line_of.setdefault(tok.start[0], tok.string)
            if above:
                out[tok.string] = " ".join(above)
        if tok.type == tokenize.NL and not tok.line.strip().startswith("#"):
            above = []
        elif tok.type == tokenize.NEWLINE:
            above = []
    return out


def get_path(cfg, path: str):
    """cfg.a.b for path 'a.b'."""
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def replace_path(cfg, path: str, value):
    """A copy of `cfg` with the (nested) field at dotted `path` set to `value`."""
    return replace_paths(cfg, {path: value})


def replace_paths(cfg, changes: dict):
    """A copy of `cfg` with every (nested) field at a dotted path of `changes` set to its value, each
    config built once: a check across fields (`__post_init__`) sees all the new values together."""
    top, nested = {}, {}
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    top.update({head: replace_paths(getattr(cfg, head), sub) for head, sub in nested.items()})
    return dataclasses.replace(cfg, **top)


def field_type(cls, path: str):
    """The annotation of the (nested) field at dotted `path` of dataclass `cls`."""
    head, _, rest = path.partition(".")
    t = typing.get_type_hints(cls)[head]
    return field_type(t, rest) if rest else t


def field_default(cls, path: str):
    """The default of the (nested) field at dotted `path` of dataclass `cls` (its default instance's value)."""
    head, _, rest = path.partition(".")
    f = {f.name: f for f in dataclasses.fields(cls)}[head]
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return get_path(value, rest) if rest else value


def field_doc(cls, path: str) -> str:
    head, _, rest = path.partition(".")
    return field_doc(typing.get_type_hints(cls)[head], rest) if rest else field_help(cls).get(head, "")


def positive(cfg, *names: str) -> None:
    """A ValueError naming every field of `cfg` in `names` that is not a finite number > 0 (a learning
    rate of -5, 0 or NaN, a batch size or epoch count of 0, would otherwise train and save garbage)."""
    def ok(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    bad = [f"{n}={getattr(cfg, n)!r}" for n in names if not ok(getattr(cfg, n))]
    if bad:
        raise ValueError(f"{type(cfg).__name__}: {', '.join(bad)}: must be a finite number > 0")
