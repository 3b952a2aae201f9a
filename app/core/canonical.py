"""Canonical JSON: the byte form in which results are compared, hashed and stored."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

#: orjson would write datetimes and dataclasses, which the standard library refuses;
#: passing them through makes it raise, so the standard library decides (and raises).
_ORJSON = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def canonical_json(obj: Any) -> bytes:
    """UTF-8 JSON with sorted keys, no whitespace, no NaN/Infinity.

    The standard library's form is the definition. orjson writes the same bytes for
    strings, 64-bit integers, booleans and null (a property test holds it to that) in a
    tenth of the time, so it takes every value without floats, whose repr it spells
    differently (1e-05 against 1e-5). (Gaps: orjson writes a UUID or an Enum, which the
    standard library refuses; results are JSON values, so none ever holds one.)
    """
    if not _has_float(obj):
        try:
            return orjson.dumps(obj, option=_ORJSON)
        except TypeError:  # orjson.JSONEncodeError is one
            pass  # integers beyond 64 bits, non-string keys: the standard library decides
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


def _has_float(obj: Any) -> bool:
    if isinstance(obj, float):
        return True
    if isinstance(obj, dict):
        return any(_has_float(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_float(v) for v in obj)
    return False


def sha256_hex(obj: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of `obj`."""
    return hashlib.sha256(canonical_json(obj)).hexdigest()
