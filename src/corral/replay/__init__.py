"""Replay: a recorded run executed again offline, against its recorded model responses and
tool outputs, and compared with what it did (``corral.replay(run_id, store=...)``, that is
:func:`~corral.replay.runner.replay`).

The recording itself is made by the gateway (:mod:`corral.gateway.recording`, the body's
layout in :mod:`corral.record.recording`).
"""

from __future__ import annotations

from corral.replay.result import Divergence, DivergenceReason, ReplayResult
from corral.replay.runner import replay

__all__ = ["Divergence", "DivergenceReason", "ReplayResult", "replay"]
