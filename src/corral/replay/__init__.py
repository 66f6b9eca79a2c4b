"""Replay: a recorded run executed again offline, against its recorded model responses and
tool outputs, and compared with what it did (``corral.replay(run_id, store=...)``, that is
:func:`~corral.replay.runner.replay`); and what-if: every recorded run of a period evaluated
again under another policy, with the shared state carried from run to run
(``corral.whatif(policy, store=..., since=...)``, :func:`~corral.replay.whatif.whatif`; its
HTML page: :mod:`corral.replay.report`).

The recording itself is made by the gateway (:mod:`corral.gateway.recording`, the body's
layout in :mod:`corral.record.recording`).
"""

from __future__ import annotations

from corral.replay.result import Divergence, DivergenceReason, ReplayResult
from corral.replay.runner import replay
from corral.replay.whatif import RunVerdict, WhatIf, whatif

__all__ = [
    "Divergence",
    "DivergenceReason",
    "ReplayResult",
    "RunVerdict",
    "WhatIf",
    "replay",
    "whatif",
]
