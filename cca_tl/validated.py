"""Configs checked when they are made: each field against its type annotation (``Literal`` choices, ``int``,
``float``, ``list[...]``, ``None`` where optional) and the range bounds in its metadata.

The run config's sections (:mod:`cca_tl.pipeline.config`) and the weight-sparse training config
(:class:`cca_tl.sparse.SparseTrainConfig`) are :class:`Validated` dataclasses; fields with bounds are made
with :func:`positive` or :func:`bounded`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any, Literal


def positive(default: int) -> Any:
    """A field that must be at least 1."""
    return field(default=default, metadata={"min": 1})


def bounded(default: Any, **bounds: float) -> Any:
    """A field with range bounds: ``min`` / ``max`` (inclusive), ``above`` (exclusive); on a list, each item."""
    return field(default=default, metadata=bounds)


def out_of_range(name: str, value: Any, bounds: dict) -> str | None:
    """Why ``value`` (or an item of it) is out of ``bounds``, or None when it is in range."""
    items = value if isinstance(value, list) else [value]
    words = []
    if "min" in bounds:
        words.append(f"at least {bounds['min']}")
    if "above" in bounds:
        words.append(f"above {bounds['above']}")
    if "max" in bounds:
        words.append(f"at most {bounds['max']}")
    for item in items:
        if item is None:
            continue
        if (("min" in bounds and item < bounds["min"]) or ("above" in bounds and item <= bounds["above"])
                or ("max" in bounds and item > bounds["max"])):
            each = "each item of " if isinstance(value, list) else ""
            return f"{each}{name} must be {' and '.join(words)}, not {value!r}"
    return None


class Validated:
    """A dataclass base that checks every field against its annotation and its bounds when it is made (and
    on ``dataclasses.replace``): a typo or a nonsense value is refused naming the field, before any work."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                if not isinstance(value, hints[f.name]):
                    raise ValueError(f"{f.name} must be a {hints[f.name].__name__}, not {value!r}")
                continue  # a section validated itself
            if not _fits(value, hints[f.name]):
                raise ValueError(_mismatch(f.name, value, hints[f.name]))
            problem = out_of_range(f.name, value, f.metadata)
            if problem:
                raise ValueError(problem)


def _fits(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _mismatch(name: str, value: Any, annotation: Any) -> str:
    literals = _literal_choices(annotation)
    if typing.get_origin(annotation) is list or list in map(typing.get_origin, typing.get_args(annotation)):
        return f"{name} must be a list of {literals or 'values of ' + _type_name(annotation)}, not {value!r}"
    if literals:
        return f"{name} must be one of {literals}, not {value!r}"
    return f"{name} must be {_type_name(annotation)}, not {value!r}"


def _literal_choices(annotation: Any) -> list:
    """The choices of every ``Literal`` inside ``annotation`` (through ``list[...]`` and ``| None``)."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [c for a in typing.get_args(annotation) for c in _literal_choices(a)]


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
