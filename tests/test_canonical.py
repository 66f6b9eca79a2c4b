"""The canonical JSON of a call's arguments (which keys the cache, approvals, idempotency and
the audited digest) is exactly the standard encoder's, with sorted keys and no spaces."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.gateway.state import args_digest, canonical

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def standard(args: Any) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@given(st.dictionaries(st.text(), values, max_size=6))
def test_canonical_is_the_standard_encoding(args: dict[str, Any]) -> None:
    """Any arguments encode as json.dumps with sorted keys, no spaces, UTF-8 kept, str() default."""
    assert canonical(args) == standard(args)
    assert args_digest(args) == hashlib.sha256(standard(args).encode()).hexdigest()


def test_circular_arguments_are_refused_as_by_the_standard_encoder() -> None:
    """Arguments containing themselves raise the standard encoder's ValueError."""
    args: dict[str, Any] = {"a": 1}
    args["self"] = args
    with pytest.raises(ValueError, match="Circular reference"):
        canonical(args)


def test_a_mapping_that_is_not_a_dict_encodes_the_same() -> None:
    """A dict subclass encodes like the plain dict with the same items."""

    class Args(dict[str, Any]):
        pass

    plain = {"b": Decimal("1.50"), "a": ["é", 2.0]}
    assert canonical(Args(plain)) == canonical(plain) == '{"a":["é",2.0],"b":"1.50"}'
