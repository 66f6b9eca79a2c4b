"""Present a package's public names as its own: ``corral.Run``, not ``corral.loop.run.Run``.

Reprs, tracebacks and pickles name a class by its ``__module__``; the public path is the
one users import from, so :func:`present_as` rewrites it (the httpx pattern). Imports
nothing of corral.

A class's methods move with it: :mod:`doctest` looks for a method's examples in the
module its ``__module__`` names, and would find them in neither place otherwise.

A class's string annotations are resolved first, in the module that wrote them: once
``__module__`` says ``corral``, :func:`typing.get_type_hints` would look the names up
there and not find ``Decimal`` or ``Mapping``.

:class:`LazyNames` lets a package load its public names on first use (PEP 562): ``import
corral`` then costs a few modules, and ``corral.Run`` imports the machinery behind it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
import typing
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any


def present_as(package: str, namespace: Mapping[str, Any], names: Iterable[str]) -> None:
    """Set ``__module__ = package`` on every class or function among ``names`` that is
    defined inside ``package`` (in ``package`` itself or one of its modules)."""
    for name in names:
        _present(package, namespace[name])


def _present(package: str, value: object) -> None:
    if not (inspect.isclass(value) or inspect.isfunction(value)):
        return  # constants, type aliases, the version string
    module = value.__module__
    if module == package or not module.startswith(package + "."):
        return  # presented already, or re-exported from elsewhere: it keeps its own home
    if inspect.isclass(value):
        _resolve_annotations(value)
        _move_methods(value, module, package)
    value.__module__ = package


class LazyNames:
    """A package's public names, imported from their modules when first asked for.

    ``homes`` maps each lazily loaded name to the module that defines it. The package sets
    ``__getattr__ = lazy.resolve`` and ``__dir__ = lazy.names``; a name, once resolved, is
    presented (:func:`present_as`) and stored in the package's namespace, so later lookups
    never come back here.

    Resolving a name also presents every other lazy name whose module is already loaded
    (``corral.Run`` loads the policy, so ``corral.Policy`` is presented with it): whatever a
    run hands back says ``corral.X`` as it did when everything was imported at once.

    Two threads may resolve names at once: the module is imported under Python's import lock
    (a module is in use only once fully executed), and the presentation and the store into
    the namespace happen under one lock of this object, so no thread sees a name before it is
    presented. Nothing is imported while that lock is held.
    """

    def __init__(
        self,
        package: str,
        namespace: MutableMapping[str, Any],
        public: Iterable[str],
        homes: Mapping[str, str],
    ) -> None:
        self._package = package
        self._namespace = namespace
        self._public = tuple(public)
        self._homes = dict(homes)
        self._lock = threading.RLock()

    def resolve(self, name: str) -> Any:
        """The value of ``name``, imported, presented and stored on first use (the package's
        ``__getattr__``)."""
        home = self._homes.get(name)
        if home is None:
            raise AttributeError(f"module {self._package!r} has no attribute {name!r}")
        module = importlib.import_module(home)
        with self._lock:
            if name not in self._namespace:
                self._store(name, getattr(module, name))
                self._present_loaded()
            return self._namespace[name]

    def names(self) -> list[str]:
        """Every name of the package, loaded or not (the package's ``__dir__``)."""
        return sorted(set(self._namespace) | set(self._public))

    def _store(self, name: str, value: object) -> None:
        _present(self._package, value)
        self._namespace[name] = value

    def _present_loaded(self) -> None:
        """Present and store the lazy names whose modules are already fully imported."""
        for name, home in self._homes.items():
            if name in self._namespace:
                continue
            module = sys.modules.get(home)
            if module is None or _initializing(module) or not hasattr(module, name):
                continue
            self._store(name, getattr(module, name))


def _initializing(module: object) -> bool:
    """Whether ``module`` is still being executed (by this thread or another)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


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
