"""Arguments certified valid against a simple JSON Schema without ``jsonschema``.

Most tools' argument schemas (those the frameworks write from a function's signature, those
MCP servers publish) are a flat object of typed properties: ``type``, ``properties``,
``required``, ``additionalProperties: false``, nested objects and arrays of the same, string
``enum`` s, and annotations (``title``, ``description``, ``default``...). For such a schema,
:func:`certifier` returns a function that says ``True`` only when the arguments are certainly
valid — each check a stricter form of the keyword's own (``integer`` is a Python ``int``,
not a whole ``float``) — and ``False`` otherwise; a ``False`` is not a verdict: the caller
then validates with ``jsonschema`` as before, which gives the same answer and the messages.
A schema with any other keyword (``$ref``, ``anyOf``, ``format``, ``pattern``, ranges,
``$schema``...) gets no certifier: ``jsonschema`` checks every call.

So the verdict on any call is ``jsonschema``'s; what changes is the time a valid call of a
simple schema takes (a few µs instead of tens).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

#: Keywords that only annotate: they never make an instance invalid.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
     "writeOnly"}
)  # fmt: skip

#: ``type`` → the exact Python types certified for it (a stricter test than jsonschema's:
#: ``True`` is never a number, ``1.0`` is left to jsonschema for ``integer``).
_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
    "object": (dict,),
    "array": (list,),
}


def certifier(schema: Any) -> Check | None:
    """The certifier of ``schema``, or ``None`` when it is not simple enough to certify.
    Made once, where the schema's validator is (a tool's, a policy's)."""
    try:
        return _compile(schema, 0)
    except RecursionError:  # pragma: no cover - _compile stops at depth 8
        return None


def _compile(schema: Any, depth: int) -> Check | None:
    if not isinstance(schema, Mapping) or depth > 8:
        return None
    kind = schema.get("type")
    if kind is None:
        return None
    types = _TYPES.get(kind) if isinstance(kind, str) else None
    if types is None:
        return None
    extra = set(schema) - _ANNOTATIONS - {"type"}
    if kind == "object":
        return _object(schema, extra, depth)
    if kind == "array":
        return _array(schema, extra, depth)
    if kind == "string" and extra == {"enum"}:
        return _enum(schema["enum"])
    if extra:
        return None
    return _typed(types)


def _typed(types: tuple[type, ...]) -> Check:
    if len(types) == 1:
        only = types[0]
        return lambda value: type(value) is only
    return lambda value: type(value) in types


def _enum(values: Any) -> Check | None:
    if not isinstance(values, list) or not values:
        return None
    texts = frozenset(v for v in values if type(v) is str)
    return lambda value: type(value) is str and value in texts


def _array(schema: Mapping[str, Any], extra: set[str], depth: int) -> Check | None:
    if extra - {"items"}:
        return None
    if "items" not in schema:
        return lambda value: type(value) is list
    item = _compile(schema["items"], depth + 1)
    if item is None:
        return None
    return lambda value: type(value) is list and all(item(v) for v in value)


def _object(schema: Mapping[str, Any], extra: set[str], depth: int) -> Check | None:
    if extra - {"properties", "required", "additionalProperties"}:
        return None
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    additional = schema.get("additionalProperties", True)
    if not isinstance(properties, Mapping) or type(additional) is not bool:
        return None
    if not isinstance(required, list) or not all(type(r) is str for r in required):
        return None
    checks: dict[str, Check] = {}
    for name, sub in properties.items():
        check = _compile(sub, depth + 1)
        if type(name) is not str or check is None:
            return None
        checks[name] = check
    needed = tuple(required)

    def certify(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name in needed:
            if name not in value:
                return False
        for name, item in value.items():
            check = checks.get(name)
            if check is None:
                if additional:
                    continue
                return False
            if not check(item):
                return False
        return True

    return certify
