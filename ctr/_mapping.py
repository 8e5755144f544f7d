"""Strict construction of config dataclasses from YAML/JSON mappings.

Configs are hand-written, so a typo must fail loudly with the key path (``train.lr``) instead of silently
falling back to a default. Values are checked against the dataclass type hints; the only conversion is
string → float, because YAML 1.1 reads ``1e-3`` (no dot) as a string.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kar.contracts.errors import DataError

T = TypeVar("T")
# Builds one nested value from its raw form and its key path.
NestedBuilder = Callable[[Any, str], Any]


def from_mapping(cls: type[T], raw: object, *, where: str, nested: Mapping[str, NestedBuilder] | None = None) -> T:
    """Build dataclass ``cls`` from ``raw``, rejecting unknown or missing keys and wrongly typed values.

    Args:
        cls: A dataclass type.
        raw: The parsed YAML/JSON value.
        where: Key path of ``raw`` for error messages.
        nested: Builders for fields whose values are themselves structured (by field name).

    Raises:
        DataError: Naming the key path and what is wrong with it.
    """
    raw = require_mapping(raw, where=where)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [key for key in raw if key not in fields]
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r} (expected one of: {', '.join(fields)})")
    missing = [name for name, f in fields.items() if name not in raw and _is_required(f)]
    if missing:
        raise DataError(f"{where}: missing key {missing[0]!r}")
    hints = typing.get_type_hints(cls)
    builders = nested or {}
    values = {
        key: builders[key](value, f"{where}.{key}") if key in builders else coerce(value, hints[key], f"{where}.{key}")
        for key, value in raw.items()
    }
    return cls(**values)


def require_mapping(raw: object, *, where: str) -> Mapping[str, Any]:
    """Return ``raw`` if it is a mapping with string keys, else raise a one-line error."""
    if not isinstance(raw, Mapping) or not all(isinstance(key, str) for key in raw):
        raise DataError(f"{where}: expected a mapping of names to values, got {raw!r}")
    return raw


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a type hint (scalars, ``X | None``, ``tuple[X, ...]``, ``dict``, ``Any``)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) != 1:
            raise TypeError(f"unsupported config type {hint}")
        return coerce(value, options[0], where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise DataError(f"{where}: expected a list, got {value!r}")
        (item_hint, _ellipsis) = typing.get_args(hint)
        return tuple(coerce(item, item_hint, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is dict or hint is dict:
        return dict(require_mapping(value, where=where))
    if hint is Any:
        return value
    return _scalar(value, hint, where)


def _scalar(value: Any, hint: type, where: str) -> Any:
    if hint is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise DataError(f"{where}: expected {hint.__name__}, got {value!r}")


def _is_required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
