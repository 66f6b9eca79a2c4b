"""Secrets never reach the model or the caller, whatever shape an output takes: keys, values of
any type, containers, bytes, objects, exception messages of every kind, text cut by the cap,
outputs let through by observe mode, the answer and the partial, and every record stored."""

from __future__ import annotations

import json
import math
import string
from collections import namedtuple
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corral
from corral.gateway.hygiene import render
from corral.policy.schema import GUARDS
from corral.record.redact import REDACTED, Redactor
from corral.stores.sqlite import SQLiteStore
from corral.testing import MemoryStore, ScriptedModel, call, error, final, truncated
from crash import pg as crash_pg

TOOL = "leak.read"
#: 32 characters, as in the issue; "zq" never occurs in ids, digests or timestamps.
SECRET = "zq-7Hc2-unguessable-9f3b-s3cret!"
PIN = "12345678"


class Carrier:
    """An object whose text carries whatever it was given."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return f"Carrier({self.text})"

    def __repr__(self) -> str:
        return f"<Carrier {self.text!r}>"


Pair = namedtuple("Pair", "left right")


def policy(
    *, effect: str = "read", mode: Any = "enforce", max_chars: int | None = None, **spec: Any
) -> corral.Policy:
    specs = {TOOL: {**spec, **({"max_output_chars": max_chars} if max_chars else {})}}
    return corral.Policy.from_dict(
        {
            "mode": mode,
            "tools": {"allow": [TOOL], "specs": specs},
            "writes": {"require_approval": False},
        }
    )


def leaking(output: Any, *, effect: str = "read") -> corral.Tool:
    """A tool returning ``output(secret)``, its secret taken from its context."""

    def leak(ctx: corral.ToolContext) -> Any:
        return output(ctx.credentials["api_key"])

    return corral.tool(leak, name=TOOL, effect=effect, credentials=("api_key",))


def stored(store: MemoryStore) -> str:
    """Everything a store holds about its runs, as text: runs, events, audit, idempotency."""
    parts = [repr(r) for r in store.list_runs()]
    for run in store.list_runs():
        parts += [repr(e) for e in store.events(run.id)]
    parts += [json.dumps(r.to_dict(), default=str) for r in store.audit_records()]
    parts.append(repr(store.__dict__))
    return "\n".join(parts)


def governed(
    output: Any,
    secret: str,
    *,
    store: Any = None,
    effect: str = "read",
    **options: Any,
) -> tuple[Any, corral.RunResult]:
    """One call of a tool leaking ``output(secret)`` under ``policy(**options)``."""
    seen: list[Any] = []
    with corral.Run(
        policy(effect=effect, **options),
        tools=[leaking(output, effect=effect)],
        store=store or MemoryStore(),
        credentials={TOOL: {"api_key": secret}},
    ) as run:
        seen.append(run.call(TOOL, {}))
        run.finish("done")
    return (seen[0] if seen else None), run.result


def rendered(value: Any) -> str:
    """The text the model is shown (``render``); mixed key types cannot be sorted, so such
    a value is rendered unsorted here (the same characters)."""
    try:
        return render(value)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, default=str)


def shown(observation: Any, result: corral.RunResult) -> str:
    """Every text the model or the caller could read of a call and its run."""
    texts = [rendered(observation), repr(observation), str(observation)]
    texts.append(json.dumps(result.to_dict(), default=str))
    texts += [repr(w) for w in result.would_stop]
    return "\n".join(texts)


# -- the issue's four leaks -----------------------------------------------------------------
def test_the_issues_leaks_are_closed() -> None:
    """A tool echoing its credential as a dict key, as a number, inside NotExecuted, and where
    the 4,000-character cap cuts it (20 of 32 characters would survive): the model sees none."""

    def keyed(secret: str) -> Any:
        return {secret: "the key"}

    def number(secret: str) -> Any:
        return int(secret)

    def not_executed(secret: str) -> Any:
        raise corral.NotExecuted(f"vendor refused key {secret}")

    def split(secret: str) -> Any:
        return "x" * 3940 + secret + "y" * 100  # the cut falls 20 characters into the secret

    for output, secret in ((keyed, SECRET), (number, PIN), (not_executed, SECRET), (split, SECRET)):
        model = ScriptedModel([call(TOOL), final("done")])
        result = corral.run(
            "leak it", model=model, tools=[leaking(output)], policy=policy(),
            store=MemoryStore(), credentials={TOOL: {"api_key": secret}},
        )  # fmt: skip
        requests = repr(model.requests)
        assert result.status == "ok", (output.__name__, result)
        assert secret not in requests, output.__name__
        assert secret[:20] not in requests and secret[:8] not in requests, output.__name__
        assert REDACTED in requests, output.__name__


# -- every shape of an output ---------------------------------------------------------------
SECRETS = st.one_of(
    st.text(string.ascii_letters + string.digits + "-_!./+=", min_size=6, max_size=38).map(
        lambda s: "zq" + s
    ),
    st.from_regex(r"[1-9][0-9]{7,11}", fullmatch=True),  # a PIN or account number
)


def leaves(secret: str) -> st.SearchStrategy[Any]:
    """Values that carry ``secret`` in some form, and plain ones that do not."""
    carriers: list[Any] = [
        secret,
        f"before {secret} after",
        secret.encode(),
        bytearray(f"<{secret}>".encode()),
        Carrier(secret),
    ]
    if secret.isdigit():
        n = int(secret)
        carriers += [n, -n, float(n), Decimal(secret), n * 10 + 7, True]
    plain: list[Any] = ["plain text", 7, 2.5, None, False, "", b"bytes"]
    return st.sampled_from(carriers + plain)


def shapes(secret: str) -> st.SearchStrategy[Any]:
    """Nested outputs carrying ``secret`` anywhere: values, keys, lists, tuples, sets."""
    keys = st.sampled_from([secret, f"k-{secret}", "name", "n"])
    if secret.isdigit():
        keys = keys | st.sampled_from([int(secret), float(int(secret))])
    return st.recursive(
        leaves(secret),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=3).map(tuple),
            st.builds(Pair, inner, inner),
            st.frozensets(st.sampled_from([secret, "a", "b"]), max_size=3),
            st.dictionaries(keys, inner, max_size=4),
        ),
        max_leaves=10,
    )


@settings(max_examples=150, deadline=None)
@given(secret=SECRETS, data=st.data(), observe=st.booleans(), effect=st.sampled_from(["read",
       "write"]))  # fmt: skip
def test_a_secret_reaches_neither_the_caller_nor_a_record_whatever_the_output_shape(
    secret: str, data: st.DataObject, observe: bool, effect: str
) -> None:
    """Any nesting of dicts (the secret as a key too), lists, tuples, named tuples, sets,
    strings, bytes, numbers, decimals and objects whose text carries the secret: the
    observation, the result and every stored record hold no trace of it (enforced or
    observed output checks, reads and writes)."""
    value = data.draw(shapes(secret))
    store = MemoryStore()
    mode = {"output": "observe"} if observe else "enforce"
    observation, result = governed(lambda _: value, secret, store=store, effect=effect, mode=mode)
    assert secret not in shown(observation, result)
    if not secret.isdigit():  # a PIN's digits may occur by chance in timestamps
        assert secret not in stored(store)


def test_a_numeric_secret_in_json_becomes_the_string_redacted() -> None:
    """Documented: a number that is a secret is replaced by the string ``[REDACTED]`` (the
    output's type changes); a number that merely contains it keeps its other digits."""
    observation, _ = governed(
        lambda s: {"pin": int(s), "n": int(s) * 10 + 9, "ok": 1}, PIN, mode="enforce"
    )
    assert observation == {"pin": REDACTED, "n": f"{REDACTED}9", "ok": 1}


def test_keys_scrubbed_to_the_same_text_are_kept_apart() -> None:
    """Keys that scrub to the same text (or to a key already there) do not overwrite each
    other: text keys, and a numeric secret as an int key and as a text key."""
    observation, _ = governed(lambda s: {s: 1, f"{s}!": 2, REDACTED: 3, f"x{s}": 4}, SECRET)
    assert sorted(observation.values()) == [1, 2, 3, 4] and SECRET not in repr(observation)
    assert f"{REDACTED} (2)" in observation
    numbers, _ = governed(lambda s: {int(s): "as int", s: "as text"}, PIN)
    assert sorted(numbers.values()) == ["as int", "as text"] and PIN not in repr(numbers)


# -- the cap never cuts a secret in two -----------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(string.ascii_letters + string.digits, min_size=4, max_size=64).map(
        lambda s: "Q" + s
    ),
    max_chars=st.integers(40, 600),
    offset=st.integers(-80, 80),
    whole=st.booleans(),
)
def test_no_cut_leaves_a_secret_or_its_beginning_at_the_end(
    secret: str, max_chars: int, offset: int, whole: bool
) -> None:
    """A secret (or only its first part) placed anywhere around the cap: the capped text
    holds no whole secret and does not end, at the cut, with PARTIAL_SECRET characters (or
    half) of its beginning; it stays within the cap."""
    piece = secret if whole else secret[: max(1, len(secret) * 2 // 3)]
    lead = max(0, max_chars + offset)
    text = "." * lead + piece + "," + "~" * 200
    observation, _ = governed(lambda _: text, secret, max_chars=max_chars)
    assert isinstance(observation, str) and len(observation) <= max_chars
    assert secret not in observation
    kept = observation.split("\n[... ")[0]
    least = min(8, (len(secret) + 1) // 2)
    for n in range(least, len(secret)):
        assert not kept.endswith(secret[:n]), (kept[-20:], n)


def test_html_that_spells_a_secret_with_entities_is_scrubbed_after_it_is_decoded() -> None:
    """``s&#101;cret`` in HTML is the secret once stripped to text: scrubbed after stripping."""
    encoded = SECRET.replace("e", "&#101;")
    observation, _ = governed(lambda _: f"<p>key: {encoded}</p>", SECRET, strip_html=True)
    assert SECRET not in observation and REDACTED in observation


# -- observe mode never turns scrubbing off -------------------------------------------------
OUTPUT_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def problem_output(kind: str, shape: str, secret: str) -> Any:
    """An output failing its checks by ``kind``, carrying ``secret`` as ``shape``."""
    carried: Any = {
        "key": {secret: 1},
        "value": {"v": f"token {secret}"},
        "number": {"v": int(secret) if secret.isdigit() else secret},
        "nested": {"v": [[{"deep": (secret,)}]]},
    }[shape]
    if kind == "schema":
        return {**carried, "n": secret}  # 'n' must be an integer: the problem quotes it
    if kind == "not_json":
        return {**carried, "odd": {1, 2}, "obj": Carrier(secret)}
    return {**carried, "pad": [secret] * 40}  # too large for the cap below


MODES = st.one_of(
    st.just("observe"),
    st.builds(
        lambda default, named: {"default": default, **{g: "observe" for g in named}},
        st.sampled_from(["enforce", "observe"]),
        st.sets(st.sampled_from(GUARDS)),
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    mode=MODES,
    kind=st.sampled_from(["schema", "not_json", "too_large"]),
    shape=st.sampled_from(["key", "value", "number", "nested"]),
    secret=st.sampled_from([SECRET, PIN, "zq-short"]),
    effect=st.sampled_from(["read", "write"]),
)
def test_an_output_failing_its_checks_is_scrubbed_in_every_mode(
    mode: Any, kind: str, shape: str, secret: str, effect: str
) -> None:
    """Every guard combination of observe mode x every output problem (schema, not JSON, too
    large) x secret shapes: an observed problem lets the output through scrubbed; an
    enforced one stops the run with a scrubbed message. Nothing stored holds the secret."""
    store = MemoryStore()
    value = problem_output(kind, shape, secret)
    observation, result = governed(
        lambda _: value, secret, store=store, effect=effect, mode=mode,
        output_schema=OUTPUT_SCHEMA, max_chars=400,
    )  # fmt: skip
    observed = corral.Policy.from_dict({"mode": mode}).observed_guards
    if "output" in observed:
        assert result.status == "ok" and observation is not None
        assert [w.reason for w in result.would_stop] == ["invalid_tool_output"]
    else:
        assert result.stop_reason == "invalid_tool_output" and observation is None
    assert secret not in shown(observation, result)
    if secret != PIN:
        assert secret not in stored(store)


# -- messages of every kind -----------------------------------------------------------------
def test_refusals_and_errors_quoting_a_secret_are_scrubbed() -> None:
    """Invalid arguments quoting it (handed back, then the stop), NotExecuted, a tool error,
    an exception of the caller's own code, a model error: no message holds the secret."""

    @corral.tool(name=TOOL, effect="read", args_schema={
        "type": "object", "properties": {"n": {"type": "integer"}}})  # fmt: skip
    def strict(**kwargs: Any) -> str:
        return "ok"

    creds = {TOOL: {"api_key": SECRET}}
    pol = policy()
    with corral.Run(pol, tools=[strict], store=MemoryStore(), credentials=creds) as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call(TOOL, {"n": SECRET})
        assert SECRET not in rejected.value.message and SECRET not in str(rejected.value)
        for _ in range(3):
            try:
                run.call(TOOL, {"n": SECRET})
            except corral.ToolRejected as again:
                assert SECRET not in again.message
    assert run.result.stop_reason == "invalid_tool_args"
    assert SECRET not in json.dumps(run.result.to_dict(), default=str)

    def raising(secret: str) -> Any:
        raise RuntimeError(f"vendor said: bad key {secret}")

    _, result = governed(raising, SECRET)
    assert result.stop_reason == "tool_error" and SECRET not in shown(None, result)

    mine = corral.Run(pol, tools=[strict], store=MemoryStore(), credentials=creds)
    with pytest.raises(ValueError, match="zq-"), mine:
        raise ValueError(f"my own code printed {SECRET}")
    assert mine.result.stop_reason == "agent_error"
    assert SECRET not in (mine.result.error or "") and SECRET not in str(mine.result.stop)
    assert SECRET not in json.dumps(mine.result.to_dict(), default=str)

    model = ScriptedModel([error(ConnectionError(f"endpoint echoed {SECRET}"))])
    failed = corral.run("x", model=model, tools=[strict], policy=pol, store=MemoryStore(),
                        credentials=creds)  # fmt: skip
    assert failed.stop_reason == "model_error"
    assert SECRET not in json.dumps(failed.to_dict(), default=str)


def test_the_answer_and_the_partial_are_scrubbed_for_the_caller_and_the_store() -> None:
    """A model answering with the secret, or cut short while writing it: the result's answer
    and partial and the stored run record hold the marker instead."""
    creds = {TOOL: {"api_key": SECRET}}
    for script, field in (([final(f"the key is {SECRET}")], "answer"),
                          ([truncated(f"the key is {SECRET}")], "partial")):  # fmt: skip
        store = MemoryStore()
        result = corral.run("x", model=ScriptedModel(script), tools=[leaking(str)],
                            policy=policy(), store=store, credentials=creds)  # fmt: skip
        assert getattr(result, field) == f"the key is {REDACTED}", field
        assert SECRET not in stored(store)
    with corral.Run(policy(), tools=[leaking(str)], store=MemoryStore(), credentials=creds) as run:
        run.finish({"echo": SECRET})
    assert run.result.answer is not None and SECRET not in run.result.answer


def test_a_caller_executed_tool_reported_with_a_secret_is_scrubbed() -> None:
    """authorize, execute it yourself, report: the observation returned is scrubbed too."""
    with corral.Run(policy(), tools=[leaking(str)], store=MemoryStore(),
                    credentials={TOOL: {"api_key": SECRET}}) as run:  # fmt: skip
        ticket = run.authorize(TOOL, {})
        observation = run.report(ticket, {SECRET: [SECRET.encode()]})
    assert SECRET not in repr(observation) and SECRET not in rendered(observation)


# -- redaction itself, across many shapes ---------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(secret=SECRETS, data=st.data())
def test_secrets_only_is_total_over_shapes_and_changes_nothing_else(
    secret: str, data: st.DataObject
) -> None:
    """``Redactor.secrets_only``: no text form of the result (render, str, repr) carries the
    secret; a value that never carried it comes back as the very same object."""
    value = data.draw(shapes(secret))
    r = Redactor(secrets=[secret])
    out = r.secrets_only(value)
    for text in (rendered(out), str(out), repr(out)):
        assert secret not in text
    if all(secret not in text for text in (rendered(value), repr(value), str(value))):
        assert out is value


def test_containers_nested_too_deep_to_scrub_are_refused_not_shown() -> None:
    """A list nested past MAX_DEPTH cannot be scrubbed: an invalid output, never shown."""

    def deep(secret: str) -> Any:
        value: Any = [secret]
        for _ in range(300):
            value = [value]
        return value

    observation, result = governed(deep, SECRET)
    assert result.stop_reason == "invalid_tool_output" and observation is None
    observed, result = governed(deep, SECRET, mode={"output": "observe"})
    assert SECRET not in shown(observed, result) and result.status == "ok"


def test_nothing_changes_for_a_run_without_secrets() -> None:
    """No registered secret: outputs come back as they were (equal, as plain JSON data),
    patterns that look like credentials included."""
    value = {"sk-abcdefghijklmnop1234": ["Bearer abcdefgh12345678", 12345678, math.pi]}
    with corral.Run(policy(), tools=[corral.tool(lambda: value, name=TOOL, effect="read")],
                    store=MemoryStore()) as run:  # fmt: skip
        assert run.call(TOOL, {}) == value


# -- every stored record, on SQLite and PostgreSQL ------------------------------------------
def leak_everywhere(store: Any) -> list[corral.RunResult]:
    """Runs that put the secret in front of every writer: an observed invalid output, a
    write's stored outcome (and its replay), an approval request filed, an answer."""
    creds = {TOOL: {"api_key": SECRET}}
    results = []

    def shaped(secret: str) -> Any:
        return {secret: [secret, secret.encode().decode()], "n": secret}

    with corral.Run(policy(effect="write", mode={"output": "observe"},
                           output_schema=OUTPUT_SCHEMA), tools=[leaking(shaped, effect="write")],
                    store=store, credentials=creds) as run:  # fmt: skip
        first = run.call(TOOL, {}, idempotency_key="k1")
        assert SECRET not in repr(first)
        run.finish(f"done with {SECRET}")
    results.append(run.result)
    with corral.Run(policy(effect="write"), tools=[leaking(shaped, effect="write")], store=store,
                    credentials=creds) as again:  # fmt: skip
        replayed = again.call(TOOL, {}, idempotency_key="k1")
        assert SECRET not in repr(replayed)
    results.append(again.result)

    @corral.tool(name="pay.send", effect="write", credentials=("api_key",))
    def pay(note: str, ctx: corral.ToolContext) -> str:
        return "paid"

    pol = corral.Policy.from_dict({"tools": {"allow": ["pay.send"]},
                                   "writes": {"approval_timeout_seconds": 0.05}})  # fmt: skip
    with corral.Run(pol, tools=[pay], store=store, credentials={"pay.send": {"api_key": SECRET}}
                    ) as waiting:  # fmt: skip
        waiting.call("pay.send", {"note": f"use {SECRET}"})
    assert waiting.result.stop_reason == "approval_timeout"
    results.append(waiting.result)
    (request,) = store.list_approvals(status=None)
    assert SECRET not in repr(request)
    return results


def test_on_sqlite_no_byte_of_the_file_holds_the_secret(tmp_path: Path) -> None:
    """Every record the SQLite file holds after leak_everywhere, read as bytes: no secret."""
    path = tmp_path / "corral.db"
    with SQLiteStore(path) as store:
        for result in leak_everywhere(store):
            assert SECRET not in json.dumps(result.to_dict(), default=str)
    for name in Path(tmp_path).iterdir():
        assert SECRET.encode() not in name.read_bytes(), name


def test_on_postgres_no_row_holds_the_secret() -> None:
    """The same against PostgreSQL: every row of every table of the store's schema, as text."""
    import psycopg

    pg = crash_pg()
    url = pg.require_postgres()
    with pg.fresh_store(url) as store:
        leak_everywhere(store)
        with psycopg.connect(url, autocommit=True) as conn:
            tables = [row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (store.schema,))]  # fmt: skip
            assert "corral_events" in tables
            for table in tables:
                rows = conn.execute(f'SELECT t::text FROM "{store.schema}"."{table}" t')
                for (text,) in rows:
                    assert SECRET not in text, table


def test_a_cached_read_is_scrubbed_of_a_secret_resolved_after_it_was_cached() -> None:
    """A read cached before a provider resolved a secret that it happens to contain: served
    from the cache later, it is scrubbed of that secret."""

    class Vault:
        def check(self, tenant: str | None) -> None:
            pass

        def resolve(self, tenant: str | None, tool: str) -> dict[str, str]:
            return {"api_key": SECRET} if tool == "crm.write" else {}

    @corral.tool(name=TOOL, effect="read")
    def notes() -> str:
        return f"someone pasted {SECRET} here"

    @corral.tool(name="crm.write", effect="write", credentials=("api_key",))
    def crm(ctx: corral.ToolContext) -> str:
        return "written"

    pol = corral.Policy.from_dict(
        {"tools": {"allow": [TOOL, "crm.write"]}, "writes": {"require_approval": False}}
    )
    with corral.Run(pol, tools=[notes, crm], store=MemoryStore(), credentials=Vault()) as run:
        run.call(TOOL, {})  # not yet known to be a secret: nothing can tell
        run.call("crm.write", {})
        assert run.call(TOOL, {}) == f"someone pasted {REDACTED} here"
