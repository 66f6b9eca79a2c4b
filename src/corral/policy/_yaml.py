"""A policy's YAML, parsed under :mod:`corral.policy._input`'s bounds (a key given twice,
nesting, long integers, aliases that expand past the value limit or into themselves).

Its own module so that PyYAML is imported when a YAML policy is first read, not with the
policy model.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from corral.exceptions import PolicyError
from corral.policy._input import MAX_DEPTH, MAX_INT_DIGITS, MAX_VALUES, check_size

_MERGE = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, bounded: a key given twice is an error (YAML says keys are
    unique; PyYAML would silently keep the last value), nesting deeper than
    :data:`MAX_DEPTH` and integers longer than :data:`MAX_INT_DIGITS` digits are errors
    with their line and column, and a document whose aliases expand past
    :data:`MAX_VALUES` values (or into themselves) is refused before it is built."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(ch.isdigit() for ch in node.value)
        if digits > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a number of {digits} digits (the limit is {MAX_INT_DIGITS})",
                node.start_mark,
            )
        value: int = super().construct_yaml_int(node)
        return value

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"key {key!r} appears twice in one mapping",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
# YAML 1.1 (PyYAML) reads `1e-5` and `2E3` as text: a float needs a dot there. Numbers are
# never read from text, so such a budget would be refused; read them as YAML 1.2 does.
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _expanded_size(root: yaml.Node) -> int | None:
    """How many values ``root`` holds with every alias expanded (stops counting past
    :data:`MAX_VALUES`); ``None`` when an alias refers to a node that contains it."""
    sizes: dict[int, int] = {}
    active: set[int] = set()
    todo: list[tuple[yaml.Node, bool]] = [(root, False)]
    while todo:
        node, done = todo.pop()
        key = id(node)
        children = _children(node)
        if done:
            active.discard(key)
            sizes[key] = min(MAX_VALUES + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        if key in sizes:
            continue
        if key in active:
            return None
        active.add(key)
        todo.append((node, True))
        todo.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def parse_yaml(text: str, source: str | None) -> Any:
    """The document in ``text`` (YAML; JSON is YAML too), bounded as above."""
    check_size(text, source)
    try:
        loader = StrictLoader(text)  # reads the text: refuses NUL and other control characters
    except yaml.reader.ReaderError as exc:
        raise PolicyError(
            [f"(file): character {exc.position + 1}: not valid YAML ({exc.reason})"],
            source=source,
        ) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size is None:
            raise PolicyError(
                ["(file): an alias refers to a value that contains it"], source=source
            )
        if size > MAX_VALUES:
            raise PolicyError(
                [f"(file): holds more than {MAX_VALUES} values once its aliases are expanded"],
                source=source,
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError([f"(file): {where}not valid YAML ({problem})"], source=source) from None
    except RecursionError:  # a bound above should come first; never a traceback
        raise PolicyError(
            [f"(file): nested more than {MAX_DEPTH} levels deep"], source=source
        ) from None
    finally:
        loader.dispose()
