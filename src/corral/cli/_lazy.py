"""A command group whose subcommands load when one runs: ``corral version`` imports no command
module, ``corral check`` only ``check``'s.

The group is given a table, name -> :class:`Entry` (the line ``--help`` lists and a function
returning the command's typer function or group app). Naming a command (to run it, or to show
its own ``--help``) calls its loader and builds the click command typer would have built had it
been registered on the app (``app.command(name)`` or ``app.add_typer(app, name=name)``). Listing
the commands (``corral --help``, a typo's suggestions) reads the table alone; walking
``commands`` in full (as tests/clitree.py does) loads every command.

The ``--help`` flag of this group and of the commands it builds takes its value as it comes
(it is ``None`` or ``True``): typer would otherwise build a pydantic adapter for it on every
run, the one import of pydantic ``corral version`` would make (see :func:`plain_flag`).

Imports typer only; no command module (the table's loaders do, in ``app``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup, TyperOption

if TYPE_CHECKING:
    from typer._click import Command, Context, HelpFormatter

#: What an entry's loader returns: a command's function, or a command group's app.
Target = Callable[..., Any] | typer.Typer


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One command in the table: the line ``corral --help`` shows for it (its help's first
    paragraph, as written) and the function that imports and returns it."""

    help: str
    load: Callable[[], Target]


def plain_flag(option: TyperOption | None) -> None:
    """Let a ``--help`` flag keep its value: ``None`` when absent, ``True`` when given.

    typer (0.29) coerces a parameter's value through a pydantic adapter it builds on the
    parameter's first use, for a flag left out too, whose ``None`` comes back ``None`` all the
    same: the one import of pydantic ``corral version`` would make. The help flag needs no
    coercion; it gets typer's own pass-through, which needs no pydantic. Where typer lacks
    these internals, nothing changes.
    """
    try:
        from typer._coercion import PassThroughRuntimeParam
    except ImportError:  # pragma: no cover - another typer
        return
    if option is None or getattr(option, "_runtime_param", 0) is not None:
        return
    if option.type_descriptor.annotation is bool:
        option._runtime_param = PassThroughRuntimeParam(
            parameter_info=option.type_descriptor.parameter_info, annotation=bool
        )


class PlainHelpCommand(TyperCommand):
    """A command as typer builds it, its ``--help`` flag plain (:func:`plain_flag`)."""

    def get_help_option(self, ctx: Context) -> TyperOption | None:
        option = super().get_help_option(ctx)
        plain_flag(option)
        return option


def _no_options() -> None:
    """The callback of the app a command is built in (never run)."""


class _Commands(MutableMapping[str, "Command"]):
    """A group's ``commands``: every name in the table's order; a command built the first
    time it is looked up."""

    def __init__(self, group: LazyGroup, given: Mapping[str, Command]) -> None:
        self._group = group
        self._built: dict[str, Command] = dict(given)
        self._names = [*group.entries, *(name for name in given if name not in group.entries)]

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            self._built[name] = self._group.build(name)  # KeyError: no such command
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        if name not in self._names:
            self._names.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._names:
            raise KeyError(name)
        self._names.remove(name)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


class LazyGroup(TyperGroup):
    """A typer group loading each subcommand of :attr:`entries` when it is named.

    Subclass it with ``entries`` set and pass the subclass as ``typer.Typer(cls=...)``.
    """

    #: The subcommands, in the order ``--help`` lists them.
    entries: ClassVar[Mapping[str, Entry]] = {}
    #: typer's own default, which the app keeps; the built commands get the same.
    pretty_exceptions_short: ClassVar[bool] = True

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands(self, self.commands)

    def get_help_option(self, ctx: Context) -> TyperOption | None:
        option = super().get_help_option(ctx)
        plain_flag(option)
        return option

    def build(self, name: str) -> Command:
        """The click command typer makes of entry ``name``'s target, registered as ``name`` on
        an app with this group's settings: the same calls as when the whole app is built at
        once (``app.command(name)``, ``app.add_typer(target, name=name)``)."""
        target = self.entries[name].load()
        holder = typer.Typer(
            add_completion=False,
            pretty_exceptions_short=self.pretty_exceptions_short,
            rich_markup_mode=self.rich_markup_mode,
            suggest_commands=self.suggest_commands,
        )
        holder.callback()(_no_options)  # a group, even with one command
        if isinstance(target, typer.Typer):
            holder.add_typer(target, name=name)
        else:
            holder.command(name, cls=PlainHelpCommand)(target)
        built = cast(TyperGroup, typer.main.get_command(holder))
        return built.commands[name]

    def list_commands(self, ctx: Context) -> list[str]:
        """The names, without loading a command."""
        return list(self.commands)

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        """typer's help, the commands listed from the table (nothing loaded)."""
        TyperGroup.format_help(self.listing(), ctx, formatter)

    def listing(self) -> LazyGroup:
        """A copy of this group whose commands are stand-ins carrying only the table's help:
        what listing the commands needs, loading none. A command already built is listed
        as itself."""
        built = cast(_Commands, self.commands)._built
        listed = copy.copy(self)
        listed.commands = {
            name: built[name] if name in built else self._stand_in(name) for name in self.commands
        }
        return listed

    def _stand_in(self, name: str) -> Command:
        return TyperCommand(
            name, help=self.entries[name].help, rich_markup_mode=self.rich_markup_mode
        )
