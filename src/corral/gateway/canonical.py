"""Canonical JSON of a call's arguments and its digest: what keys the read cache, approvals,
idempotency and the audit of every outcome.

Imports nothing of corral.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
)
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)


def canonical(args: Mapping[str, Any]) -> str:
    """The canonical JSON of ``args``: sorted keys, no spaces, UTF-8 kept as is."""
    if _C_ENCODER is None or type(args) is not dict:  # no C encoder, or not a plain dict
        return _CANONICAL.encode(args)
    # What _CANONICAL.encode does for a dict, without rebuilding its options on every call:
    # the C encoder with the same settings, and its own circular-reference markers (a fresh
    # dict per call, so threads never share them).
    encode = _C_ENCODER({}, str, json.encoder.encode_basestring, None, ":", ",", True, False, True)
    return "".join(encode(args, 0))


def args_digest(args: Mapping[str, Any], *, text: str | None = None) -> str:
    """SHA-256 of the canonical JSON of ``args`` (pass ``text`` if already computed)."""
    return hashlib.sha256((canonical(args) if text is None else text).encode()).hexdigest()
