"""HTTP query parameters generated from declared fields: ``query_dependency(DecodeOptions)`` is
a FastAPI dependency with one ``Query`` parameter per field declared ``http=True``, typed, with
the field's default, bounds (narrowed by the service's ``limits``), choices and help, so the
API, its OpenAPI page and its checks follow the one declaration. It returns the values given,
by field name."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from fastapi import Query

from ..fields import choice_names, hints, spec_of


def query_dependency(cls: type, limits: Mapping[str, float] | None = None
                     ) -> Callable[..., dict[str, Any]]:
    """A dependency parsing ``cls``'s HTTP fields from the query string; ``limits`` lowers a
    field's upper bound (the service's own cap, e.g. a beam size)."""
    params = []
    for f in dataclasses.fields(cls):
        s = spec_of(f)
        if not s.http:
            continue
        kind = hints(cls)[f.name]
        if s.choices is not None:
            kind = Literal[tuple(choice_names(s))]
        high = min(x for x in (s.max, (limits or {}).get(f.name)) if x is not None) \
            if s.max is not None or f.name in (limits or {}) else None
        bounds = {}
        if s.min is not None:
            bounds["gt" if s.min_open else "ge"] = s.min
        if high is not None:
            bounds["lt" if s.max_open and high == s.max else "le"] = high
        query = Query(description=s.help, **bounds)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=f.default, annotation=Annotated[kind, query]))

    def values(**given: Any) -> dict[str, Any]:
        return given

    values.__signature__ = inspect.Signature(params)  # what FastAPI reads
    return values


__all__ = ["query_dependency"]
