"""Declare a value once: a dataclass field made with ``option()`` carries, beside its type and
default, its help, its bounds or choices, its command-line flag and where it may change (when a
run is resumed, or with another run's weights). Everything else is generated from that one
declaration:

- ``check(obj)``, called by each declared dataclass's ``__post_init__``, refuses a bad value
  when the object is built, so nothing that trains can fail to load;
- ``build(cls, data)`` builds one from JSON-like data (a checkpoint's header), naming an
  unknown, missing or bad field by its dotted path;
- ``captioner.flags`` turns the fields into argparse flags, ``captioner.serve.query`` into HTTP
  query parameters, and ``merge`` compares given values with saved ones (``--resume``,
  ``--init``).

A new option is one field.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .argtypes import describe_bounds

MISSING = dataclasses.MISSING


class FieldError(ValueError):
    """A value its declaration refuses: ``field`` (a dotted path) and the ``problem``."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class Spec:
    """What a field declares beyond its type and default."""

    help: str = ""
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # the bound itself is refused: > min
    max_open: bool = False  # < max
    #: the allowed values: a collection, or a ``Registry`` (its names, read when checking)
    choices: Collection[str] | None = None
    finite: bool = True  # floats: nan and inf refused
    #: the command-line flag when it is not ``--name-with-dashes``; "" for none
    flag: str | None = None
    metavar: str | None = None
    #: parses the flag's text instead of the type-derived parser (paths: ``argtypes``)
    parse: Callable[[str], Any] | None = None
    required: bool = False  # the flag must be given
    resume: bool = False  # may differ when a run is resumed (its limits, where its data is)
    #: belongs to the command that runs, not to the run (a progress bar): a resume takes the
    #: command's value, its default when not given
    session: bool = False
    weights: bool = False  # the trained weights fix it: a run from --init keeps its model's
    http: bool = False  # a query parameter of the HTTP service


def option(default: Any = MISSING, *, default_factory: Any = MISSING, **spec: Any
           ) -> Any:
    """A dataclass field with its declaration: ``option(5, min=1, max=100, help="...")``.
    ``spec`` are ``Spec``'s fields."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"spec": Spec(**spec)})


def spec_of(f: dataclasses.Field) -> Spec:
    """A field's declaration (an empty one for a plain field)."""
    return f.metadata.get("spec", Spec())


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (cached: they never change)."""
    return typing.get_type_hints(cls)


def bounds_text(s: Spec) -> str:
    """The bounds in words: "between 1 and 100", ">= 0 and < 1", "> 0", or ""."""
    return describe_bounds(s.min, s.max, s.min_open, s.max_open)


def shown(value: Any) -> str:
    """A value as a message shows it: JSON where it can be, at most 60 characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not the integer 1


def _matches(value: Any, hint: Any, finite: bool = True) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return (_is_int(value) or isinstance(value, float)) and not math.isnan(value) and (
            not finite or math.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a, finite) for a in args)
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):  # JSON has lists only
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a, finite)
                                                   for v, a in zip(value, args))
        return not args or all(_matches(v, args[0], finite) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)  # its owner checks what it holds
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)  # it checked itself when built
    return True  # a kind of hint this module does not know: the field's user checks it


def describe(hint: Any, finite: bool = True) -> str:
    """A type in words, for messages: "an integer", "a finite number or null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {bool: "true or false", int: "an integer", str: "a string", type(None): "null",
              float: "a finite number" if finite else "a number"}
    if hint in simple:
        return simple[hint]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a, finite) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values, each {describe(args[0], finite)}"
        return f"a list of values, each {describe(args[0], finite)}" if args else "a list"
    return "an object"


def within(value: float, s: Spec) -> bool:
    """Whether a number lies within the field's bounds."""
    above = s.min is None or (value > s.min if s.min_open else value >= s.min)
    below = s.max is None or (value < s.max if s.max_open else value <= s.max)
    return above and below


def check_value(name: str, value: Any, hint: Any, s: Spec) -> None:
    """Refuse ``value`` for the field ``name`` unless it has the field's type, lies within its
    bounds (each item of a list) and is one of its choices. Raises FieldError."""
    if not _matches(value, hint, s.finite):
        raise FieldError(name, f"must be {describe(hint, s.finite)}, got {shown(value)}")
    items = value if isinstance(value, (list, tuple)) else [value]
    numbers = [v for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(not within(v, s) for v in numbers):
        kind = "an integer" if all(map(_is_int, numbers)) and hint is not float else \
            describe(float, s.finite)
        raise FieldError(name, f"must be {kind} {bounds_text(s)}, got {shown(value)}")
    if s.choices is not None and value is not None and value not in s.choices:
        raise FieldError(name, f"must be one of {', '.join(choice_names(s))}, "
                               f"got {shown(value)}")


def choice_names(s: Spec) -> list[str]:
    """The field's choices as a list (a registry's names, in its order)."""
    names = getattr(s.choices, "names", None)
    return list(names()) if callable(names) else list(s.choices or ())


def check(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against its declaration (its
    ``__post_init__`` calls this). Raises FieldError naming the first bad field."""
    types_ = hints(type(obj))
    for f in dataclasses.fields(obj):
        check_value(f.name, getattr(obj, f.name), types_[f.name], spec_of(f))


def build(cls: type, data: Any, label: str = "") -> Any:
    """``cls(**data)`` for JSON-like ``data`` (a checkpoint header's config): unknown and
    missing fields are refused, lists become the tuples a field holds, nested dataclasses are
    built from their dicts, and every check of ``cls`` runs. A failure is a FieldError naming
    the field by its dotted path under ``label``."""
    where = label.rstrip(".") or cls.__name__
    if not isinstance(data, Mapping):
        raise FieldError(where, f"must be an object, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            raise FieldError(label + name, f"unknown field of {cls.__name__}")
    kwargs = {}
    for name, value in data.items():
        hint = hints(cls)[name]
        nested = [h for h in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(h)]
        if nested and isinstance(value, Mapping):
            value = build(nested[0], value, f"{label}{name}.")
        elif (typing.get_origin(hint) is tuple or hint is tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    for name, f in fields.items():
        if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
            raise FieldError(label + name, "missing")
    try:
        obj = cls(**kwargs)
        check(obj)  # also for a class whose __post_init__ does not
    except FieldError as exc:
        raise FieldError(label + exc.field, exc.problem) from None
    return obj


def flag_name(f: dataclasses.Field, prefix: str = "") -> str:
    """The command-line flag of a field: its declared one, else ``--{prefix}{name}``."""
    s = spec_of(f)
    if s.flag:
        return s.flag
    if f.type in (bool, "bool") and f.default is True:
        return f"--no-{prefix}{f.name}".replace("_", "-")
    return f"--{prefix}{f.name}".replace("_", "-")


def merge(base: Any, given: Mapping[str, Any], may_change: Callable[[Spec], bool],
          prefix: str = "") -> tuple[Any, list[str]]:
    """``base`` (a declared dataclass) with the ``given`` values of the fields that
    ``may_change``, and the conflicts: each given value of another field that differs from
    base's, as ``--flag value (run: saved)``. A nested dict field (``attention_options``) is
    compared key by key, its flags ``--{prefix}{key}``."""
    changes, conflicts = {}, []
    fields = {f.name: f for f in dataclasses.fields(base)}
    for name, value in given.items():
        f, saved = fields[name], getattr(base, name)
        if isinstance(value, Mapping) and isinstance(saved, Mapping):
            if may_change(spec_of(f)):
                changes[name] = {**saved, **value}
            else:
                conflicts += [f"--{prefix}{k}".replace("_", "-") + f" {v} (run: {saved.get(k)})"
                              for k, v in value.items() if saved.get(k) != v]
        elif may_change(spec_of(f)):
            changes[name] = value
        elif value != saved and isinstance(value, bool):  # a switch: which way the run had it
            conflicts.append(f"{flag_name(f)} (run: {name} {'on' if saved else 'off'})")
        elif value != saved:
            conflicts.append(f"{flag_name(f)} {value} (run: {saved})")
    return dataclasses.replace(base, **changes), conflicts
