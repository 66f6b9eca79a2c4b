"""Usage figures from models and callers are checked: a bad one is charged at the reservation
and stops the run with model_error (why invalid_usage), never credited to any budget."""

from __future__ import annotations

import asyncio
import itertools
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import corral
from corral.budgets import windows
from corral.budgets.meter import Charge, Usage
from corral.models import MAX_CALL_TOKENS, ModelRequest, ModelResponse
from corral.testing import MemoryStore, ScriptedModel, call, final

sys.path.insert(0, str(Path(__file__).parent / "stores"))
from pg import fresh_store, require_postgres

CAP = Decimal("0.01")

# psycopg_pool's worker threads draw from the global `random` (reconnection jitter) whenever
# they open a connection: if one does so while Hypothesis draws an example, Hypothesis takes it
# for a strategy using `random`. The strategies here use none.
POOL_RANDOM = (
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)
PRICE = {"input_usd_per_mtok": 10, "output_usd_per_mtok": 20}  # $0.00001 in, $0.00002 out
MESSAGES = [{"role": "user", "content": "what is the vendor status? " * 4}]  # a bound of 100+
_tenants = itertools.count()

#: Figures no call can have used: negative, huge, fractional, not numbers at all.
BAD = [
    -1,
    -(10**9),
    MAX_CALL_TOKENS + 1,
    10**18,
    1.5,
    3.0,
    float("nan"),
    float("inf"),
    -float("inf"),
    True,
    False,
    "12",
    None,
    Decimal(7),
]
# Within every reservation here (input bound >= 40, max_tokens 16): no overrun.
good_in, good_out = st.integers(0, 30), st.integers(0, 16)
# Mostly good figures, so that runs go on long enough to meet the cap too.
figure_in = st.one_of(*[good_in] * 6, st.sampled_from(BAD))
figure_out = st.one_of(*[good_out] * 6, st.sampled_from(BAD))


def valid(value: object, most: int) -> bool:
    return type(value) is int and 0 <= value <= most


def browse(url: str) -> str:
    """Open a page."""
    return "page"


TOOL = corral.tool(browse, name="browser.open", effect="read", cost_usd="0.001")


def policy() -> corral.Policy:
    return corral.Policy.from_dict(
        {
            "tools": {"allow": ["browser.open"], "specs": {"browser.open": {"cache": False}}},
            "budgets": {"max_steps": 100, "max_tool_calls": 100},
            "loops": {"repeats": 100, "window": 100},
            "limits": [{"per": "tenant", "window": "1d", "max_usd": CAP}],
            "models": {"prices": {"m": PRICE}},
        }
    )


class Reporting:
    """A model reporting exactly the figures it is given, whatever they are."""

    name = "m"

    def __init__(self, figures: list[tuple[Any, Any]]) -> None:
        self.figures = list(figures)

    def respond(self, request: ModelRequest) -> ModelResponse:
        tin, tout = self.figures.pop(0)
        last = not self.figures
        return ModelResponse(
            text="done" if last else None,
            tool_calls=() if last else call("browser.open", url=f"u{len(self.figures)}").calls,
            input_tokens=tin,
            output_tokens=tout,
        )


def tenant_usd(store: Any, tenant: str) -> Decimal:
    (scope,) = windows.scoped(policy(), Charge(usd=Decimal(1)), tenant=tenant, agent=None,
                              now=__import__("time").time())  # fmt: skip
    return store.scope_usage(scope.scope)[1]


def governed(mode: str, figures: list[tuple[Any, Any]], store: Any, tenant: str) -> Any:
    """One run in ``mode``: corral's loop (sync/async) or the caller's own model calls
    settled with ``ModelCall.settle`` (sync/async), each call reporting its figures."""
    if mode in ("loop", "aloop"):
        options: dict[str, Any] = {"tools": [TOOL], "policy": policy(), "store": store}
        model = Reporting(figures)
        if mode == "loop":
            return corral.run("t", model=model, tenant=tenant, max_tokens=16, **options)
        return asyncio.run(corral.arun("t", model=model, tenant=tenant, max_tokens=16, **options))
    if mode == "call":
        with corral.Run(policy(), tools=[TOOL], store=store, tenant=tenant) as run:
            for tin, tout in figures:
                with run.model_call(model="m", messages=MESSAGES, max_tokens=16) as mc:
                    mc.settle(input_tokens=tin, output_tokens=tout)
            run.finish("done")
        return run.result

    async def own_calls() -> Any:
        async with corral.AsyncRun(policy(), tools=[TOOL], store=store, tenant=tenant) as run:
            for tin, tout in figures:
                async with run.model_call(model="m", messages=MESSAGES, max_tokens=16) as mc:
                    mc.settle(input_tokens=tin, output_tokens=tout)
            await run.finish("done")
        return run.result

    return asyncio.run(own_calls())


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """One store of each backend, shared by a test's examples (each uses its own tenant)."""
    if request.param == "postgres":
        with fresh_store(require_postgres()) as pg:
            yield pg
        return
    from corral.stores.sqlite import SQLiteStore

    store = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "u.db")
    try:
        yield store
    finally:
        store.close()


@pytest.mark.filterwarnings(POOL_RANDOM)
def test_usage_figures_never_credit_a_budget_or_pass_a_cap(any_store: Any) -> None:
    """Over random sequences of runs (corral's loop and the caller's own model calls, sync and
    async) whose model calls report any figures (negative, huge, float, NaN, inf, bool, text,
    None) under a shared tenant day cap: no committed usage is negative, the tenant's USD in the
    store only grows and equals what the runs spent, no cap is passed, and a bad figure is a
    model_error (why invalid_usage) charged at the reservation."""
    examples = 10 if type(any_store).__name__ == "PostgresStore" else 40

    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        runs=st.lists(
            st.tuples(
                st.sampled_from(["loop", "aloop", "call", "acall"]),
                st.lists(st.tuples(figure_in, figure_out), min_size=1, max_size=6),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def play(runs: list[tuple[str, list[tuple[Any, Any]]]]) -> None:
        tenant = f"acme{next(_tenants)}"
        spent = Decimal(0)
        for mode, figures in runs:
            result = governed(mode, figures, any_store, tenant)
            usage = result.usage
            for name in ("steps", "tool_calls", "input_tokens", "output_tokens"):
                assert type(getattr(usage, name)) is int and getattr(usage, name) >= 0, name
            assert usage.usd.is_finite() and usage.usd >= 0
            stored = Usage.from_dict(any_store.get_run(result.run_id).usage)  # as resumed
            assert (stored.tokens, stored.usd, stored.steps) == (
                usage.tokens,
                usage.usd,
                usage.steps,
            )
            first_bad = next(
                (i for i, (a, b) in enumerate(figures) if not (valid(a, 30) and valid(b, 16))),
                None,
            )
            if result.stop_reason == "model_error":
                assert first_bad is not None
                assert result.stop is not None and result.stop.extra == {"why": "invalid_usage"}
                assert result.stop.detail == "m"
                assert usage.usd > 0  # the reservation, not the figure
            else:
                assert result.stop_reason in ("ok", "max_usd"), result
            if result.stop_reason == "ok":
                assert first_bad is None
            in_store = tenant_usd(any_store, tenant)
            assert in_store == spent + usage.usd  # only ever grows, by what was spent
            assert in_store <= CAP
            spent = in_store

    play()


def test_a_model_reporting_minus_a_billion_input_tokens_is_charged_its_reservation() -> None:
    """Issue 10, break 2: input_tokens=-10**9 drove the tenant's USD to -999.99; now the call
    is charged at its reservation, recorded as a model error, and later spend stays capped."""
    store = MemoryStore()
    model = ScriptedModel([final("done", input_tokens=-(10**9), output_tokens=5)], name="m")
    result = corral.run("t", model=model, tools=[TOOL], policy=policy(), store=store,
                        tenant="acme", max_tokens=16)  # fmt: skip
    assert result.stop_reason == "model_error" and result.status == "error"
    assert result.stop is not None and result.stop.extra == {"why": "invalid_usage"}
    assert "input_tokens" in result.stop.message and "-1000000000" in result.stop.message
    assert result.usage.input_tokens > 0 and result.usage.output_tokens == 16
    assert tenant_usd(store, "acme") == result.usage.usd > 0
    events = [e for e in store.events(result.run_id) if e.kind == "model_call"]
    assert [(e.data["outcome"], e.data["why"]) for e in events] == [("error", "invalid_usage")]
    assert events[0].data["usd"] == str(result.usage.usd)
    spender = ScriptedModel([call("browser.open", url="u")], repeat_last=True, name="m")
    later = corral.run("t", model=spender, tools=[TOOL], policy=policy(), store=store,
                       tenant="acme", max_tokens=16)  # fmt: skip
    assert later.stop_reason == "max_usd"
    assert tenant_usd(store, "acme") <= CAP


def test_model_call_settle_with_minus_a_billion_tokens_stops_and_charges_the_hold() -> None:
    """Issue 10, break 2 through ModelCall.settle: the caller's figure is refused, the hold is
    charged, and Stop(model_error, why invalid_usage) is raised from settle."""
    store = MemoryStore()
    with corral.Run(policy(), tools=[TOOL], store=store, tenant="acme") as run:
        with run.model_call(model="m", messages=MESSAGES, max_tokens=16) as mc:
            with pytest.raises(corral.Stop) as raised:
                mc.settle(input_tokens=-(10**9), output_tokens=5)
            assert raised.value.reason == "model_error"
            assert raised.value.info.extra == {"why": "invalid_usage"}
        run.finish("never reached")
    assert run.result.stop_reason == "model_error"
    assert run.result.usage.output_tokens == 16 and run.result.usage.usd > 0
    assert tenant_usd(store, "acme") == run.result.usage.usd


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_each_bad_figure_from_a_model_is_refused(bad: Any) -> None:
    """Each kind of impossible figure, in either count, is model_error (why invalid_usage)."""
    for figures in ([(bad, 3)], [(3, bad)]):
        result = governed("loop", figures, MemoryStore(), "acme")
        assert result.stop_reason == "model_error", (bad, figures)
        assert result.stop is not None and result.stop.extra == {"why": "invalid_usage"}


def test_the_largest_count_accepted_is_a_billion_tokens() -> None:
    """MAX_CALL_TOKENS itself is a valid (if costly) count; one more is not."""
    zero = {"input_usd_per_mtok": 0, "output_usd_per_mtok": 0}
    free = corral.Policy.from_dict({"models": {"prices": {"m": zero}}})
    ok = corral.run("t", model=Reporting([(MAX_CALL_TOKENS, 1)]), policy=free, store=MemoryStore())
    assert ok.stop_reason == "ok" and ok.usage.input_tokens == MAX_CALL_TOKENS
    over = corral.run(
        "t", model=Reporting([(MAX_CALL_TOKENS + 1, 1)]), policy=free, store=MemoryStore()
    )
    assert over.stop_reason == "model_error"


@pytest.mark.parametrize("bound", [-1, -(10**9), 1.5, True, "100", MAX_CALL_TOKENS + 1])
def test_a_caller_given_input_bound_that_cannot_be_right_is_a_config_error(bound: Any) -> None:
    """run.model_call(input_tokens=...) is the caller's worst case: a negative, fractional,
    non-numeric or absurd one would reserve a credit, so it is refused before anything is held."""
    with corral.Run(policy(), tools=[TOOL], store=MemoryStore(), tenant="acme") as run:
        with pytest.raises(corral.ConfigError, match="input_tokens"):
            run.model_call(model="m", input_tokens=bound, max_tokens=16)
        with pytest.raises(corral.ConfigError, match="max_tokens"):
            run.model_call(model="m", input_tokens=10, max_tokens=2.5)  # type: ignore[arg-type]
        run.finish("done")
    assert run.result.usage == Usage(
        active_seconds=run.result.usage.active_seconds,
        waiting_seconds=run.result.usage.waiting_seconds,
    )


# -- resumed runs: damaged stored usage fails closed -----------------------------------------------
DAMAGED = [
    {"usd": "-999.99"},
    {"steps": -5},
    {"input_tokens": -(10**9)},
    {"usd": "NaN"},
    {"usd": "Infinity"},
    {"usd": "lots"},
    {"tool_calls": 2.5},
    {"steps": True},
    {"active_seconds": -1.0},
    {"tool_calls_by_tool": {"browser.open": -3}},
    {"tool_calls_by_tool": ["browser.open"]},
]


@pytest.mark.parametrize("damage", DAMAGED, ids=repr)
def test_a_resumed_run_with_damaged_usage_stops_before_acting(
    any_store: Any, damage: dict[str, Any]
) -> None:
    """A stored usage no run could have (negative, not finite, malformed) would start the run
    with a credit: resuming stops with control_plane_unavailable before any action, and the
    damaged record is left as found, so every later resume refuses too."""
    calls: list[str] = []

    def fetch(url: str) -> str:
        """Fetch."""
        calls.append(url)
        return "page"

    tool = corral.tool(fetch, name="browser.open", effect="read")
    with corral.Run(policy(), tools=[tool], store=any_store, tenant="acme") as first:
        first.call("browser.open", {"url": "a"})
        first.finish("done")
    run_id = first.result.run_id
    any_store.update_run(run_id, usage={**first.result.usage.to_dict(), **damage})
    for _ in range(2):
        with corral.Run(
            policy(), tools=[tool], store=any_store, tenant="acme", run_id=run_id
        ) as again:
            again.call("browser.open", {"url": "b"})
        assert again.result.stop_reason == "control_plane_unavailable"
        assert again.result.stop is not None and "damaged usage" in again.result.stop.message
        assert calls == ["a"]
        stored = any_store.get_run(run_id)
        assert stored is not None and {k: stored.usage[k] for k in damage} == damage
