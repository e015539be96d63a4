"""Checks of what ulfine reads back from disk (checkpoint state, model folders): types, ranges,
and one line that says what is damaged and what to do.

Why one small layer: a run folder or a model folder can be cut short, edited by hand or come from
someone else. Read as trusted, a damaged field surfaces far away (a ``KeyError`` in the optimiser,
a step counter of 10**12 that "finishes" a run, a 100000-pixel input size that allocates 30 GB).
Each reader checks its fields here, right after reading, and every failure is a
:class:`~ulfine.errors.DataError` naming the file, the field, the value and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import DataError


def damaged(source: object, field: str, problem: str, fix: str) -> DataError:
    """The one-line error of a damaged field: ``SOURCE: FIELD PROBLEM; the file is damaged: FIX``."""
    return DataError(f"{source}: {field} {problem}; the file is damaged or was edited: {fix}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def need_mapping(data: Any, source: object, field: str, fix: str, str_keys: bool = True) -> Mapping[Any, Any]:
    """``data`` itself when it is a mapping (with string keys unless ``str_keys`` is false)."""
    if not isinstance(data, Mapping) or str_keys and not all(isinstance(k, str) for k in data):
        raise damaged(source, field, f"must be a mapping (got {type(data).__name__})", fix)
    return data


def need_int(data: Mapping[str, Any], key: str, source: object, fix: str, low: int = 0,
             high: int | None = None, prefix: str = "") -> int:
    """``data[key]`` as an int in ``[low, high]`` (booleans are not numbers here)."""
    name = prefix + key
    if key not in data:
        raise damaged(source, name, "is missing", fix)
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise damaged(source, name, f"must be an integer (got {_shown(value)})", fix)
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise damaged(source, name, f"must be {bound} (got {value})", fix)
    return value


def need_number(data: Mapping[str, Any], key: str, source: object, fix: str, low: float = 0.0,
                prefix: str = "") -> float:
    """``data[key]`` as a finite number ``>= low``."""
    name = prefix + key
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise damaged(source, name, f"must be a finite number >= {low:g} (got {_shown(value)})", fix)
    return float(value)


def need_str(data: Mapping[str, Any], key: str, source: object, fix: str, prefix: str = "") -> str:
    """``data[key]`` as a non-empty string."""
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise damaged(source, prefix + key, f"must be a non-empty string (got {_shown(value)})", fix)
    return value


def need_bool(data: Mapping[str, Any], key: str, source: object, fix: str, prefix: str = "") -> bool:
    """``data[key]`` as a boolean."""
    value = data.get(key)
    if not isinstance(value, bool):
        raise damaged(source, prefix + key, f"must be true or false (got {_shown(value)})", fix)
    return value


def need_list(data: Mapping[str, Any], key: str, source: object, fix: str, item: type | tuple[type, ...],
              length: int | None = None, prefix: str = "") -> list[Any]:
    """``data[key]`` as a list of ``item`` values (of ``length`` when given)."""
    name = prefix + key
    value = data.get(key)
    if not isinstance(value, list):
        raise damaged(source, name, f"must be a list (got {_shown(value)})", fix)
    bad = [v for v in value if isinstance(v, bool) and item is not bool or not isinstance(v, item)]
    if bad:
        raise damaged(source, name, f"holds {_shown(bad[0])}, not a {getattr(item, '__name__', item)}", fix)
    if length is not None and len(value) != length:
        raise damaged(source, name, f"has {len(value)} entries, expected {length}", fix)
    return value


__all__ = ["damaged", "need_bool", "need_int", "need_list", "need_mapping", "need_number", "need_str"]
