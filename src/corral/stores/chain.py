"""The audit chain: how a store seals each event it appends into one hash chain.

Every backend appends the same way, inside the transaction that writes the
events and while holding the chain's head (SQLite's write lock, a PostgreSQL row
lock, the in-memory store's lock), so that any number of appenders in any number
of processes make a single chain:

1. read the head (the last record's ``seq`` and ``hash``);
2. give each event the next ``seq`` and seal it: ``hash`` is SHA-256 (or
   HMAC-SHA256 when keyed) of the canonical JSON of ``[1, seq, prev_hash, mode,
   run_id, event_seq, kind, at, tenant, actor, data]``;
3. write the records and move the head, in the same transaction.

Event data is first brought to :func:`plain` JSON (decimals and other objects as
text, integral floats as integers, NUL characters replaced) and stored in that
form, so that what is read back from any backend hashes exactly as it did when
it was written: the hash is over *values*, never over one database's spelling.

Keyed chains: with ``CORRAL_AUDIT_KEY`` set when the store is opened, records are
sealed with HMAC-SHA256 under that key and their ``mode`` is
``hmac-sha256:<key id>`` (the key id is a hash of the key: it names the key
without revealing it). The key itself is never written anywhere. Without the key
nobody can forge or rewrite a keyed record so that it verifies.

>>> sealer = Sealer()
>>> event = Event(run_id="run_1", seq=1, kind="step", at=1.5, data={"n": 1})
>>> (first,) = sealer.seal(AuditHead(), [event])
>>> first.seq, first.prev_hash == GENESIS, first.mode
(1, True, 'sha256')
>>> first.hash == record_hash(first)
True
"""

from __future__ import annotations

import hashlib
import hmac
import json
import json.encoder
import math
import os
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from corral.stores.base import GENESIS, AuditHead, AuditRecord, Event

#: The environment variable holding the audit key.
KEY_ENV = "CORRAL_AUDIT_KEY"
PLAIN = "sha256"
KEYED = "hmac-sha256"
#: The version of the record encoding, first in every hashed record.
FORMAT = 1

__all__ = [
    "GENESIS",
    "KEYED",
    "KEY_ENV",
    "PLAIN",
    "Sealed",
    "Sealer",
    "key_id",
    "plain",
    "record_hash",
]

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_id(key: str | bytes) -> str:
    """A short public name of ``key``: verification says which key a record needs."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(b"corral-audit-key-id\x00" + raw).hexdigest()[:16]


def plain(value: Any) -> Any:
    """``value`` as plain JSON that every backend stores and reads back unchanged.

    Mappings get text keys; tuples and sets become lists; integral floats become
    integers (PostgreSQL's ``jsonb`` prints ``1e16`` as an integer); NaN and
    infinities, decimals and any other object become text; NUL characters (which
    ``jsonb`` refuses) become U+FFFD.
    """
    kind = type(value)
    if kind is str:
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if value is None or kind is bool or kind is int:
        return value
    if kind is float:
        if value.is_integer():
            return int(value)
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            kind = type(v)
            # The common flat values inline: this runs for every event appended.
            if (kind is str and "\x00" not in v) or v is None or kind is int or kind is bool:
                out[k if type(k) is str and "\x00" not in k else _key(k)] = v
            else:
                out[k if type(k) is str and "\x00" not in k else _key(k)] = plain(v)
        return out
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((plain(v) for v in value), key=_json)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return plain(float(value))
    if isinstance(value, str):
        return plain(str(value))
    if isinstance(value, Decimal):
        return str(value)
    return plain(str(value))


def _key(key: Any) -> str:
    if type(key) is str:
        return plain(key)  # type: ignore[no-any-return]
    text = _json(plain(key))
    return text[1:-1] if text.startswith('"') else text


def _head_text(
    seq: int,
    prev_hash: str,
    mode: str,
    run_id: str,
    event_seq: int,
    kind: str,
    at: float,
    tenant: str | None,
    actor: str | None,
) -> str:
    # Exactly the canonical JSON of [FORMAT, seq, prev_hash, ..., actor], written out by hand:
    # this runs for every event appended.
    s = _string
    return (
        f"[{FORMAT},{int.__repr__(seq)},{s(prev_hash)},{s(mode)},{s(run_id)},"
        f"{int.__repr__(event_seq)},{s(kind)},{_number(at)},"
        f"{'null' if tenant is None else s(tenant)},{'null' if actor is None else s(actor)}]"
    )


def _number(value: float) -> str:
    return float.__repr__(value) if math.isfinite(value) else _CANONICAL.encode(value)


def _make_json() -> Callable[[Any], str]:
    """The canonical JSON of a :func:`plain` value, as ``_CANONICAL.encode`` gives it, from the
    C encoder built once when the interpreter has one (about twice as fast)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover (PyPy, or CPython built without _json)
        return _CANONICAL.encode
    encode = make(None, _CANONICAL.default, _string, None, ":", ",", True, False, True)

    def canonical_json(value: Any) -> str:
        if isinstance(value, str):
            return _string(value)
        return "".join(encode(value, 0))

    return canonical_json


_string: Callable[[str], str] = json.encoder.encode_basestring
_sha256 = hashlib.sha256
_json = _make_json()


def _digest(head: str, data_text: str, key: bytes | None) -> str:
    # The canonical JSON of the whole record list: the head's items, then the data.
    message = f"{head[:-1]},{data_text}]".encode("utf-8", "surrogatepass")
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def record_hash(record: AuditRecord, key: str | bytes | None = None) -> str:
    """The hash ``record`` must carry: SHA-256, or HMAC-SHA256 under ``key``.

    Raises ``TypeError`` for a record whose fields are not of their types (a
    damaged row): such a record cannot verify.
    """
    r = record
    # Strict types: a damaged row must not pass by coercion ("5" is not 5).
    for name, value, kinds in (
        ("seq", r.seq, int),
        ("event_seq", r.event_seq, int),
        ("at", r.at, float),
        ("prev_hash", r.prev_hash, str),
        ("mode", r.mode, str),
        ("run_id", r.run_id, str),
        ("kind", r.kind, str),
        ("tenant", r.tenant, (str, type(None))),
        ("actor", r.actor, (str, type(None))),
    ):
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise TypeError(f"{name} is {type(value).__name__}")
    head = _head_text(
        r.seq, r.prev_hash, r.mode, r.run_id, r.event_seq, r.kind, r.at, r.tenant, r.actor
    )
    raw = key.encode() if isinstance(key, str) else key
    return _digest(head, _json(plain(record.data)), raw)


class Sealer:
    """Seals events into audit records, keyed when given a key (or the environment's).

    A store builds one when it opens (:meth:`from_env`), so the key in effect is
    the one set when the store was opened.
    """

    __slots__ = ("_key", "_mode_text", "mode")

    def __init__(self, key: str | bytes | None = None) -> None:
        raw = key.encode() if isinstance(key, str) else key
        self._key = raw or None
        self.mode = PLAIN if self._key is None else f"{KEYED}:{key_id(self._key)}"
        self._mode_text = _string(self.mode)

    @classmethod
    def from_env(cls) -> Sealer:
        """A sealer keyed by ``CORRAL_AUDIT_KEY`` when it is set and not empty."""
        return cls(os.environ.get(KEY_ENV) or None)

    def __repr__(self) -> str:
        return f"Sealer(mode={self.mode!r})"  # never the key

    def seal(self, head: AuditHead, events: Sequence[Event]) -> list[AuditRecord]:
        """The records for ``events`` appended after ``head``, in order."""
        mode = self.mode
        return [
            AuditRecord(
                seq=r.seq,
                run_id=r.run_id,
                event_seq=r.event_seq,
                kind=r.kind,
                at=r.at,
                tenant=r.tenant,
                actor=r.actor,
                data=r.data,
                prev_hash=r.prev_hash,
                hash=r.hash,
                mode=mode,
            )
            for r in self.seal_rows(head, events)
        ]

    def seal_rows(self, head: AuditHead, events: Sequence[Event]) -> list[Sealed]:
        """Like :meth:`seal`, as rows to write: each with its data's canonical JSON (``text``).
        Their ``mode`` is the sealer's."""
        return self.seal_after(head.seq, head.hash, events)

    def seal_after(self, seq: int, prev: str, events: Sequence[Event]) -> list[Sealed]:
        """:meth:`seal_rows` after the record ``seq`` whose hash is ``prev`` (an appender
        that read the head as a row need not build an :class:`AuditHead`)."""
        out = []
        key, mode_text = self._key, self._mode_text
        s = _string
        for e in events:
            seq += 1
            data = plain(e.data)
            text = _json(data)
            at, event_seq = float(e.at), int(e.seq)
            tenant = None if e.tenant is None else str(e.tenant)
            actor = None if e.actor is None else str(e.actor)
            # The canonical JSON of the hashed record (see _head_text), built in one go:
            # this runs for every event appended.
            message = (
                f"[{FORMAT},{int.__repr__(seq)},{s(prev)},{mode_text},{s(e.run_id)},"
                f"{int.__repr__(event_seq)},{s(e.kind)},{_number(at)},"
                f"{'null' if tenant is None else s(tenant)},"
                f"{'null' if actor is None else s(actor)},{text}]"
            ).encode("utf-8", "surrogatepass")
            if key is None:
                digest = _sha256(message).hexdigest()
            else:
                digest = hmac.new(key, message, _sha256).hexdigest()
            out.append(
                Sealed(
                    seq, e.run_id, event_seq, e.kind, at, tenant, actor, data, text, prev, digest
                )
            )
            prev = digest
        return out


class Sealed(NamedTuple):
    """A sealed event as a backend writes it (``text``: its data's canonical JSON)."""

    seq: int
    run_id: str
    event_seq: int
    kind: str
    at: float
    tenant: str | None
    actor: str | None
    data: Any
    text: str
    prev_hash: str
    hash: str
