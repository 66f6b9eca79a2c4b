"""The audit log: verify its hash chain, checkpoint its head, export it.

Every event a run records — each decision (allowed, denied, approved, stopped)
and each outcome (executed, failed, cached, replayed, the run's end) — is an
audit record, with its tenant, actor (the agent), run, tool and argument digest,
sealed into one hash chain by the store as it is appended (see
:mod:`corral.stores.chain`). Secrets are scrubbed before (:mod:`corral.redact`).

:func:`verify` walks the chain from the first record and reports the first one
that does not hold: an edited field, a deleted, reordered or inserted record, a
forged record (when the chain is keyed: ``CORRAL_AUDIT_KEY``), a chain shorter
than its recorded head. Against an *anchor* — a :func:`checkpoint` kept
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

from .exceptions import ConfigError
from .stores.base import GENESIS, AuditRecord, Store
from .stores.chain import KEY_ENV, KEYED, PLAIN, key_id, record_hash

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
    """What :func:`verify` found: ``ok``, the records checked, the first broken one."""

    ok: bool
    checked: int
    head: int
    keyed: int = 0
    anchor: int | None = None
    broken: Broken | None = None

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
            "anchor": self.anchor,
            "broken": broken,
        }

    def __str__(self) -> str:
        if self.broken is not None:
            return f"audit log broken at {self.broken} ({self.checked} records before it hold)"
        against = f", matches the checkpoint at record {self.anchor}" if self.anchor else ""
        keyed = f" ({self.keyed} keyed)" if self.keyed else ""
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
    A key is required once a keyed record is met (:class:`KeyRequired` otherwise),
    and with one a record sealed without a key after keyed ones counts as forged.
    ``anchor`` is a :func:`checkpoint`: the chain must still reach it, through the
    same record.
    """
    if key is None:
        key = os.environ.get(KEY_ENV) or None
    given = [] if key is None else [key] if isinstance(key, str | bytes) else list(key)
    keys = {f"{KEYED}:{key_id(k)}": k.encode() if isinstance(k, str) else k for k in given}
    raw = next(iter(keys.values()), None)
    want = _anchor_fields(anchor) if anchor is not None else None
    head = store.audit_head()
    prev, expected, keyed, seen_keyed = GENESIS, 1, 0, False
    head_hash: str | None = None  # the hash of the record the head names, once met

    def broken(seq: int, why: str, record: AuditRecord | None = None) -> VerifyResult:
        run_id = None if record is None else str(record.run_id)
        kind = None if record is None else str(record.kind)
        return VerifyResult(
            ok=False,
            checked=expected - 1,
            head=head.seq,
            keyed=keyed,
            anchor=None if want is None else want[0],
            broken=Broken(seq=seq, why=why, run_id=run_id, kind=kind),
        )

    for record in records(store):
        if record.seq != expected:
            if isinstance(record.seq, int) and record.seq > expected:
                missing = f"record {expected} is missing" + (
                    f" (through {record.seq - 1})" if record.seq - 1 > expected else ""
                )
                return broken(expected, f"{missing}: records were deleted", record)
            return broken(
                expected, f"found record {record.seq} where {expected} belongs: reordered", record
            )
        if record.prev_hash != prev:
            return broken(
                record.seq,
                "it does not follow the record before it (prev_hash differs): records were "
                "inserted, deleted or reordered",
                record,
            )
        mode = record.mode
        if mode == PLAIN:
            if seen_keyed and raw is not None:
                return broken(
                    record.seq,
                    "sealed without the key after keyed records: forged or rewritten",
                    record,
                )
            use: bytes | None = None
        elif isinstance(mode, str) and mode.startswith(f"{KEYED}:"):
            if raw is None:
                raise KeyRequired(
                    f"record {record.seq} is keyed ({mode}): set {KEY_ENV} to the audit key "
                    "to verify the chain"
                )
            if mode not in keys:
                given_ids = ", ".join(keys)
                return broken(
                    record.seq,
                    f"sealed with another key ({mode}, not {given_ids}): forged, or the wrong "
                    "key was given",
                    record,
                )
            use, seen_keyed = keys[mode], True
            keyed += 1
        else:
            return broken(record.seq, f"unknown mode {mode!r}: forged", record)
        try:
            good = record_hash(record, use) == record.hash
        except (TypeError, ValueError):
            good = False
        if not good:
            return broken(
                record.seq,
                "its content does not match its hash: edited"
                + ("" if use is None else ", or forged without the key"),
                record,
            )
        if want is not None and record.seq == want[0] and record.hash != want[1]:
            return broken(
                record.seq,
                f"differs from the checkpoint of {want[2]}: the chain was rewritten",
                record,
            )
        if record.seq == head.seq:
            head_hash = record.hash
        prev, expected = record.hash, expected + 1
    last = expected - 1
    if head.seq > last:
        return broken(
            last + 1,
            f"the chain ends at record {last} but its head is record {head.seq}: truncated",
        )
    if head.seq and head_hash != head.hash:
        return broken(head.seq, "the chain's recorded head does not match this record: rewritten")
    if want is not None and want[0] > last:
        return broken(
            last + 1,
            f"the chain ends at record {last} but the checkpoint of {want[2]} saw record "
            f"{want[0]}: records were deleted (truncated)",
        )
    return VerifyResult(
        ok=True,
        checked=last,
        head=head.seq,
        keyed=keyed,
        anchor=None if want is None else want[0],
    )


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
