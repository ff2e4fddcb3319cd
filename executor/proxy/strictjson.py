"""Strict JSON: the proxy must check exactly what the engine will read.

The engine's decoder (Go's encoding/json) lets the last of two duplicate keys win, matches keys
without regard to case, replaces invalid UTF-8 and ignores whatever follows the first value.
A checker that reads a body differently from the engine can be walked around, so anything the
two readers could disagree on is refused here: duplicate keys at any depth, non-UTF-8 bytes, a
byte order mark, NaN and Infinity, numbers that are not finite or do not fit 64 bits, lone
surrogates, trailing data, deep nesting and oversize input. Case variants are refused by the
policy, which accepts only the exact keys of the sandbox shape.
"""

from __future__ import annotations

import json
import math
from typing import Any

_INT64 = 1 << 63


class StrictJSONError(ValueError):
    """The input is not JSON the proxy is willing to read; the message says why."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJSONError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not JSON")


def _check(value: Any, depth: int, max_depth: int) -> None:
    """Refuse what the decoder let pass but Go would read otherwise: lone surrogates (Go
    replaces them), numbers that are not finite or beyond 64 bits, nesting past max_depth."""
    kind = type(value)
    if kind is str:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise StrictJSONError("a string holds a lone surrogate") from None
    elif kind is int:
        if not -_INT64 <= value < _INT64:
            raise StrictJSONError("integer out of the 64-bit range")
    elif kind is float:
        if not math.isfinite(value):
            raise StrictJSONError("number out of range")
    elif kind is dict or kind is list:
        if depth >= max_depth:
            raise StrictJSONError(f"nested deeper than {max_depth}")
        if kind is dict:
            for key, item in value.items():
                if not key.isascii():
                    _check(key, depth, max_depth)
                _check(item, depth + 1, max_depth)
        else:
            for item in value:
                _check(item, depth + 1, max_depth)


def loads(data: bytes, *, max_bytes: int = 64 * 1024, max_depth: int = 16) -> Any:
    """Decode one JSON value from `data`, or raise StrictJSONError saying why not."""
    if len(data) > max_bytes:
        raise StrictJSONError(f"larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise StrictJSONError(f"not UTF-8 (byte {e.start})") from None
    if text.startswith("\ufeff"):
        raise StrictJSONError("starts with a byte order mark")
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_constant)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as e:
        raise StrictJSONError(f"not JSON: {e.msg} at position {e.pos}") from None
    except RecursionError:
        raise StrictJSONError("nested too deeply") from None
    except ValueError as e:
        raise StrictJSONError(f"not JSON: {e}") from None
    _check(value, 0, max_depth)
    return value
