"""Options shared by the verbs, and options derived from config dataclasses.

`config_options(Cls, "epochs", "model.codebook_sizes", ...)` makes one click option per (dotted)
field: `--epochs`, `--codebook-sizes`; its default is the field's default, its help the comment beside
the field (`workbench.config.field_help`), its type the field's annotation (tuples of ints are written
`1,4,16`). So a default and its meaning are stated once, next to the field. `apply(ctx, cfg, kw)` then
overlays on `cfg` (a recipe's config, or the class default) only the options the user gave: a named
recipe sets the rest.
"""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import click
from click.core import ParameterSource

from workbench.config import field_default, field_doc, field_type, replace_path, replace_paths
from workbench.gen import names as gen_names
from workbench.recipes import RECIPES
from workbench.workspace import Workspace


def ints(text: str, low: int = 1) -> tuple[int, ...]:
    """'1,4,16' -> (1, 4, 16), every value >= `low`; otherwise a click.BadParameter naming the text."""
    try:
        out = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated integers, e.g. 1,4,16") from None
    if min(out) < low:
        raise click.BadParameter(f"{text!r}: values must be >= {low}")
    return out


def p99_budgets(text: str) -> tuple[float, ...]:
    """'50,250' -> (50.0, 250.0): the --p99-ms latency budgets, each > 0 ms; otherwise a click.BadParameter."""
    try:
        out = tuple(float(b) for b in str(text).split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated milliseconds, e.g. 50,100", param_hint="--p99-ms") from None
    if not all(math.isfinite(b) and b > 0 for b in out):
        raise click.BadParameter(f"{out}: budgets must be > 0 ms and finite", param_hint="--p99-ms")
    return out


def names(text: str) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b')."""
    return tuple(v.strip() for v in str(text).split(",") if v.strip())


class Finite(click.FloatRange):
    """A float option: a finite number (click's FLOAT and FloatRange take nan, and inf above any minimum),
    within the range if one is given."""

    def convert(self, value, param, ctx):
        v = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(v, param, ctx)


FINITE = Finite()


class Name(click.ParamType):
    """A generator's name (`gen.names.check`): refused at parse time, before anything runs."""

    name = "name"

    def convert(self, value, param, ctx):
        try:
            return gen_names.check(value, "name")
        except ValueError as e:
            self.fail(str(e), param, ctx)


NAME = Name()


def writes(f=None, *, to: str | None = None):
    """A verb that writes its workspace runs holding the workspace's writer lock (`Workspace.writer`): a
    second writer is refused at once, naming the one writing. `to`: the option that, when given, names the
    workspace written instead of `-w` (`data synth --out`)."""
    if f is None:
        return functools.partial(writes, to=to)

    @functools.wraps(f)
    def run(*args, **kw):
        ctx = click.get_current_context()
        ws = Workspace(kw[to]) if to and kw.get(to) else ws_of(ctx)
        with ws.writer(ctx.command_path.split(" ", 1)[-1]):
            return f(*args, **kw)
    return run


def ws_of(ctx: click.Context) -> Workspace:
    """The workspace of `-w` (every verb reads it from the root context)."""
    return ctx.find_root().obj["ws"]


def device(text: str) -> str:
    """A torch device name: cpu, mps, cuda or cuda:N; CUDA only where this machine has it (torch is
    asked only when a cuda device is)."""
    text = str(text).strip().lower()
    m = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", text)
    if not m or (m[1] == "cpu" and m[2]):
        raise click.BadParameter(f"{text!r} is not a device: use cpu, cuda, cuda:N or mps")
    if m[1] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter(f"{text!r}: CUDA is not available on this machine (use --device cpu)")
        if m[2] and int(m[2]) >= torch.cuda.device_count():
            raise click.BadParameter(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s), cuda:0 and up")
    if m[1] == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise click.BadParameter(f"{text!r}: MPS is not available on this machine (use --device cpu)")
    return text


def device_option(help: str = "Torch device (cpu, cuda, cuda:1...).", default: str = "cpu"):
    return click.option("--device", default=default, show_default=True, help=help,
                        callback=lambda ctx, param, value: device(value))


def embedder_option(help: str = "minilm, hashing[-DIM], or tuned (the workspace's fine-tuned encoder, `workbench dense train`).", default: str | None = "minilm"):
    return click.option("--embedder", default=default, show_default=default is not None, help=help)


def recipe_option(what: str):
    return click.option("--recipe", type=click.Choice(list(RECIPES)), default="default", show_default=True,
                        help=f"Named settings for {what} (`workbench recipes` lists them); options given here override it.")


@dataclass(frozen=True)
class Spec:
    path: str  # dotted field of the config class
    flag: str  # --option-name
    param: str  # the Python name click passes


def _spec(path: str, flag: str | None) -> Spec:
    return Spec(path, flag or "--" + path.rsplit(".", 1)[-1].replace("_", "-"), path.replace(".", "__"))


def _click_type(t, choices):
    if choices is not None:
        return click.Choice(list(choices)), None
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is tuple and args and args[0] is int:
        return ints, lambda v: ",".join(map(str, v))
    if origin is tuple:
        return names, lambda v: ",".join(map(str, v))
    if origin in (typing.Union, types.UnionType):
        t = next(a for a in args if a is not type(None))
    return {int: int, float: FINITE, str: str}.get(t, str), None


def config_options(cls, *paths: str, flags: dict[str, str] | None = None, help: dict[str, str] | None = None,
                   choices: dict[str, tuple] | None = None):
    """Click options for the (dotted) fields `paths` of dataclass `cls` (see the module docstring)."""
    flags, help, choices = flags or {}, help or {}, choices or {}

    def deco(f):
        for path in reversed(paths):
            s = _spec(path, flags.get(path))
            t, default = field_type(cls, path), field_default(cls, path)
            text = help.get(path) or field_doc(cls, path)
            text = text[:1].upper() + text[1:] + ("" if not text or text.endswith(".") else ".")
            if t is bool:  # a field that defaults to True can be turned off: --x/--no-x
                flag = f"{s.flag}/--no-{s.flag[2:]}" if default else s.flag
                f = click.option(flag, s.param, is_flag=True, default=default, show_default=bool(default), help=text)(f)
                continue
            ctype, show = _click_type(t, choices.get(path))
            f = click.option(s.flag, s.param, type=ctype, default=show(default) if show and default is not None else default,
                             show_default=default is not None, help=text)(f)
        return f
    return deco


def given(ctx: click.Context, param: str) -> bool:
    """Whether the user set option `param` (on the command line or through the environment)."""
    return ctx.get_parameter_source(param) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


def apply(ctx: click.Context, cfg, kw: dict):
    """`cfg` with every config option in `kw` that the user gave set at its dotted field; the options
    that are fields of `cfg` are popped from `kw`, the others left there. All are set at once, so
    that options checked against each other (--fusions and --fusion-reference) can be given together."""
    changes = {}
    for param in list(kw):
        path = param.replace("__", ".")
        try:
            field_type(type(cfg), path)
        except (KeyError, TypeError, AttributeError):
            continue  # not a field of this config
        value = kw.pop(param)
        if given(ctx, param):
            changes[path] = value
    return replace_paths(cfg, changes)


def path_option(*decls, **kw):
    return click.option(*decls, type=click.Path(dir_okay=False, path_type=Path), **kw)


def set_fields(cfg, pairs: tuple[str, ...]):
    """`cfg` with each 'dotted.field=value' of `pairs` set, the value parsed by the field's type
    (tuples as 1,2,3); an unknown field or a bad value is a click.BadParameter naming it."""
    for pair in pairs:
        path, sep, text = pair.partition("=")
        try:
            t = field_type(type(cfg), path)
        except (KeyError, TypeError, AttributeError):
            raise click.BadParameter(f"{path!r} is not a setting of {type(cfg).__name__}", param_hint="--set") from None
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected FIELD=VALUE, e.g. gen.pseudo=0", param_hint="--set")
        parse = (lambda v: v.lower() in ("1", "true", "yes")) if t is bool else _click_type(t, None)[0]
        try:
            cfg = replace_path(cfg, path, parse(text))
        except (ValueError, TypeError, click.BadParameter) as e:
            raise click.BadParameter(f"{pair!r}: {e}", param_hint="--set") from None
    return cfg
