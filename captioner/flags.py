"""Command-line flags generated from declared fields (``fields.option``).

``add_flags(parser, cls)`` adds one flag per field of a declared dataclass, parsed and bounded
as the field declares (``argtypes``: a bad value is argparse's one line with status 2, e.g.
``argument --beam-size: must be an integer between 1 and 100, got 0``), with the field's help
and default. Flags that are not given stay out of the parsed namespace (``argparse.SUPPRESS``),
so ``given(args, cls)`` returns exactly the values written on the command line: a config is
built from them over its own defaults, or compared with a saved run's (``fields.merge``).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection, Mapping
from typing import Any

from .argtypes import float_range, int_range
from .fields import choice_names, flag_name, hints, spec_of


def _base(hint: Any) -> Any:
    """``X`` of ``X | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else hint


def _parser(hint: Any, f: dataclasses.Field):
    s = spec_of(f)
    if s.parse is not None:
        return s.parse
    kind = _base(hint)
    if kind is int:
        lo = None if s.min is None else int(s.min) + (1 if s.min_open else 0)
        hi = None if s.max is None else int(s.max) - (1 if s.max_open else 0)
        return int_range(lo, hi)
    if kind is float:
        return float_range(s.min, s.max, finite=s.finite, min_exclusive=s.min_open,
                           max_exclusive=s.max_open)
    if kind is str:
        return str
    raise TypeError(f"field {f.name} of type {hint} needs flag='' or parse=")


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, *, prefix: str = "",
              dest: str = "", skip: Collection[str] = (), defaults: Mapping[str, Any] | None = None,
              help_prefix: str = "") -> None:
    """Add a flag for every declared field of ``cls`` (to a parser or argument group), except
    those in ``skip`` and those declared with ``flag=""``. ``prefix`` goes into generated flag
    names (``--hard-baseline``), ``dest`` before each namespace name; ``defaults`` overrides
    the defaults shown in the help (a dataset format's own ``--min-count``)."""
    for f in dataclasses.fields(cls):
        s = spec_of(f)
        if f.name in skip or s.flag == "" or "spec" not in f.metadata:
            continue
        hint = hints(cls)[f.name]
        default = (defaults or {}).get(f.name, f.default)
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        name = flag_name(f, prefix)
        text = help_prefix + s.help
        common = {"dest": dest + f.name, "default": argparse.SUPPRESS}
        if s.required:
            common["required"] = True
        if hint is bool:  # a switch: --name turns it on, --no-name (default on) off
            parser.add_argument(name, action="store_false" if default else "store_true",
                                help=text, **common)
            continue
        choices = choice_names(s) if s.choices is not None else None
        # None, "" or no default: the help says what happens
        shown = "" if default in (None, "", dataclasses.MISSING) else f" (default: {default})"
        metavar = s.metavar or (None if choices else f.name.upper())
        if choices and s.metavar:  # the metavar hides them: the help lists them
            text += f" ({', '.join(choices)})"
        parser.add_argument(name, type=_parser(hint, f), choices=choices, metavar=metavar,
                            help=(text + shown).replace("%", "%%"), **common)


def given(args: argparse.Namespace, cls: type, dest: str = "") -> dict[str, Any]:
    """The values of ``cls``'s fields given on the command line (by field name)."""
    values = vars(args)
    return {f.name: values[dest + f.name] for f in dataclasses.fields(cls)
            if dest + f.name in values}
