"""The control plane: corral's HTTP API, served by ``corral serve``.

:func:`create_app` builds the application over one store: operators read runs and their
timelines, decide approvals (at once, or an agent's caller waiting by long-poll), turn
the kill switch on and off and verify or export the audit chain; ``/healthz``,
``/readyz`` and ``/metrics`` for the machinery around it. Every ``/v1`` request carries
an API key (``Authorization: Bearer crl_...``, see :mod:`corral.controls.keys`) whose
role and tenant decide what it may do; another tenant's runs and approvals answer as
if they did not exist. Errors have one JSON shape, ``{"error": {"code", "message"}}``.

Imports the controls, the record and the stores; FastAPI from the ``serve`` extra
(``pip install 'corral[serve]'``). Nothing of the loop or the gateway yet.
"""

from __future__ import annotations

from corral.server.app import create_app

__all__ = ["create_app"]
