"""Sealing builds each record's hashed text by hand, in one go (it runs for every event
appended): for any event, keyed or not, the hash is exactly the one of the canonical JSON the
chain's format defines, and the one ``record_hash`` (what verification uses) recomputes."""

from __future__ import annotations

import hashlib
import hmac
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.stores.chain import Sealer, record_hash
from corral.stores.records import AuditHead, Event

TEXT = st.text(max_size=12)  # any code point: quotes, controls, NUL, lone surrogates
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
EVENTS = st.builds(
    Event,
    run_id=TEXT,
    seq=st.integers(0, 2**40),
    kind=TEXT,
    at=st.floats(allow_nan=False, allow_infinity=False),
    data=st.dictionaries(TEXT, VALUES, max_size=5),
    tenant=st.none() | TEXT,
    actor=st.none() | TEXT,
)


def _reference(key: bytes | None, mode: str, seq: int, prev: str, e: Event, data: object) -> str:
    """The hash as the format states it: of the canonical JSON of the whole record list."""
    items = [1, seq, prev, mode, e.run_id, e.seq, e.kind, float(e.at), e.tenant, e.actor, data]
    text = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    message = text.encode("utf-8", "surrogatepass")
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(EVENTS, min_size=1, max_size=4),
    key=st.none() | st.binary(min_size=1, max_size=8),
    head=st.integers(0, 2**40),
)
def test_sealed_hashes_are_those_of_the_canonical_record(
    events: list[Event], key: bytes | None, head: int
) -> None:
    """Every sealed event's hash is the canonical record's, chained, and verifies."""
    sealer = Sealer(key)
    prev = "f" * 64
    records = sealer.seal(AuditHead(seq=head, hash=prev), events)
    for n, (event, record) in enumerate(zip(events, records, strict=True), start=1):
        assert record.seq == head + n and record.prev_hash == prev
        assert record.hash == _reference(key, sealer.mode, record.seq, prev, event, record.data)
        assert record.hash == record_hash(record, key)
        prev = record.hash
