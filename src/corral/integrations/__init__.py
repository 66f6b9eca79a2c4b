"""Integrations: corral around calls you make with a vendor's own SDK.

- ``openai``: ``chat_completion`` / ``achat_completion`` and ``settle_from_response``
  for the ``openai`` SDK;
- ``anthropic``: ``create_message`` / ``acreate_message`` and ``settle_from_response``
  for the ``anthropic`` SDK;
- ``_calls``: what both share (settling a ``model_call`` block from a response, the
  stop for a truncated answer).

Each helper puts one SDK call inside a run's model-call reservation (``run.model_call``),
so it needs the loop: this part sits above ``corral.loop`` and may import it and
everything below it. The model adapters themselves (``corral.models``) import nothing
of the loop; the SDKs are never imported here (the caller passes its client).
"""
