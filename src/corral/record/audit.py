"""The audit log: verify its hash chain, checkpoint its head, export it.

Every event a run records — each decision (allowed, denied, approved, stopped)
and each outcome (executed, failed, cached, replayed, the run's end) — is an
audit record, with its tenant, actor (the agent), run, tool and argument digest,
sealed into one hash chain by the store as it is appended (see
:mod:`corral.stores.chain`). Secrets are scrubbed before (:mod:`corral.record.redact`).

:func:`verify` walks the chain from the first record and reports the first one
that does not hold: an edited field, a deleted, reordered or inserted record, a
forged record (when the chain is keyed: ``CORRAL_AUDIT_KEY``), a chain shorter
than its recorded head, or a head moved back. Under a key a chain cannot be
downgraded: unkeyed records are accepted only before the first keyed one, and a
chain with no keyed record fails. Against an *anchor* — a :func:`checkpoint` kept
somewhere the database's users cannot write — it also detects a truncated tail
and a chain rewritten from the start, which no check inside the database can.

>>> from corral.stores.memory import MemoryStore
>>> from corral.stores.base import Event
>>> store = MemoryStore()
>>> store.append_events([Event(run_id="r", seq=1, kind="step", at=1.0)])
>>> anchor = checkpoint(store)
>>> result = verify(store, anchor=anchor)
>>> result.ok, result.checked, anchor["seq"]
(True, 1, 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from corral.exceptions import ConfigError
from corral.stores.base import GENESIS, AuditRecord, Store
from corral.stores.chain import KEY_ENV, KEYED, PLAIN, key_id, record_hash

#: The ``format`` of a checkpoint file.
ANCHOR_FORMAT = "corral-audit-checkpoint/1"
PAGE = 1000

__all__ = [
    "ANCHOR_FORMAT",
    "Broken",
    "KeyRequired",
    "VerifyResult",
    "checkpoint",
    "export",
    "load_anchor",
    "records",
    "verify",
    "write_anchor",
]


class KeyRequired(ConfigError):
    """The chain holds keyed records and no key (or the environment's) was given."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Broken:
    """The first record that does not hold, and why."""

    seq: int
    why: str
    run_id: str | None = None
    kind: str | None = None

    def __str__(self) -> str:
        where = f" (run {self.run_id}, {self.kind})" if self.run_id is not None else ""
        return f"record {self.seq}{where}: {self.why}"


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifyResult:
    """What :func:`verify` found: ``ok``, the records checked, the first broken one.

    ``keyed_from`` is the first keyed record (``None`` when none was met) and
    ``unkeyed`` how many records before it were sealed without a key.
    """

    ok: bool
    checked: int
    head: int
    keyed: int = 0
    anchor: int | None = None
    broken: Broken | None = None
    keyed_from: int | None = None
    unkeyed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``corral audit verify --json``)."""
        broken = None
        if self.broken is not None:
            b = self.broken
            broken = {"seq": b.seq, "why": b.why, "run_id": b.run_id, "kind": b.kind}
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": self.head,
            "keyed": self.keyed,
            "keyed_from": self.keyed_from,
            "unkeyed": self.unkeyed,
            "anchor": self.anchor,
            "broken": broken,
        }

    def __str__(self) -> str:
        if self.broken is not None:
            return f"audit log broken at {self.broken} ({self.checked} records before it hold)"
        against = f", matches the checkpoint at record {self.anchor}" if self.anchor else ""
        keyed = ""
        if self.keyed_from is not None:
            keyed = f" ({self.keyed} keyed"
            if self.unkeyed:
                s = "s" if self.unkeyed != 1 else ""
                keyed += f" from record {self.keyed_from}; {self.unkeyed} unkeyed record{s} before"
            keyed += ")"
        return f"audit log intact: {self.checked} records{keyed}{against}"


def records(store: Store, *, after: int = 0, page: int = PAGE) -> Iterator[AuditRecord]:
    """Every audit record after ``after``, in chain order, read ``page`` at a time."""
    while True:
        batch = store.audit_records(after=after, limit=page)
        yield from batch
        if len(batch) < page:
            return
        after = max(after, batch[-1].seq)


def verify(
    store: Store,
    *,
    key: str | bytes | Sequence[str | bytes] | None = None,
    anchor: Mapping[str, Any] | None = None,
) -> VerifyResult:
    """Walk the whole chain; report the first record that does not hold.

    ``key`` is the audit key (default: ``CORRAL_AUDIT_KEY``), or several (the
    current one and those it replaced: each record names the key that sealed it).
    Without a key, a keyed record raises :class:`KeyRequired`. With one, the chain
    must be keyed from some record on, and only before it may records be sealed
    without a key (the first keyed record's HMAC covers the hash of the one before,
    so it vouches for them): a record sealed without the key after a keyed one is
    forged, and a chain with no keyed record at all fails, since it was written or
    rewritten without the key. The result says where keying began (``keyed_from``)
    and how many records before it were unkeyed (``unkeyed``).

    ``anchor`` is a :func:`checkpoint`: the chain must still reach it, through the
    same record; a checkpoint of a keyed record needs the key.
    """
    keys = _keys(key)
    want = None
    if anchor is not None:
        want = _anchor_fields(anchor)
        mode = anchor.get("mode")
        if not keys and isinstance(mode, str) and mode.startswith(f"{KEYED}:"):
            raise KeyRequired(
                f"the checkpoint of record {want[0]} is of a keyed chain ({mode}): set "
                f"{KEY_ENV} to the audit key to verify against it"
            )
    return _Walk(store, keys, want).run()


def _keys(key: str | bytes | Sequence[str | bytes] | None) -> dict[str, bytes]:
    """The keys given (else the environment's), by the ``mode`` of the records they seal.
    An empty key is no key, as when sealing."""
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    given = [] if key is None else [key] if isinstance(key, str | bytes) else list(key)
    raw = [k.encode() if isinstance(k, str) else bytes(k) for k in given]
    return {f"{KEYED}:{key_id(k)}": k for k in raw if k}


class _Walk:
    """One walk of the chain, oldest record first (see :func:`verify`)."""

    def __init__(
        self, store: Store, keys: dict[str, bytes], want: tuple[int, str, str] | None
    ) -> None:
        self.store, self.keys, self.want = store, keys, want
        self.head = store.audit_head()
        self.walked = 0  # the records that hold, so far
        self.keyed = 0
        self.keyed_from: int | None = None

    def result(self, broken: Broken | None = None) -> VerifyResult:
        checked = self.walked if broken is None else min(self.walked, broken.seq - 1)
        return VerifyResult(
            ok=broken is None,
            checked=checked,
            head=self.head.seq,
            keyed=self.keyed,
            anchor=None if self.want is None else self.want[0],
            broken=broken,
            keyed_from=self.keyed_from,
            unkeyed=checked if self.keyed_from is None else self.keyed_from - 1,
        )

    def broken(self, seq: int, why: str, record: AuditRecord | None = None) -> VerifyResult:
        run_id = None if record is None else str(record.run_id)
        kind = None if record is None else str(record.kind)
        return self.result(Broken(seq=seq, why=why, run_id=run_id, kind=kind))

    def run(self) -> VerifyResult:
        prev = GENESIS
        head_hash: str | None = None  # the hash of the record the head names, once met
        for record in records(self.store):
            problem = self.check(record, prev)
            if problem is not None:
                return problem
            if record.seq == self.head.seq:
                head_hash = record.hash
            prev, self.walked = record.hash, self.walked + 1
        return self.end(head_hash)

    def check(self, record: AuditRecord, prev: str) -> VerifyResult | None:
        """Why ``record`` does not hold after the record whose hash is ``prev``, or ``None``."""
        expected = self.walked + 1
        if record.seq != expected:
            if isinstance(record.seq, int) and record.seq > expected:
                missing = f"record {expected} is missing" + (
                    f" (through {record.seq - 1})" if record.seq - 1 > expected else ""
                )
                return self.broken(expected, f"{missing}: records were deleted", record)
            return self.broken(
                expected, f"found record {record.seq} where {expected} belongs: reordered", record
            )
        if record.prev_hash != prev:
            return self.broken(
                record.seq,
                "it does not follow the record before it (prev_hash differs): records were "
                "inserted, deleted or reordered",
                record,
            )
        use, problem = self.key_for(record)
        if problem is not None:
            return self.broken(record.seq, problem, record)
        try:
            good = record_hash(record, use) == record.hash
        except (TypeError, ValueError):
            good = False
        if not good:
            return self.broken(
                record.seq,
                "its content does not match its hash: edited"
                + ("" if use is None else ", or forged without the key"),
                record,
            )
        if use is not None:
            self.keyed += 1
            if self.keyed_from is None:
                self.keyed_from = record.seq
        want = self.want
        if want is not None and record.seq == want[0] and record.hash != want[1]:
            return self.broken(
                record.seq,
                f"differs from the checkpoint of {want[2]}: the chain was rewritten",
                record,
            )
        return None

    def key_for(self, record: AuditRecord) -> tuple[bytes | None, str | None]:
        """The key ``record`` is verified with (``None``: plain SHA-256), or why it cannot be.

        Modes are matched exactly: another spelling, case or spacing of a mode is no mode.
        """
        mode = record.mode
        if mode == PLAIN:
            if self.keys and self.keyed_from is not None:
                return None, (
                    f"sealed without the key after keyed records (keyed from record "
                    f"{self.keyed_from}): forged or rewritten"
                )
            return None, None
        if isinstance(mode, str) and mode.startswith(f"{KEYED}:"):
            if not self.keys:
                raise KeyRequired(
                    f"record {record.seq} is keyed ({mode}): set {KEY_ENV} to the audit key "
                    "to verify the chain"
                )
            use = self.keys.get(mode)
            if use is None:
                given = ", ".join(self.keys)
                return None, (
                    f"sealed with another key ({mode}, not {given}): forged, or the wrong key "
                    "was given"
                )
            return use, None
        return None, f"unknown mode {mode!r}: forged"

    def end(self, head_hash: str | None) -> VerifyResult:
        """The checks once every record is walked: keying, the head, the anchor."""
        last, head, want = self.walked, self.head, self.want
        if self.keys and last and self.keyed_from is None:
            return self.broken(
                1,
                f"the chain holds no keyed record though a key was given: it was written "
                f"without {KEY_ENV}, or rewritten without it (an unkeyed chain is verified "
                "without the key)",
            )
        if head.seq > last:
            return self.broken(
                last + 1,
                f"the chain ends at record {last} but its head is record {head.seq}: truncated",
            )
        if head.seq < last and self.store.audit_head().seq < last:
            # Appenders only move the head forward: read again, it must have caught up.
            return self.broken(
                head.seq + 1,
                f"the chain goes on to record {last} but its head is record {head.seq}: "
                "the head was moved back",
            )
        if head.seq and head_hash != head.hash:
            return self.broken(
                head.seq, "the chain's recorded head does not match this record: rewritten"
            )
        if want is not None and want[0] > last:
            return self.broken(
                last + 1,
                f"the chain ends at record {last} but the checkpoint of {want[2]} saw record "
                f"{want[0]}: records were deleted (truncated)",
            )
        return self.result()


def checkpoint(
    store: Store,
    *,
    key: str | bytes | Sequence[str | bytes] | None = None,
    anchor: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Verify the chain, then return its head as an anchor to keep elsewhere.

    The anchor is a small JSON object: ``seq`` and ``hash`` of the last record,
    its ``mode`` and the time. Raises :class:`ValueError` naming the first broken
    record when the chain does not verify (an anchor of a broken chain is worthless).
    """
    result = verify(store, key=key, anchor=anchor)
    if not result.ok:
        raise ValueError(str(result))
    last = list(store.audit_records(after=result.checked - 1, limit=1)) if result.checked else []
    record = last[0] if last else None
    return {
        "format": ANCHOR_FORMAT,
        "seq": result.checked,
        "hash": GENESIS if record is None else record.hash,
        "mode": None if record is None else record.mode,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_anchor(anchor: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``anchor`` to ``path`` as JSON (atomically: a crash leaves the old file)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(anchor), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def load_anchor(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file; :class:`~corral.exceptions.ConfigError` if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the checkpoint {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a checkpoint (not JSON: {exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a checkpoint (expected a JSON object)")
    _anchor_fields(data, source=str(path))
    return data


def _anchor_fields(anchor: Mapping[str, Any], source: str = "the anchor") -> tuple[int, str, str]:
    seq, digest = anchor.get("seq"), anchor.get("hash")
    if anchor.get("format") != ANCHOR_FORMAT:
        raise ConfigError(f"{source} is not a checkpoint (format is not {ANCHOR_FORMAT!r})")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ConfigError(f"{source}: seq must be a non-negative integer, got {seq!r}")
    if not isinstance(digest, str):
        raise ConfigError(f"{source}: hash must be text, got {digest!r}")
    return seq, digest, str(anchor.get("at", "an unknown time"))


def export(store: Store, out: IO[str], *, after: int = 0) -> int:
    """Write the records after ``after`` to ``out`` as JSON Lines; return how many."""
    count = 0
    for record in records(store, after=after):
        out.write(json.dumps(record.to_dict(), ensure_ascii=False, sort_keys=True) + "\n")
        count += 1
    return count
