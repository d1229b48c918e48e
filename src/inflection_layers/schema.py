"""The rules params.yaml is checked by: typed fields, value rules, and the builder that turns a YAML mapping into a
frozen dataclass, naming the full key, the value and what is allowed in every error (:class:`ParamError`).

A field is ``Annotated[T, rule, ...]`` or a plain type; a rule has ``ok(value)`` and ``allowed(type text)``.
Unknown, missing and mistyped keys are errors; nothing has a default (nanoGPT: ``raise ValueError(f"Unknown config
key: {key}")``; peft: refuse bad combinations in ``__post_init__``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Union

from inflection_layers.errors import ParamError


@dataclasses.dataclass(frozen=True)
class AtLeast:
    """A number >= low (None passes where the type allows it)."""

    low: float

    def ok(self, v: Any) -> bool:
        return v is None or (all(x >= self.low for x in v) if isinstance(v, list) else v >= self.low)

    def allowed(self, tp: str) -> str:
        return f"{tp} >= {self.low:g}" + (" each" if tp.startswith("a value of type list") else "")


@dataclasses.dataclass(frozen=True)
class Between:
    """A number in an interval; `brackets` gives its ends, e.g. "(]" for lo < v <= hi."""

    lo: float
    hi: float
    brackets: str

    def ok(self, v: Any) -> bool:
        if v is None:
            return True
        low = v >= self.lo if self.brackets[0] == "[" else v > self.lo
        high = v <= self.hi if self.brackets[1] == "]" else v < self.hi
        return low and high

    def allowed(self, tp: str) -> str:
        return f"{tp} in {self.brackets[0]}{self.lo:g}, {self.hi:g}{self.brackets[1]}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of a few values; for a list, every item (and, with `unique`, no repeats and not empty)."""

    values: tuple | None = None
    unique: bool = False
    empty: bool = False  # an empty list is allowed

    def ok(self, v: Any) -> bool:
        items = v if isinstance(v, list) else [v]
        fine = self.values is None or all(x in self.values for x in items)
        return fine and (not self.unique or ((len(items) > 0 or self.empty) and len(set(items)) == len(items)))

    def allowed(self, tp: str) -> str:
        among = f"values among {list(self.values)}" if self.values is not None else ""
        if not self.unique:
            return f"one of {list(self.values)}"
        return ("a list" if self.empty else "a non-empty list") + " without repeats" + (f" of {among}" if among else "")


@dataclasses.dataclass(frozen=True)
class CountOr:
    """An integer >= 1, or one word ('all', 'auto')."""

    word: str

    def ok(self, v: Any) -> bool:
        return v == self.word or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)

    def allowed(self, tp: str) -> str:
        return f"an integer >= 1 or '{self.word}'"


RATE = Between(0, 1, "()")
POSITIVE = AtLeast(1)
NONNEGATIVE = AtLeast(0)
Count = Annotated[int, POSITIVE]


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ParamError(key, value, allowed)


def _split(tp: Any) -> tuple[Any, tuple]:
    """(the type, its rules) of a field annotation, ``Annotated[T, rule, ...]`` or a plain type."""
    if typing.get_origin(tp) is Annotated:
        base, *rules = typing.get_args(tp)
        return base, tuple(rules)
    return tp, ()


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether a YAML value fits a type (int is not bool; an int is a valid float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if tp is type(None):
        return value is None
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp: Any) -> str:
    names = {
        "int": "an integer",
        "float": "a float",
        "str": "a string",
        "bool": "true or false",
        "int | None": "an integer or null",
        "float | None": "a float or null",
        "str | None": "a string or null",
    }
    text = getattr(tp, "__name__", None) if not isinstance(tp, types.UnionType) else None
    text = text or str(tp).replace("typing.", "")
    return names.get(text, f"a value of type {text}")


def _value(tp: Any, raw: Any, key: str) -> Any:
    """One field's value: a nested dataclass, a mapping of dataclasses, or a value of its type that passes its rules."""
    tp, rules = _split(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, raw, key)
    if typing.get_origin(tp) is dict:
        _, inner = typing.get_args(tp)
        require(isinstance(raw, dict) and bool(raw), key, raw, "a non-empty mapping")
        return {str(k): build(inner, v, f"{key}.{k}") for k, v in raw.items()}
    require(_type_ok(raw, tp), key, raw, _describe(tp))
    nullable = type(None) in typing.get_args(tp)
    for rule in rules:
        require(
            rule.ok(raw),
            key,
            raw,
            rule.allowed(_describe(tp).removesuffix(" or null")) + (", or null" if nullable else ""),
        )
    return float(raw) if tp is float else raw


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Turn a YAML mapping into the dataclass `cls`: unknown, missing and mistyped keys are errors."""
    require(isinstance(raw, dict), prefix or "params.yaml", raw, "a mapping of keys to values")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        require(
            key in fields,
            f"{prefix}.{key}" if prefix else str(key),
            raw[key],
            f"no such key; known keys here: {fields}",
        )
    for key in fields:
        require(
            key in raw,
            f"{prefix}.{key}" if prefix else key,
            "(missing)",
            f"a value: every key is set in conf/config.yaml or a profile ({_describe(_split(hints[key])[0])})",
        )
    return cls(**{key: _value(hints[key], raw[key], f"{prefix}.{key}" if prefix else key) for key in fields})
