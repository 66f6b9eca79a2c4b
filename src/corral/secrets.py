"""Scoped credentials: a tool's secrets, resolved per tenant when it is called.

A tool that needs a secret (a vendor API key, a database password) gets it in its
:class:`~corral.ToolContext` (``ctx.credentials``), never through its arguments, so
the model can neither see nor choose it. A tool declares the secrets it needs
(``@corral.tool(credentials=("api_key",))``, or ``tools.specs.<name>.credentials``
in the policy): a call whose tenant lacks one is refused before anything is held,
claimed or asked for (``tool_denied``, why ``missing_credential``), never run with
an empty context.

Secrets come from a *provider*, a seam of two methods (:class:`SecretProvider`):
``check(tenant)`` when a run starts and ``resolve(tenant, tool)`` each time a tool
that takes a context is called, so a rotated secret is picked up by the next call.
Two providers are built in:

- :class:`EnvSecrets` reads environment variables
  ``CORRAL_SECRET__<tenant>__<tool>__<NAME>`` (a run without a tenant:
  ``CORRAL_SECRET__<tool>__<NAME>``). The tenant id and the tool's name are
  escaped so that no two (tenant, tool, name) triples share a variable: letters
  and digits are written in upper case, ``.`` as ``_DOT_``, ``-`` as ``_DASH_``,
  ``_`` as ``_UNDER_``, and an upper-case letter of a tenant id as ``_UP_`` and the
  letter; the secret's name is written in upper case as it is. Tenant ``acme``'s
  secret ``api_key`` of tool ``crm.write`` is ``CORRAL_SECRET__ACME__CRM_DOT_WRITE__API_KEY``;
  :meth:`EnvSecrets.variable` gives any variable's name;
- :class:`FileSecrets` reads files ``<root>/<tenant>/<tool>/<name>`` (a run without
  a tenant: ``<root>/_shared/<tool>/<name>``), one secret per file, as mounted by
  Kubernetes or Docker secrets.

**Isolation.** A provider resolves only the run's own tenant: the mapping from
(tenant, tool, name) to a variable or a file is one-to-one, a tenant id that could
name another tenant's secrets (``..``, a path separator, ``_shared``) is refused
when the run starts, and a file that leads outside the tenant's folder (a symbolic
link, a folder that differs only by case on a case-insensitive file system) is
refused when it is read. A run without a tenant never reads a tenant's secret.
Secrets shared by every tenant are opt-in (``shared=True``): a tenant's run then
falls back to the tenant-less secret of the same name, never to another tenant's.

**Scrubbing.** Every value resolved is registered with the run's redactor before the
tool runs: it is replaced by ``[REDACTED]`` in the tool's output before the model
sees it, and in the trace and the audit log. A provider that fails refuses the call
(``control_plane_unavailable``): the tool never runs without the credentials it
expects.

**Upgrading.** Before this naming, ``.`` and ``-`` were written as ``_`` and the
tenant id as it is (``CORRAL_SECRET__acme__CRM_WRITE__API_KEY``), so that several
tenants' and tools' secrets could share one variable. Such a variable is no longer
read; when the run starts a warning names each one under the prefix that does not
follow the naming. Rename them (:meth:`EnvSecrets.variable`). An old name that
happens to follow the new naming is read with its new meaning (an upper-case tenant
part names the lower-case tenant id): :func:`parse_variable` says what it means.

>>> import os
>>> EnvSecrets().variable("acme", "crm.write", "api_key")
'CORRAL_SECRET__ACME__CRM_DOT_WRITE__API_KEY'
>>> os.environ["CORRAL_SECRET__ACME__CRM_DOT_WRITE__API_KEY"] = "acme-key-123"
>>> EnvSecrets().resolve("acme", "crm.write")
{'api_key': 'acme-key-123'}
>>> EnvSecrets().resolve("globex", "crm.write")
{}
>>> del os.environ["CORRAL_SECRET__ACME__CRM_DOT_WRITE__API_KEY"]
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from corral.exceptions import ConfigError, Stop
from corral.policy.schema import CREDENTIAL_NAME, TOOL_NAME

#: The environment variables :class:`EnvSecrets` reads start with this.
ENV_PREFIX = "CORRAL_SECRET"
#: The folder of :class:`FileSecrets` that holds the tenant-less secrets.
SHARED = "_shared"

log = logging.getLogger("corral")

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z")


@runtime_checkable
class SecretProvider(Protocol):
    """Where a tool's secrets come from (see the module docstring).

    A provider may also have ``where(tenant, tool, name) -> str``, saying where a
    secret is looked for: the refusal of a missing credential then names it.
    """

    def check(self, tenant: str | None) -> None:
        """Raise :class:`~corral.ConfigError` if ``tenant`` cannot be served in isolation."""
        ...

    def resolve(self, tenant: str | None, tool: str) -> Mapping[str, str]:
        """The secrets of ``tool`` for ``tenant``, by name (empty when it has none)."""
        ...


def _check_tenant(tenant: str | None, provider: str) -> None:
    if tenant is None:
        return
    if not isinstance(tenant, str) or not _TENANT.match(tenant):
        raise ConfigError(
            f"{provider}: tenant {tenant!r} cannot hold secrets: a tenant id for secrets is "
            "letters, digits, '.', '-' and '_', starting with a letter or digit"
        )
    if tenant == SHARED:
        raise ConfigError(f"{provider}: tenant {tenant!r} is the name of the shared secrets")


# -- environment variables ---------------------------------------------------------------
# Each part is a sequence of tokens: an upper-case letter or a digit, or an escape that
# starts with '_' and a letter; parts are joined by '__'. A reader going left to right
# tells an escape ('_' then a letter) from a separator ('_' then '_'), and the escape
# words are prefix-free, so every variable reads back one way only: no two (tenant,
# tool, name) triples share a variable, whatever their characters.
_ESCAPES = {".": "_DOT_", "-": "_DASH_", "_": "_UNDER_"}
_UNESCAPE = {word[1:]: ch for ch, word in _ESCAPES.items()}
_UPPER = "_UP_"
_TOOL_TABLE = str.maketrans({**{c: c.upper() for c in "abcdefghijklmnopqrstuvwxyz"}, **_ESCAPES})
_TENANT_TABLE = str.maketrans(
    {
        **{c: c.upper() for c in "abcdefghijklmnopqrstuvwxyz"},
        **{c: _UPPER + c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
        **_ESCAPES,
    }
)
_ENV_NAME = re.compile(r"^[A-Z0-9](?:[A-Z0-9]|_(?!_))*\Z")


def env_tool(tool: str) -> str:
    """A tool name as a part of an environment variable's name (see the module docstring)."""
    return tool.translate(_TOOL_TABLE)


def env_tenant(tenant: str) -> str:
    """A tenant id as a part of an environment variable's name."""
    return tenant.translate(_TENANT_TABLE)


def _parse_part(text: str, start: int) -> tuple[str, int] | None:
    """The part of a variable's name at ``start``, decoded, and where it ends (at ``__`` or
    the end of the text); ``None`` when it is not written as :func:`env_tenant` writes."""
    out: list[str] = []
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if ch != "_":
            if not ("A" <= ch <= "Z" or "0" <= ch <= "9"):
                return None
            out.append(ch.lower())
            i += 1
            continue
        if text.startswith("__", i):
            break
        if text.startswith(_UPPER, i) and i + len(_UPPER) < n and "A" <= text[i + 4] <= "Z":
            out.append(text[i + 4])
            i += len(_UPPER) + 1
            continue
        for word, original in _UNESCAPE.items():
            if text.startswith(word, i + 1):
                out.append(original)
                i += 1 + len(word)
                break
        else:
            return None
    return ("".join(out), i) if out else None


def parse_variable(rest: str) -> tuple[str | None, str, str] | None:
    """``(tenant, tool, name)`` of a variable's name without its prefix and ``__``, or
    ``None`` when it does not follow the naming (see the module docstring)."""
    cut = rest.rfind("__")
    if cut <= 0 or not _ENV_NAME.match(rest[cut + 2 :]):
        return None
    head, name = rest[:cut], rest[cut + 2 :].lower()
    parts: list[str] = []
    i = 0
    while i < len(head) and len(parts) < 2:
        found = _parse_part(head, i)
        if found is None:
            return None
        parts.append(found[0])
        i = found[1] + 2 if found[1] < len(head) else found[1]
    if i < len(head) or not parts:
        return None
    tool = parts[-1]
    if not TOOL_NAME.match(tool):
        return None
    tenant = parts[0] if len(parts) == 2 else None
    if tenant is not None and not _TENANT.match(tenant):
        return None
    scope = "" if tenant is None else f"{env_tenant(tenant)}__"
    if f"{scope}{env_tool(tool)}__{name.upper()}" != rest:
        return None  # read only as written: one variable per triple, and one triple per variable
    return tenant, tool, name


_WARNED: set[str] = set()


class EnvSecrets:
    """Secrets from environment variables (see the module docstring).

    ``environ`` defaults to ``os.environ``, read at each call; ``shared=True`` lets a
    tenant's run fall back to the tenant-less secrets.
    """

    def __init__(
        self,
        *,
        prefix: str = ENV_PREFIX,
        shared: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", prefix):
            raise ConfigError(
                f"EnvSecrets: prefix must be letters, digits and '_', starting with a letter, "
                f"got {prefix!r}"
            )
        self.prefix = prefix
        self.shared = shared
        self._environ = environ

    def variable(self, tenant: str | None, tool: str, name: str) -> str:
        """The environment variable holding secret ``name`` of ``tool`` for ``tenant``."""
        self.check(tenant)
        if not TOOL_NAME.match(tool) or not CREDENTIAL_NAME.match(name.lower()):
            raise ConfigError(
                f"EnvSecrets: no variable for tool {tool!r} and secret {name!r}: tool names "
                "match [a-z0-9_.-]+, secret names are letters, digits and single '_'"
            )
        scope = "" if tenant is None else f"{env_tenant(tenant)}__"
        return f"{self.prefix}__{scope}{env_tool(tool)}__{name.upper()}"

    def where(self, tenant: str | None, tool: str, name: str) -> str:
        """Where secret ``name`` of ``tool`` is looked for, for messages."""
        try:
            return f"environment variable {self.variable(tenant, tool, name)}"
        except ConfigError:
            return f"no environment variable ({name!r} is not a secret name EnvSecrets reads)"

    def check(self, tenant: str | None) -> None:
        _check_tenant(tenant, "EnvSecrets")
        self._warn_misnamed()

    def resolve(self, tenant: str | None, tool: str) -> Mapping[str, str]:
        _check_tenant(tenant, "EnvSecrets")
        shared = tenant is None or self.shared
        common: dict[str, str] = {}
        own: dict[str, str] = {}
        for scope, var_tool, name, value in self._variables():
            if var_tool != tool:
                continue
            if scope is None and shared:
                common[name] = value
            elif scope is not None and scope == tenant:
                own[name] = value
        return {**common, **own}  # the tenant's own win over shared ones

    def _variables(self) -> Iterable[tuple[str | None, str, str, str]]:
        environ = os.environ if self._environ is None else self._environ
        head = f"{self.prefix}__"
        for var, value in list(environ.items()):
            if var.startswith(head):
                parsed = parse_variable(var[len(head) :])
                if parsed is not None:
                    yield (*parsed, value)

    def _warn_misnamed(self) -> None:
        """Warn once per variable under the prefix that no triple names (an old name)."""
        environ = os.environ if self._environ is None else self._environ
        head = f"{self.prefix}__"
        for var in list(environ):
            mine = var.startswith(head) and var not in _WARNED
            if mine and parse_variable(var[len(head) :]) is None:
                _WARNED.add(var)
                log.warning(
                    "EnvSecrets: %s is not read: it does not follow the naming of secret "
                    "variables (%s__<tenant>__<tool>__<NAME>, with '.' as _DOT_, '-' as "
                    "_DASH_, '_' as _UNDER_ and an upper-case tenant letter as _UP_ and the "
                    "letter; e.g. %s__ACME__CRM_DOT_WRITE__API_KEY). "
                    "EnvSecrets().variable(tenant, tool, name) gives a variable's name",
                    var,
                    self.prefix,
                    self.prefix,
                )


# -- files -------------------------------------------------------------------------------
class FileSecrets:
    """Secrets from files under ``root`` (see the module docstring).

    A file's content, without a trailing newline, is the secret; its name is the
    secret's name. ``shared=True`` lets a tenant's run fall back to ``_shared``.
    """

    def __init__(self, root: str | os.PathLike[str], *, shared: bool = False) -> None:
        self.root = Path(root).resolve()
        self.shared = shared

    def check(self, tenant: str | None) -> None:
        _check_tenant(tenant, "FileSecrets")

    def where(self, tenant: str | None, tool: str, name: str) -> str:
        """Where secret ``name`` of ``tool`` is looked for, for messages."""
        return f"file {self.root / (tenant or SHARED) / tool / name}"

    def resolve(self, tenant: str | None, tool: str) -> Mapping[str, str]:
        self.check(tenant)
        if not TOOL_NAME.match(tool) or tool.startswith("."):
            # '.' and '..' would name the tenant's folder or the root; hidden folders hold
            # Kubernetes' links (..data), never a tool's secrets.
            raise ConfigError(f"FileSecrets: tool {tool!r} cannot name a folder of secrets")
        found: dict[str, str] = {}
        folders = [SHARED] if tenant is None else ([SHARED, tenant] if self.shared else [tenant])
        for folder in folders:
            found.update(self._read(folder, tool))
        return found

    def _read(self, folder: str, tool: str) -> dict[str, str]:
        base = self.root / folder
        # Exact names only: on a case-insensitive file system 'Acme' would open 'acme'.
        if not _entry(self.root, folder) or not _entry(base, tool):
            return {}
        where = base / tool
        if not where.is_dir():
            return {}
        own = base.resolve()
        if own.is_relative_to(self.root) and own.relative_to(self.root).parts[:1] != (folder,):
            raise ConfigError(f"FileSecrets: {base} leads to another folder ({own}); refused")
        found: dict[str, str] = {}
        for path in sorted(where.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue  # Kubernetes' ..data links and hidden files are not secrets
            real = path.resolve()
            if not real.is_relative_to(own):
                raise ConfigError(f"FileSecrets: {path} leads outside {base} (to {real}); refused")
            found[path.name] = real.read_text(encoding="utf-8").rstrip("\r\n")
        return found


def _entry(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds an entry named exactly ``name``."""
    try:
        return name in os.listdir(folder)
    except OSError:
        return False


# -- a run's credentials -----------------------------------------------------------------
class Credentials:
    """A run's view of its tools' credentials: given ones, else its provider's.

    ``get(tool)`` is what the gateway puts in the tool's context; each value it
    returns is first handed to ``register`` (the run's redactor) so it is scrubbed
    everywhere. ``require`` refuses a call whose tool lacks a credential it declares.
    """

    def __init__(
        self,
        given: Mapping[str, Mapping[str, str]] | SecretProvider | None,
        *,
        tenant: str | None,
        register: Callable[[list[str]], None],
    ) -> None:
        self.tenant = tenant
        self._register = register
        self.provider: SecretProvider | None = None
        self.static: dict[str, dict[str, str]] = {}
        if given is None:  # most runs (checked first: the protocol check costs ~10 us)
            return
        if isinstance(given, SecretProvider):
            given.check(tenant)
            self.provider = given
        else:
            if not isinstance(given, Mapping):
                raise ConfigError(
                    "credentials: expected {tool: {name: value}} or a secret provider "
                    f"(corral.EnvSecrets, corral.FileSecrets), got {type(given).__name__}"
                )
            self.static = {k: dict(v) for k, v in given.items()}
            register([v for creds in self.static.values() for v in creds.values()])

    def get(self, tool: str, default: Mapping[str, str] | None = None) -> Mapping[str, str]:
        """The credentials of ``tool`` for this run's tenant (``default``, else empty, if none)."""
        if self.provider is None:
            found: Mapping[str, str] = self.static.get(tool, {})
        else:
            try:
                found = dict(self.provider.resolve(self.tenant, tool))
            except Exception as exc:
                raise Stop(
                    "control_plane_unavailable",
                    "secrets",
                    tool=tool,
                    retryable=True,
                    message=f"the secret provider failed for {tool}: {type(exc).__name__}: {exc}",
                ) from exc
            self._register(list(found.values()))
        return found or (default if default is not None else {})

    def require(self, tool: str, needed: Iterable[str]) -> Mapping[str, str]:
        """The credentials of ``tool``; a ``tool_denied`` stop (why ``missing_credential``)
        when one it ``needed`` is absent or empty. The message names the credentials and
        the tenant, never a value."""
        found = self.get(tool)
        missing = [name for name in needed if not found.get(name)]
        if missing:
            raise self.missing(tool, missing)
        return found

    def missing(self, tool: str, names: list[str]) -> Stop:
        who = "a run without a tenant" if self.tenant is None else f"tenant {self.tenant!r}"
        listed = ", ".join(repr(n) for n in names)
        where = getattr(self.provider, "where", None)
        hint = ""
        if self.provider is None:
            hint = f" (credentials given to the run hold none for {tool} under that name)"
        elif callable(where):
            hint = " (looked for in " + "; ".join(str(where(self.tenant, tool, n)) for n in names)
            hint += ")"
        noun = "credential" if len(names) == 1 else "credentials"
        return Stop(
            "tool_denied",
            tool,
            tool=tool,
            retryable=False,
            message=f"{tool} needs the {noun} {listed}, which {who} does not have{hint}",
            extra={"why": "missing_credential", "missing": names, "note": ", ".join(names)},
        )
