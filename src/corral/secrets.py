"""Scoped credentials: a tool's secrets, resolved per tenant when it is called.

A tool that needs a secret (a vendor API key, a database password) gets it in its
:class:`~corral.ToolContext` (``ctx.credentials``), never through its arguments, so
the model can neither see nor choose it. Secrets come from a *provider*, a seam of
two methods (:class:`SecretProvider`): ``check(tenant)`` when a run starts and
``resolve(tenant, tool)`` each time a tool that takes a context is called, so a
rotated secret is picked up by the next call. Two providers are built in:

- :class:`EnvSecrets` reads environment variables
  ``CORRAL_SECRET__<tenant>__<TOOL>__<NAME>`` (a run without a tenant:
  ``CORRAL_SECRET__<TOOL>__<NAME>``), the tool's name and the secret's name in
  upper case with ``.`` and ``-`` as ``_``;
- :class:`FileSecrets` reads files ``<root>/<tenant>/<tool>/<name>`` (a run without
  a tenant: ``<root>/_shared/<tool>/<name>``), one secret per file, as mounted by
  Kubernetes or Docker secrets.

**Isolation.** A provider resolves only the run's own tenant: a tenant id that could
name another tenant's secrets (``..``, a path separator, the separator of the
environment names) is refused when the run starts, and a file that leads outside
the tenant's folder (a symbolic link) is refused when it is read. Secrets shared by
every tenant are opt-in (``shared=True``): a tenant's run then falls back to the
tenant-less secret of the same name, never to another tenant's.

**Scrubbing.** Every value resolved is registered with the run's redactor before the
tool runs: it is replaced by ``[REDACTED]`` in the tool's output before the model
sees it, and in the trace and the audit log. A provider that fails refuses the call
(``control_plane_unavailable``): the tool never runs without the credentials it
expects.

>>> import os
>>> os.environ["CORRAL_SECRET__acme__CRM_WRITE__API_KEY"] = "acme-key-123"
>>> EnvSecrets().resolve("acme", "crm.write")
{'api_key': 'acme-key-123'}
>>> EnvSecrets().resolve("globex", "crm.write")
{}
>>> del os.environ["CORRAL_SECRET__acme__CRM_WRITE__API_KEY"]
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from .exceptions import ConfigError, Stop

#: The environment variables :class:`EnvSecrets` reads start with this.
ENV_PREFIX = "CORRAL_SECRET"
#: The folder of :class:`FileSecrets` that holds the tenant-less secrets.
SHARED = "_shared"

_TENANT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]|_(?!_))*$")
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|_(?!_))*$")


@runtime_checkable
class SecretProvider(Protocol):
    """Where a tool's secrets come from (see the module docstring)."""

    def check(self, tenant: str | None) -> None:
        """Raise :class:`~corral.ConfigError` if ``tenant`` cannot be served in isolation."""
        ...

    def resolve(self, tenant: str | None, tool: str) -> Mapping[str, str]:
        """The secrets of ``tool`` for ``tenant``, by name (empty when it has none)."""
        ...


def _check_tenant(tenant: str | None, provider: str) -> None:
    if tenant is None:
        return
    if not isinstance(tenant, str) or not _TENANT.match(tenant) or tenant in (".", ".."):
        raise ConfigError(
            f"{provider}: tenant {tenant!r} cannot hold secrets: a tenant id for secrets is "
            "letters, digits, '.', '-' and single '_', starting with a letter or digit"
        )
    if tenant == SHARED:
        raise ConfigError(f"{provider}: tenant {tenant!r} is the name of the shared secrets")


def _env_part(name: str) -> str:
    return re.sub(r"[.-]", "_", name).upper()


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
        self.prefix = prefix
        self.shared = shared
        self._environ = environ

    def check(self, tenant: str | None) -> None:
        _check_tenant(tenant, "EnvSecrets")
        if tenant is not None and "." in tenant:
            raise ConfigError(
                f"EnvSecrets: tenant {tenant!r} cannot be part of an environment variable "
                "name; use FileSecrets or a tenant id without '.'"
            )

    def resolve(self, tenant: str | None, tool: str) -> Mapping[str, str]:
        self.check(tenant)
        environ = os.environ if self._environ is None else self._environ
        found: dict[str, str] = {}
        scopes = [None] if tenant is None else ([None, tenant] if self.shared else [tenant])
        for scope in scopes:  # the tenant's own last, so they win over shared ones
            found.update(self._read(environ, scope, tool))
        return found

    def _read(
        self, environ: Mapping[str, str], tenant: str | None, tool: str
    ) -> Iterator[tuple[str, str]]:
        head = f"{self.prefix}__" + ("" if tenant is None else f"{tenant}__")
        head += f"{_env_part(tool)}__"
        for var, value in environ.items():
            if var.startswith(head):
                name = var[len(head) :]
                if _NAME.match(name):
                    yield name.lower(), value


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

    def resolve(self, tenant: str | None, tool: str) -> Mapping[str, str]:
        self.check(tenant)
        found: dict[str, str] = {}
        folders = [SHARED] if tenant is None else ([SHARED, tenant] if self.shared else [tenant])
        for folder in folders:
            found.update(self._read(folder, tool))
        return found

    def _read(self, folder: str, tool: str) -> dict[str, str]:
        base = self.root / folder
        where = base / tool
        if not where.is_dir():
            return {}
        found: dict[str, str] = {}
        for path in sorted(where.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue  # Kubernetes' ..data links and hidden files are not secrets
            real = path.resolve()
            if not real.is_relative_to(base.resolve()):
                raise ConfigError(f"FileSecrets: {path} leads outside {base} (to {real}); refused")
            found[path.name] = real.read_text(encoding="utf-8").rstrip("\r\n")
        return found


class Credentials:
    """A run's view of its tools' credentials: given ones, else its provider's.

    ``get(tool)`` is what the gateway puts in the tool's context; each value it
    returns is first handed to ``register`` (the run's redactor) so it is scrubbed
    everywhere.
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
        if isinstance(given, SecretProvider):
            given.check(tenant)
            self.provider = given
        elif given is not None:
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
