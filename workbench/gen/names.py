"""The names of generator checkpoints in `<workspace>/gen/`, made here and nowhere else.

    generator-stage1 -> generator-stage2 -> generator-stage3    the curriculum's stages (`stage`)
    generator                                                   the deployed one (`DEPLOYED`): what search, eval,
                                                                the app, the server and the batch jobs load
    generator-stage4, generator-grpo, generator-eg-grpo         stage 4's refinements (`refined`)
    generator-rank                                              trained further with the rank loss over its beam (`ranked`)
    generator-stage2.partial                                    an interrupted stage: weights and optimizer
                                                                state, resumable, never loaded as a model (`partial`)

`generator` stands for any name a curriculum is trained under (`workbench train --name`).

A name is a name, never a path: `check` refuses separators, `..`, a leading dot and anything but
letters, digits, `.`, `_` and `-`, for every verb, the server and the Python API (`store.checkpoint_path`
checks every name it turns into a file, so nothing reads or writes outside `gen/`).
"""

from __future__ import annotations

import re

VALID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}")  # one path component, at most 120 characters
DEPLOYED = "generator"  # the checkpoint search, eval, the app and the server load unless told another


def check(name, what: str = "generator name") -> str:
    """`name` if it is a name (see the module's docstring), else a ValueError that says why."""
    if not isinstance(name, str) or not VALID.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} {name!r} is not a name: use letters, digits, '.', '_' and '-' (at most 120; no '/', "
                         f"'\\', '..', spaces or a leading '.')")
    return name


def stage(name: str, s: int | str) -> str:
    """Stage `s` of the curriculum deployed as `name`."""
    return f"{name}-stage{s}"


def refined(name: str, how: str, tag: str = "") -> str:
    """`name` refined by stage 4 (`how`: an algorithm, or 'stage4' for the curriculum's own), with a run's tag."""
    return f"{name}-{how}{tag}"


def ranked(name: str) -> str:
    """`name` trained further with the rank loss over its beam (`workbench gen rank`)."""
    return f"{name}-rank"


def partial(name: str) -> str:
    """The resumable state of an interrupted training of `name`."""
    return f"{name}.partial"


def is_partial(name: str) -> bool:
    return name.endswith(".partial")
