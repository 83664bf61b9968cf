"""Option parsers shared by the CLI's verbs."""

from __future__ import annotations

import click


def ints(text: str) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16), every value >= 1; otherwise a click.BadParameter naming the text."""
    try:
        out = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers, e.g. 1,4,16") from None
    if min(out) < 1:
        raise click.BadParameter(f"{text!r}: values must be >= 1")
    return out
