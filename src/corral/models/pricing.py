"""Model prices from the table shipped with genai-prices, read offline.

corral prices a model call from, in order: the policy's ``models.prices`` (wins),
the model object's own ``price``, then this table, looked up by the model's
``name`` and its ``provider`` (or the provider behind its ``base_url``). A model
the table does not know stays unpriced, and is refused under any USD limit.

The table is the one bundled with the installed genai-prices package: corral
never fetches price updates (upgrade the package to refresh it), so pricing
makes no network request and a run's reservations are reproducible.

>>> price = lookup("gpt-4o-mini", provider="openai")
>>> price.cost(1_000, 200)
Decimal('0.00027')
>>> lookup("my-local-llama", api_url="http://127.0.0.1:8080/v1") is None
True
"""

from __future__ import annotations

import functools
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from corral.models.base import Price

if TYPE_CHECKING:
    from genai_prices.data_snapshot import DataSnapshot
    from genai_prices.types import ModelInfo

__all__ = ["lookup", "price_for"]

_lock = threading.Lock()
_snapshot: DataSnapshot | None = None


def _bundled() -> DataSnapshot:
    """The bundled table, in a snapshot of our own: a price updater the application may
    have started elsewhere does not change what corral reserves."""
    global _snapshot
    with _lock:
        if _snapshot is None:
            from genai_prices.data import providers
            from genai_prices.data_snapshot import DataSnapshot

            _snapshot = DataSnapshot(providers=providers, from_auto_update=False)
        return _snapshot


@functools.lru_cache(maxsize=512)
def _model_info(model: str, provider: str | None, api_url: str | None) -> ModelInfo | None:
    snapshot = _bundled()
    with _lock:  # the snapshot's lookup caches are plain dicts
        try:
            _, info = snapshot.find_provider_model(model, None, provider, api_url)
        except LookupError:
            return None
    return info


def _rate(value: Any, input_tokens: int | None, *, at_most: bool) -> Decimal | None:
    """USD per million tokens of one price entry, at the tier the input size selects.

    Tiers apply to every token once the input passes their start. With ``at_most``
    the input is only bounded by ``input_tokens`` (a reservation), so the dearest
    tier it could reach is taken; ``None`` means unbounded.
    """
    from genai_prices.types import TieredPrices

    if value is None:
        return None
    if not isinstance(value, TieredPrices):
        return Decimal(value)
    reachable = [t.price for t in value.tiers if input_tokens is None or input_tokens > t.start]
    if at_most:
        return max([value.base, *reachable])
    return reachable[-1] if reachable else Decimal(value.base)


def lookup(
    model: str,
    *,
    provider: str | None = None,
    api_url: str | None = None,
    input_tokens: int | None = None,
    at_most: bool = False,
    when: datetime | None = None,
) -> Price | None:
    """The price of ``model`` in the bundled table, or ``None`` when it is not there.

    ``provider`` is a genai-prices provider id (``openai``, ``anthropic``, ...);
    else ``api_url`` selects the provider by its API address (an address the table
    does not know, such as a local server, leaves the model unpriced); else the
    provider is guessed from the model name. Long-context tiers are chosen by
    ``input_tokens`` (exact, or an upper bound with ``at_most``; ``None``: the
    dearest tier). A model billed per request as well as per token is left
    unpriced, since a per-token price would under-record it.
    """
    info = _model_info(model, provider, None if provider else api_url)
    if info is None:
        return None
    prices = info.get_prices(when or datetime.now(tz=UTC))
    if getattr(prices, "requests_kcount", None) is not None:
        return None
    bounded = at_most or input_tokens is None
    rate_in = _rate(prices.input_mtok, input_tokens, at_most=bounded)
    rate_out = _rate(prices.output_mtok, input_tokens, at_most=bounded)
    if rate_in is None or rate_out is None:
        return None
    # Reasoning tokens are reported inside the output tokens: charge the dearer rate.
    reasoning = _rate(getattr(prices, "output_reasoning_mtok", None), input_tokens, at_most=bounded)
    if reasoning is not None:
        rate_out = max(rate_out, reasoning)
    return Price(input_usd_per_mtok=rate_in, output_usd_per_mtok=rate_out)


def price_for(
    model: Any, *, input_tokens: int | None = None, at_most: bool = False
) -> Price | None:
    """:func:`lookup` for a model object, by its ``name``, ``provider`` and ``base_url``."""
    name = getattr(model, "name", None)
    if not isinstance(name, str) or not name:
        return None
    provider = getattr(model, "provider", None)
    base_url = getattr(model, "base_url", None)
    return lookup(
        name,
        provider=provider if isinstance(provider, str) else None,
        api_url=str(base_url) if base_url else None,
        input_tokens=input_tokens,
        at_most=at_most,
    )
