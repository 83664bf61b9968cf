"""The names of generator checkpoints in `<workspace>/gen/`, made here and nowhere else.

    generator-stage1 -> generator-stage2 -> generator-stage3    the curriculum's stages (`stage`)
    generator                                                   the deployed one (`DEPLOYED`): what search, eval,
                                                                the app, the server and the batch jobs load
    generator-stage4, generator-grpo, generator-eg-grpo         stage 4's refinements (`refined`)
    generator-rank                                              trained further with the rank loss over its beam (`ranked`)
    generator-stage2.partial                                    an interrupted stage: weights and optimizer
                                                                state, resumable, never loaded as a model (`partial`)

`generator` stands for any name a curriculum is trained under (`workbench train --name`).
"""

from __future__ import annotations

DEPLOYED = "generator"  # the checkpoint search, eval, the app and the server load unless told another


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
