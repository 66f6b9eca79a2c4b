"""Present a package's public names as its own: ``corral.Run``, not ``corral.loop.run.Run``.

Reprs, tracebacks and pickles name a class by its ``__module__``; the public path is the
one users import from, so :func:`present_as` rewrites it (the httpx pattern). Imports
nothing of corral.

A class's methods move with it: :mod:`doctest` looks for a method's examples in the
module its ``__module__`` names, and would find them in neither place otherwise.

A class's string annotations are resolved first, in the module that wrote them: once
``__module__`` says ``corral``, :func:`typing.get_type_hints` would look the names up
there and not find ``Decimal`` or ``Mapping``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable, Mapping
from typing import Any


def present_as(package: str, namespace: Mapping[str, Any], names: Iterable[str]) -> None:
    """Set ``__module__ = package`` on every class or function among ``names`` that is
    defined inside ``package`` (in ``package`` itself or one of its modules)."""
    for name in names:
        value = namespace[name]
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue  # constants, type aliases, the version string
        module = value.__module__
        if module != package and not module.startswith(package + "."):
            continue  # re-exported from elsewhere: it keeps its own home
        if inspect.isclass(value):
            _resolve_annotations(value)
            _move_methods(value, module, package)
        value.__module__ = package


def _resolve_annotations(cls: type) -> None:
    """Replace the string annotations ``cls`` declares itself with the objects they name,
    resolved where the class was written."""
    own = inspect.get_annotations(cls)
    if not own or not any(isinstance(v, str) for v in own.values()):
        return
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # a name only imported for type checkers: leave it as written
        return
    # Only the class's own entries: the bases keep theirs, resolved (or not) on their own.
    resolved = {key: hints.get(key, value) for key, value in own.items()}
    cls.__annotations__ = resolved


def _move_methods(cls: type, module: str, package: str) -> None:
    """Set ``__module__ = package`` on the functions ``cls`` defines in ``module``."""
    for member in vars(cls).values():
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        if inspect.isfunction(member) and member.__module__ == module:
            member.__module__ = package
