"""Tools: the ``@corral.tool`` decorator, :class:`Tool`, and :class:`ToolContext`.

>>> @tool(name="search.read", effect="read")
... def search(query: str, limit: int = 5) -> str:
...     return f"results for {query}"
>>> search.name, search.effect, sorted(search.args_schema["properties"])
('search.read', 'read', ['limit', 'query'])

The argument schema comes from the type hints (through pydantic) unless an
explicit JSON Schema is given. A parameter annotated :class:`ToolContext` is
left out of the schema and receives the call's context, with the credentials
the tool declares (``credentials=("api_key",)``). A tool whose effect is not
declared is treated as a write.

A tool the caller executes elsewhere (a remote service, another process) needs no
function here: described in the policy alone (``tools.specs.<name>`` with an
``args_schema``), it is governed with ``run.authorize`` and ``run.report`` (see
:func:`described_tool`).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from corral._safe import shown
from corral._simple_schema import certifier
from corral.exceptions import ConfigError, ToolDefinitionError
from corral.policy.schema import CREDENTIAL_NAME, TOOL_NAME, ToolSpec

if TYPE_CHECKING:
    import jsonschema

Effect = Literal["read", "write"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolContext:
    """What a tool may know about the call it serves. Never shown to the model.

    ``deadline`` is on the run's clock (``clock.monotonic()``); ``remaining()``
    gives the seconds left. ``credentials`` are the tool's own secrets, passed here
    and never through arguments.
    """

    tool: str
    run_id: str
    tenant: str | None = None
    agent: str | None = None
    idempotency_key: str | None = None
    attempt: int = 1
    deadline: float = float("inf")
    credentials: Mapping[str, str] = field(default_factory=dict)
    clock: Any = None

    def remaining(self) -> float:
        if self.clock is None:
            return self.deadline
        return self.deadline - float(self.clock.monotonic())


class ArgumentsInvalid(Exception):
    """Arguments failed validation; ``problems`` are model-readable lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True, kw_only=True)
class Tool:
    """A callable the gateway can run. Build with :func:`tool`."""

    name: str
    fn: Callable[..., Any]
    effect: Effect = "write"
    effect_declared: bool = False
    description: str = ""
    cost_usd: Decimal = Decimal(0)
    expensive: bool = False
    timeout: float | None = None
    retries: int = 0
    idempotent: bool = False
    idempotency_key_from: tuple[str, ...] = ()
    reconcile: Callable[[str, Mapping[str, Any], ToolContext], Any] | None = None
    """Settles a claim of this tool left ``unknown`` (see :func:`tool`)."""
    args_schema: Mapping[str, Any] = field(default_factory=dict)
    output_schema: Mapping[str, Any] | None = None
    context_param: str | None = None
    credentials: tuple[str, ...] = ()
    """Names of the credentials the tool needs (``ctx.credentials``): a call whose tenant
    lacks one is refused before it runs."""
    is_async: bool = False
    described: bool = False
    """Described only by the policy, with no function: the caller executes its calls
    (``run.authorize``, then ``run.report``); ``run.call`` refuses it."""
    _args_model: type[BaseModel] | None = None
    _args_validator: Any = None
    _output_validator: Any = None
    _args_certifier: Any = field(default=None, repr=False, compare=False)
    """Certifies a valid call of a simple argument schema without ``jsonschema``
    (:mod:`corral._simple_schema`); always made afresh with the tool, from its validator."""

    def __post_init__(self) -> None:
        validator = self._args_validator
        certify = None if validator is None else certifier(validator.schema)
        object.__setattr__(self, "_args_certifier", certify)
        cost = self.cost_usd
        if type(cost) is not Decimal or not cost.is_finite() or cost < 0:
            raise ToolDefinitionError(
                f"tool {self.name!r}: cost_usd must be a finite amount >= 0, got {shown(cost)}"
            )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function directly, outside any governance (for tests and scripts)."""
        return self.fn(*args, **kwargs)

    def validate_args(self, args: Any) -> dict[str, Any]:
        """Return the arguments to pass, or raise :class:`ArgumentsInvalid`."""
        if not isinstance(args, dict):
            raise ArgumentsInvalid([f"arguments must be a JSON object, got {type(args).__name__}"])
        if self._args_model is not None:
            try:  # BaseModel.model_validate's own call, without its frame
                model = self._args_model.__pydantic_validator__.validate_python(args)
            except ValidationError as exc:
                raise ArgumentsInvalid(_pydantic_problems(exc)) from None
            return dict(model.__dict__)
        if self._args_validator is not None:
            certify = self._args_certifier
            if certify is not None and certify(args):
                return dict(args)  # certainly valid: jsonschema would find no error
            errors = sorted(self._args_validator.iter_errors(args), key=lambda e: list(e.path))
            if errors:
                raise ArgumentsInvalid([_jsonschema_problem(e) for e in errors[:5]])
        return dict(args)

    def validate_output(self, output: Any, schema: Mapping[str, Any] | None = None) -> list[str]:
        """Problems of ``output`` against the output schema (empty when valid or no schema)."""
        validator = self._output_validator
        if schema is not None and schema is not self.output_schema:
            validator = _validator(schema, f"output schema of {self.name}")
        if validator is None:
            return []
        return [_jsonschema_problem(e) for e in list(validator.iter_errors(output))[:5]]

    def spec(self) -> dict[str, Any]:
        """A neutral description: name, description, JSON Schema of the arguments."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.args_schema),
        }


def described_tool(name: str, spec: ToolSpec) -> Tool:
    """The tool a policy describes on its own (``tools.specs.<name>`` with an
    ``args_schema``): its arguments' schema, effect, description and the rest come from
    the spec, and there is no function. ``Run`` registers one for each allowed name that
    no code provides, so that ``run.authorize`` can govern its calls and ``run.report``
    their outcomes; ``run.call`` refuses it (nothing could run it here), and so would the
    bounded loop, which is why ``corral.run`` does not register them.

    The arguments are checked against the policy's ``args_schema`` by the gateway
    (``ticket.context`` carries the call's key, deadline and credentials).
    """

    return executed_elsewhere(
        name,
        effect=spec.effect or "write",
        effect_declared=spec.effect is not None,
        description=spec.description or "",
        args_schema=spec.args_schema or {},
    )


def executed_elsewhere(
    name: str,
    *,
    effect: Effect,
    effect_declared: bool,
    description: str,
    args_schema: Mapping[str, Any],
    validate: bool = False,
) -> Tool:
    """A tool with no function here: governed by ``run.authorize`` and ``run.report``, its
    calls executed by the caller (:func:`described_tool`) or by another server (an MCP
    upstream, :mod:`corral.mcp`). With ``validate`` the gateway checks the arguments
    against ``args_schema`` itself (a :class:`ToolDefinitionError` when it is not a valid
    JSON Schema); otherwise only the policy's ``args_schema`` checks them."""

    def no_function(*args: Any, **kwargs: Any) -> Any:
        raise ConfigError(not_local(name))

    return Tool(
        name=name,
        fn=no_function,
        effect=effect,
        effect_declared=effect_declared,
        description=description,
        args_schema=dict(args_schema),
        context_param="ctx",  # so that every call gets a ToolContext for its ticket
        described=True,
        _args_validator=_validator(args_schema, f"input schema of {name}") if validate else None,
    )


def not_local(name: str) -> str:
    """Why a described tool cannot be called through ``run.call``."""
    return (
        f"{name} is described only by the policy (tools.specs.{name}), with no function "
        "corral could run: use run.authorize(...), execute it yourself, then "
        "run.report(...) or run.report_failure(...); or give the run a tool of that name"
    )


def _pydantic_problems(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "(arguments)"
        msg = "unknown argument" if err["type"] == "extra_forbidden" else err["msg"].lower()
        out.append(f"{path}: {msg}")
    return out


def _jsonschema_problem(err: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in err.absolute_path) or "(value)"
    return f"{path}: {err.message}"


def _validator(schema: Mapping[str, Any], what: str) -> Any:
    import jsonschema  # on first use: tools typed by their signature never need it

    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"{what} is not a valid JSON Schema: {exc.message}") from None
    return cls(schema)


def _is_context(annotation: Any) -> bool:
    return annotation is ToolContext or (
        isinstance(annotation, str) and annotation.rsplit(".", 1)[-1] == "ToolContext"
    )


def _signature_model(
    fn: Callable[..., Any], name: str, *, fields: bool = True
) -> tuple[type[BaseModel], str | None]:
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    found: dict[str, Any] = {}
    context_param = None
    for pname, param in sig.parameters.items():
        annotation = hints.get(pname, param.annotation)
        if _is_context(annotation):
            context_param = pname
            continue
        if not fields:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolDefinitionError(f"tool {name!r}: *args and **kwargs are not supported")
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolDefinitionError(
                f"tool {name!r}: positional-only parameters are not supported"
            )
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if param.default is inspect.Parameter.empty else param.default
        found[pname] = (annotation, default)
    model_name = "Args_" + "".join(ch if ch.isalnum() else "_" for ch in name)
    model = create_model(model_name, __config__=ConfigDict(extra="forbid"), **found)
    return model, context_param


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    effect: Effect | None = None,
    description: str | None = None,
    cost_usd: float | str | Decimal = 0,
    expensive: bool = False,
    timeout: float | None = None,
    retries: int = 0,
    idempotent: bool = False,
    idempotency_key_from: Iterable[str] = (),
    reconcile: Callable[[str, Mapping[str, Any], ToolContext], Any] | None = None,
    args_schema: Mapping[str, Any] | None = None,
    output_schema: Mapping[str, Any] | None = None,
    credentials: Iterable[str] = (),
) -> Any:
    """Declare a tool. Use bare (``@tool``) or with options (``@tool(name=..., effect="read")``).

    ``effect`` left out means the tool is treated as a write. ``retries`` apply to
    reads, and to writes only when ``idempotent=True`` (the tool or its vendor dedupes
    repeats, e.g. by the key in :class:`ToolContext`). ``args_schema`` (JSON
    Schema) replaces the schema derived from the type hints.

    ``reconcile(key, arguments, ctx)`` settles a write whose process died before its
    outcome was recorded (its claim is ``unknown``): it asks the world (the vendor, by
    ``key``) whether the side effect happened and returns its outcome (stored and
    replayed), raises :class:`~corral.NotExecuted` when it did not happen (this call
    then runs the tool, once), or raises anything else when it cannot tell (the claim
    stays unknown). It is a plain function, called in the run's thread.

    ``credentials`` names the secrets the tool needs in ``ctx.credentials`` (it must take
    a :class:`ToolContext`): a call whose tenant lacks one of them is refused before
    anything is held, claimed or asked for (``tool_denied``, why ``missing_credential``).
    """

    def build(f: Callable[..., Any]) -> Tool:
        tool_name = name if name is not None else f.__name__
        _check_options(tool_name, effect, reconcile, retries, timeout)
        # An explicit schema describes the arguments itself: the signature only has to say
        # where the context goes (so ``def f(**kwargs)`` is fine).
        model, context_param = _signature_model(f, tool_name, fields=args_schema is None)
        needs = _credential_names(tool_name, credentials, context_param)
        schema, args_model, args_validator = _argument_schema(tool_name, model, args_schema)
        out_validator = (
            _validator(output_schema, f"output schema of {tool_name}") if output_schema else None
        )
        doc = description if description is not None else inspect.getdoc(f) or ""
        return Tool(
            name=tool_name,
            fn=f,
            effect=effect or "write",
            effect_declared=effect is not None,
            description=doc.strip().split("\n\n")[0],
            cost_usd=_cost(tool_name, cost_usd),
            expensive=expensive,
            timeout=timeout,
            retries=retries,
            idempotent=idempotent,
            idempotency_key_from=tuple(idempotency_key_from),
            reconcile=reconcile,
            args_schema=schema,
            output_schema=dict(output_schema) if output_schema else None,
            context_param=context_param,
            credentials=needs,
            is_async=inspect.iscoroutinefunction(f),
            _args_model=args_model,
            _args_validator=args_validator,
            _output_validator=out_validator,
        )

    if fn is not None:
        return build(fn)
    return build


def _check_options(
    tool_name: Any, effect: Any, reconcile: Any, retries: int, timeout: float | None
) -> None:
    """Refuse a tool's name and options that cannot work, one message each."""
    if not isinstance(tool_name, str) or not TOOL_NAME.match(tool_name):
        raise ToolDefinitionError(
            f"tool name must match [a-z0-9_.-]+ (exact, lower case), got {tool_name!r}"
        )
    if effect not in (None, "read", "write"):
        raise ToolDefinitionError(
            f"tool {tool_name!r}: effect must be 'read' or 'write', got {effect!r}"
        )
    if reconcile is not None and not callable(reconcile):
        raise ToolDefinitionError(
            f"tool {tool_name!r}: reconcile must be a function, got {type(reconcile).__name__}"
        )
    if retries < 0 or (timeout is not None and timeout <= 0):
        raise ToolDefinitionError(f"tool {tool_name!r}: retries must be >= 0 and timeout > 0")


def _argument_schema(
    tool_name: str, model: type[BaseModel], args_schema: Mapping[str, Any] | None
) -> tuple[dict[str, Any], type[BaseModel] | None, Any]:
    """The JSON Schema of a tool's arguments, with what checks them: the model built from
    its signature, or a validator of the schema given explicitly."""
    if args_schema is not None:
        validator = _validator(args_schema, f"argument schema of {tool_name}")
        return dict(args_schema), None, validator
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema, model, None


def _cost(name: str, value: Any) -> Decimal:
    """A declared cost as an exact Decimal (``0.7`` is read as ``"0.7"``), refusing what
    is not a finite amount >= 0 (a negative cost would credit every budget it meets)."""
    try:
        cost = None if isinstance(value, bool) else Decimal(str(value))
    except Exception:  # not a number (or an object whose str() raises)
        cost = None
    if cost is None or not cost.is_finite() or cost < 0:
        raise ToolDefinitionError(
            f"tool {name!r}: cost_usd must be a finite amount >= 0, got {shown(value)}"
        )
    return cost


def _credential_names(
    tool_name: str, names: Iterable[str], context_param: str | None
) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)  # credentials="api_key": one name, not its letters
    needs = tuple(dict.fromkeys(names))
    for name in needs:
        if not isinstance(name, str) or not CREDENTIAL_NAME.match(name):
            raise ToolDefinitionError(
                f"tool {tool_name!r}: credential names use lower-case letters, digits and "
                f"single '_', starting with a letter or digit, got {name!r}"
            )
    if needs and context_param is None:
        raise ToolDefinitionError(
            f"tool {tool_name!r} declares credentials {list(needs)} but takes no "
            "corral.ToolContext parameter to receive them (add `ctx: corral.ToolContext`)"
        )
    return needs


def as_registry(
    tools: Iterable[Tool | Callable[..., Any]] | Mapping[str, Tool] | None,
) -> dict[str, Tool]:
    """Index tools by name; plain functions become tools with unknown effect (writes)."""
    if tools is None:
        return {}
    items = tools.values() if isinstance(tools, Mapping) else tools
    registry: dict[str, Tool] = {}
    for item in items:
        t = item if isinstance(item, Tool) else tool(item)
        if t.name in registry and registry[t.name] is not t:
            raise ToolDefinitionError(f"two tools are named {t.name!r}")
        registry[t.name] = t
    return registry
