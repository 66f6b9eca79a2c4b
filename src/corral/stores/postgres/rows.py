"""How the PostgreSQL store writes records into rows and reads them back.

Mappings are JSONB (:func:`jsonb`: a :class:`~decimal.Decimal` as its exact text, a
value JSON cannot hold as its ``str()``); a run's owner spans four columns; a claim's
tenant is a key that never collides with no tenant. Imports the stores' records and
this package's column lists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from decimal import Decimal
from typing import Any

from psycopg.types.json import Jsonb

from corral.stores.owner import RunOwner
from corral.stores.postgres.sql import APPROVAL_FIELDS, OWNER_COLUMNS, RUN_COLUMNS
from corral.stores.records import ApprovalRecord, ClaimRecord, RunRecord
from corral.stores.rules import claim_state

RUN_FIELDS = frozenset(f.name for f in fields(RunRecord)) - {"id"}


def default(value: Any) -> Any:
    """JSON for what ``json`` cannot hold: decimals as their exact text, else ``str()``."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, default=default, separators=(",", ":"))


def jsonb(value: Any) -> Jsonb:
    """A JSONB parameter (see :func:`default`)."""
    return Jsonb(value, dumps=dumps)


def run_columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """RunRecord fields → column values (the owner spans four columns; JSON as JSONB)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name == "owner":
            parts = (
                (None,) * 4 if value is None else (value.host, value.pid, value.node, value.started)
            )
            out.update(zip(OWNER_COLUMNS, parts, strict=True))
        elif name in ("stop", "usage") and value is not None:
            out[name] = jsonb(dict(value))
        elif name == "would_stop":
            out[name] = jsonb([dict(w) for w in value])
        else:
            out[name] = value
    return out


def run_owner(
    host: str | None, pid: int | None, node: str | None, started: str | None
) -> RunOwner | None:
    if pid is None:
        return None
    return RunOwner(host=host or "", pid=pid, node=node or "", started=started or "")


def run_record(row: Sequence[Any]) -> RunRecord:
    data = dict(zip(RUN_COLUMNS, row, strict=True))
    owner = run_owner(*(data.pop(c) for c in OWNER_COLUMNS))
    return RunRecord(
        **data | {"usage": data["usage"] or {}, "would_stop": tuple(data["would_stop"] or ())},
        owner=owner,
    )


def approval_record(row: Sequence[Any]) -> ApprovalRecord:
    data = dict(zip(APPROVAL_FIELDS, row, strict=True))
    data["kill_modes"] = tuple(m for m in data["kill_modes"].split(",") if m)
    return ApprovalRecord(**data)


def claim_record(row: Sequence[Any], now: float) -> ClaimRecord:
    tk, key, tool, digest, outcome, lease_until, created = row
    return ClaimRecord(
        key=key,
        tenant=tk[1:] if tk else None,
        tool=tool,
        digest=digest,
        status=claim_state(outcome, lease_until, now),
        created=created,
        lease_until=lease_until,
        outcome=outcome,
    )
